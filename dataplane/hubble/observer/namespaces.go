package observer

import (
	"cmp"
	"slices"
	"sync"
	"time"

	observerpb "github.com/cilium/cilium/api/v1/observer"
)

// Cilium's namespace manager keeps a namespace for an hour after the last flow
// naming it, and forgets older ones every five minutes.
const (
	namespaceTTL        = time.Hour
	namespacePruneEvery = 5 * time.Minute
	// namespaceRefresh is how stale a namespace's last-seen time may get before
	// a flow takes the write lock to refresh it: against a TTL of an hour a
	// minute is noise, and the agent's flow path stays on the read lock.
	namespaceRefresh = time.Minute
)

type namespaceKey struct{ cluster, namespace string }

// namespaces remembers when flows last named each namespace.
type namespaces struct {
	mu        sync.RWMutex
	lastSeen  map[namespaceKey]time.Time
	lastPrune time.Time
}

func newNamespaces() *namespaces {
	return &namespaces{lastSeen: map[namespaceKey]time.Time{}}
}

func (n *namespaces) observe(cluster, namespace string, at time.Time) {
	k := namespaceKey{cluster, namespace}
	n.mu.RLock()
	last, ok := n.lastSeen[k]
	n.mu.RUnlock()
	if ok && at.Sub(last) < namespaceRefresh {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if last, ok := n.lastSeen[k]; ok && !at.After(last) {
		return
	}
	n.lastSeen[k] = at
	if !ok && at.Sub(n.lastPrune) >= namespacePruneEvery {
		// Pruning when a namespace is added bounds the map by the namespaces
		// of the last hour without a goroutine of its own.
		n.pruneLocked(at)
	}
}

func (n *namespaces) pruneLocked(now time.Time) {
	n.lastPrune = now
	for k, last := range n.lastSeen {
		if now.Sub(last) > namespaceTTL {
			delete(n.lastSeen, k)
		}
	}
}

// list is the namespaces seen within the TTL of now, by cluster then name.
func (n *namespaces) list(now time.Time) []*observerpb.Namespace {
	n.mu.RLock()
	out := make([]*observerpb.Namespace, 0, len(n.lastSeen))
	for k, last := range n.lastSeen {
		if now.Sub(last) <= namespaceTTL {
			out = append(out, &observerpb.Namespace{Cluster: k.cluster, Namespace: k.namespace})
		}
	}
	n.mu.RUnlock()
	slices.SortFunc(out, func(a, b *observerpb.Namespace) int {
		return cmp.Or(cmp.Compare(a.Cluster, b.Cluster), cmp.Compare(a.Namespace, b.Namespace))
	})
	return out
}
