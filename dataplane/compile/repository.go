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
	// byIdentity caches, per identity, what its endpoints' policies are built from;
	// an identity's entry goes when it turns dirty, so thousands of policies
	// selecting it are sorted once per change, not once per endpoint and lookup.
	byIdentity map[identity.ID]*selected
}

// selected is what the policies selecting one identity say, as selecting and
// defaultDeny return it.
type selected struct {
	entries []*polEntry
	deny    *[2][]policy.Ref
}

// polEntry is one policy of an object, with what it registered.
type polEntry struct {
	key       string
	pol       *policy.Policy
	ref       string // pol.Ref.String(), the order of default-deny lists
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
		byIdentity:   map[identity.ID]*selected{},
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
		e := &polEntry{key: key, pol: p, ref: p.Ref.String()}
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
		e.prefixes = namedPrefixes([]*policy.Policy{e.pol})
		for _, p := range e.prefixes {
			r.pfx.use(p)
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
		r.markDirty(id)
	}
}

func (r *repository) markDirty(id identity.ID) {
	r.dirty[id] = struct{}{}
	delete(r.byIdentity, id)
}

// identityGone forgets what was cached for an identity that no pod holds now (its
// number may come back with other labels).
func (r *repository) identityGone(id identity.ID) { delete(r.byIdentity, id) }

// selectionChanged is the selector cache telling that id entered or left s.
func (r *repository) selectionChanged(s *selState, id identity.ID) {
	if len(s.subjectOf) > 0 {
		r.markDirty(id)
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
// then spec) so that rule IDs chosen on ties are stable. The slice is shared: read-only.
func (r *repository) selecting(is *identState) []*polEntry {
	return r.cached(is).entries
}

// defaultDeny lists, per direction, the policies selecting is that put it in
// default deny, each once, ordered by Ref.String(). The slices are shared: read-only.
func (r *repository) defaultDeny(is *identState) [2][]policy.Ref {
	sel := r.cached(is)
	if sel.deny != nil {
		return *sel.deny
	}
	var out [2][]policy.Ref
	for dir := range out {
		var deny []*polEntry
		seen := map[policy.Ref]bool{}
		for _, e := range sel.entries {
			if e.pol.DefaultDeny[dir] && !seen[e.pol.Ref] {
				seen[e.pol.Ref] = true
				deny = append(deny, e)
			}
		}
		sort.Slice(deny, func(i, j int) bool { return deny[i].ref < deny[j].ref })
		for _, e := range deny {
			out[dir] = append(out[dir], e.pol.Ref)
		}
	}
	sel.deny = &out
	return out
}

func (r *repository) cached(is *identState) *selected {
	if sel, ok := r.byIdentity[is.id]; ok {
		return sel
	}
	sel := &selected{entries: r.collect(is)}
	r.byIdentity[is.id] = sel
	return sel
}

func (r *repository) collect(is *identState) []*polEntry {
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
