package compile

import (
	"sort"

	"github.com/flatnet/flatnet/dataplane/identity"
	"github.com/flatnet/flatnet/dataplane/ipv4"
)

// mirror follows one prefix -> identity table of the datapath (the IP cache, the
// CIDR prefixes), keyed by K.
//
// Invariant: emitted is what the datapath holds, as far as the compiler knows;
// dirty holds every key whose wanted identity may differ from it.
type mirror[K comparable] struct {
	dirty   map[K]struct{}
	emitted map[K]identity.ID
	prefix  func(K) (ipv4.Prefix, bool) // the datapath key of K; false: none
}

func newMirror[K comparable](prefix func(K) (ipv4.Prefix, bool)) mirror[K] {
	return mirror[K]{dirty: map[K]struct{}{}, emitted: map[K]identity.ID{}, prefix: prefix}
}

func (m *mirror[K]) touch(k K) { m.dirty[k] = struct{}{} }

// flush returns, sorted by prefix, the entries of the dirty keys that differ from
// what was emitted, given the identity each key wants now (false: no entry);
// seen, when set, is told of every key with a datapath prefix, changed or not.
func (m *mirror[K]) flush(want func(K) (identity.ID, bool), seen func(K)) []PrefixUpdate {
	var out []PrefixUpdate
	for k := range m.dirty {
		p, ok := m.prefix(k)
		if !ok {
			continue
		}
		if seen != nil {
			seen(k)
		}
		id, ok := want(k)
		old, had := m.emitted[k]
		switch {
		case ok && (!had || old != id):
			m.emitted[k] = id
			out = append(out, PrefixUpdate{Prefix: p, Identity: id})
		case !ok && had:
			delete(m.emitted, k)
			out = append(out, PrefixUpdate{Prefix: p, Identity: old, Delete: true})
		}
	}
	clear(m.dirty)
	sort.Slice(out, func(i, j int) bool { return out[i].Prefix.Compare(out[j].Prefix) < 0 })
	return out
}

// retry makes the next flush emit k again (its write failed).
func (m *mirror[K]) retry(k K) {
	delete(m.emitted, k)
	m.touch(k)
}

// forget drops what was emitted: the datapath may hold anything (keys to emit
// again must be touched).
func (m *mirror[K]) forget() { clear(m.emitted) }

// entries copies what was emitted, by prefix.
func (m *mirror[K]) entries() map[ipv4.Prefix]identity.ID {
	out := make(map[ipv4.Prefix]identity.ID, len(m.emitted))
	for k, id := range m.emitted {
		if p, ok := m.prefix(k); ok {
			out[p] = id
		}
	}
	return out
}
