package compile

import (
	"fmt"
	"maps"
	"slices"
	"sort"

	"github.com/flatnet/flatnet/dataplane/identity"
)

// identities owns the numbers given to label sets: the allocator's references, the
// label set, namespace and named ports of every live pod identity, and the
// persistence records (Update.Identities) waiting for the next Flush.
//
// An identity whose last pod left retires before it is forgotten: the IP cache
// moves that pod's address (to its new identity, or away) only after the
// endpoints' policies are written, so until that write is in the datapath
// packets from the address still carry the old identity, and the policies must
// still know it. A retiring identity keeps the leaving pod's allocator reference,
// its selections and its named ports; Written forgets it once the update that
// moved its addresses is written (Cilium releases an endpoint's old identity
// after the IP cache moved the same way). A pod taking the label set again
// before then simply holds it again.
//
// Invariants: a pod identity is in byID (and byNS) exactly while some pod holds it
// or it is retiring, and the allocator holds one reference per holder (a pod, a
// retirement, or a CIDR prefix through acquireLocal). Every identity's record is
// queued when it is created and, as a delete, before its last reference is
// released: the allocator forgets its Sum with it. named counts, per identity and
// cluster-wide, the named ports of the pods holding it (a retiring identity keeps
// its last pod's).
type identities struct {
	alloc    *identity.Allocator
	byID     map[identity.ID]*identState
	byNS     map[string]map[identity.ID]*identState
	named    map[NamedPort]int // named ports of every pod in the cluster
	pending  map[identity.Sum]IdentityUpdate
	retiring map[identity.ID]*identState // no pod holds them; see Written
}

type identState struct {
	id     identity.ID
	labels map[string]string
	ns     string
	pods   int
	named  map[NamedPort]int
	sels   map[*selState]struct{} // selectors matching this identity, kept by the selector cache
}

func newIdentities(alloc *identity.Allocator) *identities {
	return &identities{
		alloc:    alloc,
		byID:     map[identity.ID]*identState{},
		byNS:     map[string]map[identity.ID]*identState{},
		named:    map[NamedPort]int{},
		pending:  map[identity.Sum]IdentityUpdate{},
		retiring: map[identity.ID]*identState{},
	}
}

// acquire takes one reference on the identity of a label set for a pod of namespace
// ns; created (the identity is new) asks the caller to tell the selector cache.
func (t *identities) acquire(labels map[string]string, ns string) (is *identState, created bool, err error) {
	id, created, err := t.alloc.Acquire(labels)
	if err != nil {
		return nil, false, err
	}
	if !created {
		return t.byID[id], false, nil
	}
	is = &identState{id: id, labels: labels, ns: ns, named: map[NamedPort]int{}, sels: map[*selState]struct{}{}}
	t.byID[id] = is
	if t.byNS[ns] == nil {
		t.byNS[ns] = map[identity.ID]*identState{}
	}
	t.byNS[ns][id] = is
	t.record(id, false)
	return is, true, nil
}

// unref releases a reference taken by acquire that no pod keeps (the pod already
// held that identity).
func (t *identities) unref(id identity.ID) { t.alloc.Release(id) }

// hold counts one more pod on an identity; a retiring one is held again and its
// retirement's reference released. The named ports it kept are dropped (the
// caller counts the pod's anew); namedGone says some were, which the caller
// must tell the repository.
func (t *identities) hold(id identity.ID) (namedGone bool) {
	is := t.byID[id]
	is.pods++
	if t.retiring[id] != is {
		return false
	}
	delete(t.retiring, id)
	t.alloc.Release(id)
	namedGone = len(is.named) > 0
	clear(is.named)
	return namedGone
}

// drop releases a pod's identity. When the pod was the identity's last, the
// identity retires (see identities) instead of going, with the pod's reference
// and its named ports (ports, already uncounted by the caller) kept; changed
// says whether that restored a named port, which the caller must tell the
// repository.
func (t *identities) drop(id identity.ID, ports []NamedPort) (changed bool) {
	is := t.byID[id]
	if is == nil {
		t.alloc.Release(id)
		return false
	}
	is.pods--
	if is.pods > 0 {
		t.alloc.Release(id)
		return false
	}
	t.retiring[id] = is
	for _, np := range ports {
		if np.Name != "" && bump(is.named, np, +1) {
			changed = true
		}
	}
	return changed
}

// retire forgets a retiring identity; the returned state, when not nil, is gone
// and the caller must take it out of the selector cache.
func (t *identities) retire(id identity.ID) (gone *identState) {
	is := t.retiring[id]
	if is == nil {
		return nil
	}
	delete(t.retiring, id)
	t.record(id, true)
	if !t.alloc.Release(id) {
		return nil // not the last reference: cannot happen (see identities)
	}
	delete(t.byID, id)
	delete(t.byNS[is.ns], id)
	if len(t.byNS[is.ns]) == 0 {
		delete(t.byNS, is.ns)
	}
	return is
}

// retiringIDs lists the retiring identities (Flush sorts them with the prefixes').
func (t *identities) retiringIDs() []identity.ID { return slices.Collect(maps.Keys(t.retiring)) }

// acquireLocal gives a node-local identity to a name (a CIDR prefix).
func (t *identities) acquireLocal(name string) (identity.ID, error) {
	id, _, err := t.alloc.AcquireLocal(name)
	if err != nil {
		return 0, fmt.Errorf("allocating a local identity for %s: %w", name, err)
	}
	t.record(id, false)
	return id, nil
}

// releaseLocal drops a local identity acquireLocal gave.
func (t *identities) releaseLocal(id identity.ID) {
	t.record(id, true)
	t.alloc.Release(id)
}

// record queues an identity for Update.Identities.
func (t *identities) record(id identity.ID, del bool) {
	if s, ok := t.alloc.SumOf(id); ok {
		t.pending[s] = IdentityUpdate{Sum: s, ID: id, Delete: del}
	}
}

// recordAll queues every live pod identity again (after Invalidate).
func (t *identities) recordAll() {
	for id := range t.byID {
		t.record(id, false)
	}
}

// flush returns the queued records by identity and forgets them.
func (t *identities) flush() []IdentityUpdate {
	var out []IdentityUpdate
	for _, u := range t.pending {
		out = append(out, u)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	clear(t.pending)
	return out
}

// countNamed adds (sign +1) or removes (-1) a pod's named ports from its identity's
// and the cluster's counts, and reports which of the two sets changed.
func (t *identities) countNamed(is *identState, ports []NamedPort, sign int) (changed, clusterChanged bool) {
	for _, np := range ports {
		if np.Name == "" {
			continue
		}
		if bump(is.named, np, sign) {
			changed = true
		}
		if bump(t.named, np, sign) {
			clusterChanged = true
		}
	}
	return changed, clusterChanged
}

// bump adjusts a count and reports whether the key appeared or disappeared.
func bump(m map[NamedPort]int, k NamedPort, sign int) bool {
	n := m[k] + sign
	if n <= 0 {
		delete(m, k)
		return n == 0
	}
	m[k] = n
	return n == 1 && sign > 0
}
