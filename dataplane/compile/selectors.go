package compile

import (
	"github.com/flatnet/flatnet/dataplane/identity"
	"github.com/flatnet/flatnet/dataplane/policy"
)

// selectorCache keeps, for every label selector some policy uses, the set of live
// identities it selects, and updates those sets incrementally: a new identity is
// matched against the selectors that can select it (those pinned to its namespace
// and those that are not), a new selector against the identities it can select.
//
// Invariants: for every cached selector s and live identity is,
// id ∈ s.ids ⇔ s.sel.Matches(is.labels) ⇔ s ∈ is.sels. A selector is cached exactly
// while it has a user (a policy entry using it as subject or peer). changed (the
// repository) hears of every identity entering or leaving the selection of a
// selector with users; a new selector is filled silently, as it has none yet.
type selectorCache struct {
	ids     *identities
	byKey   map[string]*selState
	byNS    map[string]map[*selState]struct{} // selectors pinned to a namespace
	anyNS   map[*selState]struct{}            // selectors that may match any namespace
	changed func(s *selState, id identity.ID) // id entered or left s's selection
}

type selState struct {
	key       string
	sel       policy.Selector
	ns        []string // namespaces it is pinned to; nil when any
	ids       map[identity.ID]struct{}
	subjectOf map[*polEntry]struct{}
	peerOf    map[*polEntry]struct{}
}

func newSelectorCache(ids *identities, changed func(*selState, identity.ID)) *selectorCache {
	return &selectorCache{
		ids:     ids,
		byKey:   map[string]*selState{},
		byNS:    map[string]map[*selState]struct{}{},
		anyNS:   map[*selState]struct{}{},
		changed: changed,
	}
}

// addUser registers policy entry e as a user of sel, as its subject or as a peer,
// caching the selector on first use.
func (sc *selectorCache) addUser(sel policy.Selector, e *polEntry, subject bool) *selState {
	s := sc.use(sel)
	if subject {
		s.subjectOf[e] = struct{}{}
	} else {
		s.peerOf[e] = struct{}{}
	}
	return s
}

// removeUser undoes addUser; the selector leaves the cache with its last user.
func (sc *selectorCache) removeUser(s *selState, e *polEntry, subject bool) {
	if subject {
		delete(s.subjectOf, e)
	} else {
		delete(s.peerOf, e)
	}
	if len(s.subjectOf) > 0 || len(s.peerOf) > 0 {
		return
	}
	delete(sc.byKey, s.key)
	delete(sc.anyNS, s)
	for _, ns := range s.ns {
		delete(sc.byNS[ns], s)
		if len(sc.byNS[ns]) == 0 {
			delete(sc.byNS, ns)
		}
	}
	for id := range s.ids {
		if is := sc.ids.byID[id]; is != nil {
			delete(is.sels, s)
		}
	}
}

// lookup returns the cached selector of sel, nil when no policy uses it.
func (sc *selectorCache) lookup(sel policy.Selector) *selState { return sc.byKey[sel.String()] }

func (sc *selectorCache) use(sel policy.Selector) *selState {
	key := sel.String()
	if s, ok := sc.byKey[key]; ok {
		return s
	}
	s := &selState{key: key, sel: sel, ids: map[identity.ID]struct{}{},
		subjectOf: map[*polEntry]struct{}{}, peerOf: map[*polEntry]struct{}{}}
	s.ns = pinnedNamespaces(sel)
	sc.byKey[key] = s
	// A new selector has no users yet, so filling it tells nobody.
	if s.ns == nil {
		sc.anyNS[s] = struct{}{}
		for _, is := range sc.ids.byID {
			sc.match(s, is)
		}
		return s
	}
	for _, ns := range s.ns {
		if sc.byNS[ns] == nil {
			sc.byNS[ns] = map[*selState]struct{}{}
		}
		sc.byNS[ns][s] = struct{}{}
		for _, is := range sc.ids.byNS[ns] {
			sc.match(s, is)
		}
	}
	return s
}

// identityAdded matches a new identity against the selectors that can select it.
func (sc *selectorCache) identityAdded(is *identState) {
	for s := range sc.byNS[is.ns] {
		if sc.match(s, is) {
			sc.changed(s, is.id)
		}
	}
	for s := range sc.anyNS {
		if sc.match(s, is) {
			sc.changed(s, is.id)
		}
	}
}

// identityRemoved takes a gone identity out of every selection holding it.
func (sc *selectorCache) identityRemoved(is *identState) {
	for s := range is.sels {
		delete(s.ids, is.id)
		sc.changed(s, is.id)
	}
}

// match adds is to s's selection when s selects it.
func (sc *selectorCache) match(s *selState, is *identState) bool {
	if !s.sel.Matches(is.labels) {
		return false
	}
	s.ids[is.id] = struct{}{}
	is.sels[s] = struct{}{}
	return true
}

// pinnedNamespaces returns the namespaces a selector can only match in, or nil.
func pinnedNamespaces(sel policy.Selector) []string {
	for _, r := range sel.Requirements {
		if r.Key == policy.NamespaceLabel && r.Operator == policy.OpIn {
			return r.Values
		}
	}
	return nil
}
