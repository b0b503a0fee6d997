package compile

import (
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/flatnet/flatnet/dataplane/identity"
	"github.com/flatnet/flatnet/dataplane/ipv4"
	"github.com/flatnet/flatnet/dataplane/policy"
)

// prefixes owns the CIDR side of policy: one node-local identity per prefix that a
// rule names (as block or exception), the CIDR peers of rules with the prefix
// identities each selects, and the CIDR -> identity entries emitted to the datapath.
//
// A prefix no rule names any more retires before it goes, as a pod identity does
// (identities): its entry stays in the datapath, and the peers whose block holds
// it keep selecting it, until Written says the update that dropped it is in.
// Else an address the prefix served would, between that update's writes, fall to
// no prefix (world) before a new enclosing prefix is written, and be dropped on a
// path the old and the new rules both keep open (an ipBlock broadened from
// 10.1.0.0/16 to 10.0.0.0/8).
//
// Invariants: a prefix is in byPrefix exactly while some rule names it (refs counts
// the namings) or it is retiring (refs 0), and its identity was allocated; for every CIDR peer,
// ids = {identity of p : p in byPrefix, cidrSelects(peer, p)}, and its users are told
// (changed) when that set changes. A prefix coming or going is touched in out,
// which follows the datapath's CIDR entries. byLen holds what byPrefix holds and
// byBlock every peer under its block: a prefix or a peer coming or going then
// meets only the peers or prefixes it can concern (lengthindex.go).
type prefixes struct {
	ids      *identities
	byPrefix map[ipv4.Prefix]*cidrState
	byLen    lengthIndex[*cidrState]                  // byPrefix again, for the prefixes inside a block
	peers    map[string]*cidrPeerState                // by cidrKey
	byBlock  lengthIndex[map[*cidrPeerState]struct{}] // peers by their block
	out      mirror[ipv4.Prefix]
	changed  func(cp *cidrPeerState)     // the identities cp selects changed
	retiring map[identity.ID]ipv4.Prefix // named by no rule; see Written
}

type cidrState struct {
	id   identity.ID
	refs int
}

type cidrPeerState struct {
	key   string
	cidr  policy.CIDR
	ids   map[identity.ID]struct{}
	users map[*polEntry]struct{}
}

func newPrefixes(ids *identities, changed func(*cidrPeerState)) *prefixes {
	return &prefixes{
		ids:      ids,
		byPrefix: map[ipv4.Prefix]*cidrState{},
		peers:    map[string]*cidrPeerState{},
		out:      newMirror(func(p ipv4.Prefix) (ipv4.Prefix, bool) { return p, true }),
		changed:  changed,
		retiring: map[identity.ID]ipv4.Prefix{},
	}
}

func cidrKey(c policy.CIDR) string {
	var b strings.Builder
	b.WriteString(c.Prefix.String())
	for _, e := range c.Except {
		b.WriteString(" -")
		b.WriteString(e.String())
	}
	return b.String()
}

// addPeerUser registers policy entry e as a user of a CIDR peer.
func (px *prefixes) addPeerUser(cidr policy.CIDR, e *polEntry) *cidrPeerState {
	key := cidrKey(cidr)
	cp, ok := px.peers[key]
	if !ok {
		cp = &cidrPeerState{key: key, cidr: cidr, ids: map[identity.ID]struct{}{}, users: map[*polEntry]struct{}{}}
		px.byLen.within(cidr.Prefix, func(p ipv4.Prefix, st *cidrState) {
			if cidrSelects(cidr, p) {
				cp.ids[st.id] = struct{}{}
			}
		})
		px.peers[key] = cp
		same, _ := px.byBlock.get(cidr.Prefix)
		if same == nil {
			same = map[*cidrPeerState]struct{}{}
			px.byBlock.set(cidr.Prefix, same)
		}
		same[cp] = struct{}{}
	}
	cp.users[e] = struct{}{}
	return cp
}

