package observer

import (
	"cmp"
	"maps"
	"slices"
	"sync/atomic"
	"time"

	observerpb "github.com/cilium/cilium/api/v1/observer"
)

// Cilium's namespace manager keeps a namespace for an hour after the last flow
// naming it, and forgets older ones every five minutes.
const (
	namespaceTTL        = time.Hour
	namespacePruneEvery = 5 * time.Minute
	// namespaceRefresh is how stale a namespace's published last-seen time may
	// get: against a TTL of an hour a minute is noise, and it spares the flow
	// path a copy per flow.
	namespaceRefresh = time.Minute
)

type namespaceKey struct{ cluster, namespace string }

// namespaces remembers when flows last named each namespace. observe runs for
// every flow on the agent's flow path, from one goroutine (flows.Run calls its
// observers in turn), so it keeps its own map with no lock: a known, fresh
// namespace costs one map lookup. When a namespace is new or its time a minute
// stale, observe publishes a copy, which list reads without waiting.
type namespaces struct {
	lastSeen  map[namespaceKey]time.Time // observe's own
	lastPrune time.Time
	published atomic.Pointer[map[namespaceKey]time.Time]
}

func newNamespaces() *namespaces {
	return &namespaces{lastSeen: map[namespaceKey]time.Time{}}
}

func (n *namespaces) observe(cluster, namespace string, at time.Time) {
	k := namespaceKey{cluster, namespace}
	last, known := n.lastSeen[k]
	if known && at.Sub(last) < namespaceRefresh {
		return
	}
	n.lastSeen[k] = at
	if !known && at.Sub(n.lastPrune) >= namespacePruneEvery {
		// Pruning when a namespace is added bounds the set by the namespaces
		// of the last hour without a goroutine of its own.
		n.lastPrune = at
		maps.DeleteFunc(n.lastSeen, func(_ namespaceKey, seen time.Time) bool { return at.Sub(seen) > namespaceTTL })
	}
	snapshot := maps.Clone(n.lastSeen)
	n.published.Store(&snapshot)
}

// list is the namespaces seen within the TTL of now, by cluster then name.
func (n *namespaces) list(now time.Time) []*observerpb.Namespace {
	snapshot := n.published.Load()
	if snapshot == nil {
		return nil
	}
	var out []*observerpb.Namespace
	for k, seen := range *snapshot {
		if now.Sub(seen) <= namespaceTTL {
			out = append(out, &observerpb.Namespace{Cluster: k.cluster, Namespace: k.namespace})
		}
	}
	slices.SortFunc(out, func(a, b *observerpb.Namespace) int {
		return cmp.Or(cmp.Compare(a.Cluster, b.Cluster), cmp.Compare(a.Namespace, b.Namespace))
	})
	return out
}
