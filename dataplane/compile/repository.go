package compile

import (
	"fmt"
	"maps"
	"slices"
	"sort"

	"github.com/flatnet/flatnet/dataplane/identity"
	"github.com/flatnet/flatnet/dataplane/ipv4"
	"github.com/flatnet/flatnet/dataplane/policy"
)

// repository holds the policies, by the key of the object they came from, with the
// selectors, CIDR peers and prefixes they use registered in the selector cache and
// the prefixes, and numbers their rules. It decides which identities' policies a
// change touches: the subjects of a policy that changes, or whose peers select
// other identities or other named ports than before.
//
// Invariants: a rule keeps its RuleID across updates of its object (by the rule's
// position, spec#rule) and an ID is never reused; rules holds exactly the IDs of
// the live rules. Every change that can alter the policy of an identity puts that
// identity in dirty before the next Flush, which recompiles and clears it.
type repository struct {
	sels *selectorCache
	pfx  *prefixes

	byKey    map[string][]*polEntry
	ruleIDs  map[string]map[string]RuleID // policy key -> spec#rule -> id
	rules    map[RuleID]RuleInfo
	nextRule RuleID

	clusterUsers map[*polEntry]struct{} // policies naming the cluster entity
	namedAny     map[*polEntry]struct{} // policies with named egress ports resolved cluster-wide

	dirty map[identity.ID]struct{} // identities whose policy may have changed
}

// polEntry is one policy of an object, with what it registered.
type polEntry struct {
	key       string
	pol       *policy.Policy
	ruleIDs   []RuleID
	subject   *selState
	peerSels  []*selState
	cidrPeers []*cidrPeerState
	prefixes  []ipv4.Prefix
	namedEg   bool
}

func newRepository() *repository {
	return &repository{
		byKey:        map[string][]*polEntry{},
		ruleIDs:      map[string]map[string]RuleID{},
		rules:        map[RuleID]RuleInfo{},
		clusterUsers: map[*polEntry]struct{}{},
		namedAny:     map[*polEntry]struct{}{},
		dirty:        map[identity.ID]struct{}{},
	}
}

// upsert replaces the policies held under key.
func (r *repository) upsert(key string, pols []*policy.Policy) {
	r.remove(key)
	var entries []*polEntry
	used := map[string]bool{}
	ids := r.ruleIDs[key]
	if ids == nil {
		ids = map[string]RuleID{}
		r.ruleIDs[key] = ids
	}
	for si, p := range pols {
		e := &polEntry{key: key, pol: p}
		for ri, rule := range p.Rules {
			rk := fmt.Sprintf("%d#%d", si, ri)
			id, ok := ids[rk]
			if !ok {
				r.nextRule++
				id = r.nextRule
				ids[rk] = id
			}
			used[rk] = true
			r.rules[id] = RuleInfo{Policy: p.Ref, Rule: rule.Name}
			e.ruleIDs = append(e.ruleIDs, id)
		}
		e.subject = r.sels.addUser(p.Subject, e, true)
		for _, rule := range p.Rules {
			r.register(e, rule)
		}
		r.dirtySubjects(e)
		entries = append(entries, e)
	}
	// Prefixes last: a new prefix re-evaluates the CIDR peers registered above.
	for _, e := range entries {
		for _, rule := range e.pol.Rules {
			for _, peer := range rule.Peers {
				if peer.CIDR != nil {
					r.pfx.use(peer.CIDR.Prefix)
					e.prefixes = append(e.prefixes, peer.CIDR.Prefix)
					for _, ex := range peer.CIDR.Except {
						r.pfx.use(ex)
						e.prefixes = append(e.prefixes, ex)
					}
				}
			}
		}
	}
	r.byKey[key] = entries
	for rk, id := range ids {
		if !used[rk] {
			delete(ids, rk)
			delete(r.rules, id)
		}
	}
}