// removePeerUser undoes addPeerUser; the peer goes with its last user.
func (px *prefixes) removePeerUser(cp *cidrPeerState, e *polEntry) {
	delete(cp.users, e)
	if len(cp.users) == 0 {
		delete(px.peers, cp.key)
		same, _ := px.byBlock.get(cp.cidr.Prefix)
		delete(same, cp)
		if len(same) == 0 {
			px.byBlock.del(cp.cidr.Prefix)
		}
	}
}

// lookupPeer returns the CIDR peer of cidr, nil when no policy uses it.
func (px *prefixes) lookupPeer(cidr policy.CIDR) *cidrPeerState { return px.peers[cidrKey(cidr)] }

// cidrSelects reports whether the CIDR peer selects the identity of prefix p: with
// every rule prefix in the longest-prefix map, an address falls in the peer exactly
// when its longest matching prefix lies inside the block and inside no exception.
func cidrSelects(c policy.CIDR, p ipv4.Prefix) bool {
	if !p.Within(c.Prefix) {
		return false
	}
	for _, e := range c.Except {
		if p.Within(e) {
			return false
		}
	}
	return true
}

// use counts one more naming of p by a rule (a retiring prefix is named again).
func (px *prefixes) use(p ipv4.Prefix) {
	if st, ok := px.byPrefix[p]; ok {
		st.refs++
		delete(px.retiring, st.id)
		return
	}
	id, err := px.ids.acquireLocal("cidr:" + p.String())
	if err != nil {
		// 2^32-2^24 local identities cannot run out in practice; keep the prefix out
		// of the map (its addresses then fall to the enclosing prefix).
		return
	}
	st := &cidrState{id: id, refs: 1}
	px.byPrefix[p] = st
	px.byLen.set(p, st)
	px.out.touch(p)
	px.byBlock.covering(p, func(_ ipv4.Prefix, same map[*cidrPeerState]struct{}) {
		for cp := range same {
			if cidrSelects(cp.cidr, p) {
				cp.ids[id] = struct{}{}
				px.changed(cp)
			}
		}
	})
}

// drop undoes use; with the last naming the prefix retires (see prefixes).
func (px *prefixes) drop(p ipv4.Prefix) {
	st, ok := px.byPrefix[p]
	if !ok {
		return
	}
	st.refs--
	if st.refs == 0 {
		px.retiring[st.id] = p
	}
}

// retire forgets a retiring prefix by its identity (false: not one): it and its
// identity go, and the peers that selected it are told.
func (px *prefixes) retire(id identity.ID) bool {
	p, ok := px.retiring[id]
	if !ok {
		return false
	}
	delete(px.retiring, id)
	st := px.byPrefix[p]
	delete(px.byPrefix, p)
	px.byLen.del(p)
	px.ids.releaseLocal(st.id)
	px.out.touch(p)
	// Only a peer whose block holds p can have selected it.
	px.byBlock.covering(p, func(_ ipv4.Prefix, same map[*cidrPeerState]struct{}) {
		for cp := range same {
			if _, ok := cp.ids[st.id]; ok {
				delete(cp.ids, st.id)
				px.changed(cp)
			}
		}
	})
	return true
}

// retiringIDs lists the identities of the retiring prefixes.
func (px *prefixes) retiringIDs() []identity.ID { return slices.Collect(maps.Keys(px.retiring)) }

// identityOf returns the identity of the longest rule prefix holding a, or 0.
func (px *prefixes) identityOf(a netip.Addr) identity.ID {
	if !a.Is4() {
		return 0
	}
	if st, ok := px.byLen.longest(a.As4()); ok {
		return st.id
	}
	return 0
}

// flush returns the entries that changed since the last flush, sorted by prefix.
func (px *prefixes) flush() []PrefixUpdate {
	return px.out.flush(func(p ipv4.Prefix) (identity.ID, bool) {
		st, ok := px.byPrefix[p]
		if !ok {
			return 0, false
		}
		return st.id, true
	}, nil)
}

// invalidate forgets what was emitted: the next flush emits every prefix, and the
// next Update records every prefix identity again.
func (px *prefixes) invalidate() {
	px.out.forget()
	for p, st := range px.byPrefix {
		px.out.touch(p)
		px.ids.record(st.id, false)
	}
}