// register records what one rule of e depends on: its peers' selectors and CIDR
// peers, the cluster entity, and where its named egress ports resolve.
func (r *repository) register(e *polEntry, rule policy.Rule) {
	named := false
	for _, port := range rule.Ports {
		named = named || port.Name != ""
	}
	namedEg := named && rule.Direction == policy.Egress
	if namedEg {
		e.namedEg = true
		if rule.AnyPeer {
			r.namedAny[e] = struct{}{}
		}
	}
	for _, peer := range rule.Peers {
		switch {
		case peer.Endpoints != nil:
			e.peerSels = append(e.peerSels, r.sels.addUser(*peer.Endpoints, e, false))
			continue // a selected peer's names resolve on its own identity
		case peer.CIDR != nil:
			e.cidrPeers = append(e.cidrPeers, r.pfx.addPeerUser(*peer.CIDR, e))
		case peer.Entity == policy.EntityCluster:
			r.clusterUsers[e] = struct{}{}
		}
		if namedEg {
			r.namedAny[e] = struct{}{}
		}
	}
}

// delete removes everything key held, rule IDs included.
func (r *repository) delete(key string) {
	r.remove(key)
	for _, id := range r.ruleIDs[key] {
		delete(r.rules, id)
	}
	delete(r.ruleIDs, key)
}

func (r *repository) remove(key string) {
	entries, ok := r.byKey[key]
	if !ok {
		return
	}
	delete(r.byKey, key)
	for _, e := range entries {
		r.dirtySubjects(e)
		r.sels.removeUser(e.subject, e, true)
		for _, s := range e.peerSels {
			r.sels.removeUser(s, e, false)
		}
		for _, cp := range e.cidrPeers {
			r.pfx.removePeerUser(cp, e)
		}
		for _, p := range e.prefixes {
			r.pfx.drop(p)
		}
		delete(r.clusterUsers, e)
		delete(r.namedAny, e)
	}
}

func (r *repository) dirtySubjects(e *polEntry) {
	for id := range e.subject.ids {
		r.dirty[id] = struct{}{}
	}
}

// selectionChanged is the selector cache telling that id entered or left s.
func (r *repository) selectionChanged(s *selState, id identity.ID) {
	if len(s.subjectOf) > 0 {
		r.dirty[id] = struct{}{}
	}
	for e := range s.peerOf {
		r.dirtySubjects(e)
	}
}

// cidrPeerChanged is the prefixes telling that cp selects other prefix identities.
func (r *repository) cidrPeerChanged(cp *cidrPeerState) {
	for e := range cp.users {
		r.dirtySubjects(e)
	}
}

// identitiesChanged: an identity appeared or went, so the cluster entity changed.
func (r *repository) identitiesChanged() {
	for e := range r.clusterUsers {
		r.dirtySubjects(e)
	}
}

// namedPortsChanged: the named ports of identity is (changed) or of the cluster
// (clusterChanged) changed; egress rules resolving names there recompile.
func (r *repository) namedPortsChanged(is *identState, changed, clusterChanged bool) {
	if changed {
		for s := range is.sels {
			for e := range s.peerOf {
				if e.namedEg {
					r.dirtySubjects(e)
				}
			}
		}
	}
	if clusterChanged {
		for e := range r.namedAny {
			r.dirtySubjects(e)
		}
	}
}

// flushed starts a new set of dirty identities once Flush recompiled the old one.
func (r *repository) flushed() { clear(r.dirty) }

// selecting returns the policies whose subject selects is, in a fixed order (by key,
// then spec) so that rule IDs chosen on ties are stable.
func (r *repository) selecting(is *identState) []*polEntry {
	var entries []*polEntry
	for s := range is.sels {
		for e := range s.subjectOf {
			entries = append(entries, e)
		}
	}
	sort.Slice(entries, func(i, j int) bool {
		if entries[i].key != entries[j].key {
			return entries[i].key < entries[j].key
		}
		return entries[i].pol.Spec < entries[j].pol.Spec
	})
	return entries
}

// usingPrefix returns, by key, the policies whose CIDR peers use prefix p.
func (r *repository) usingPrefix(p ipv4.Prefix) []*polEntry {
	var out []*polEntry
	for _, key := range slices.Sorted(maps.Keys(r.byKey)) {
		for _, e := range r.byKey[key] {
			if slices.Contains(e.prefixes, p) {
				out = append(out, e)
			}
		}
	}
	return out
}
