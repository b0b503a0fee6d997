package identity

import (
	"crypto/sha256"
	"fmt"
	"sort"
	"strings"
	"sync"
)

// Allocator hands out one identity per distinct label set, counting references so
// that an identity lives as long as some endpoint (or CIDR selector) uses it.
// Identities are node-local: every agent allocates them for the whole cluster from
// the same informer data and uses them only in its own maps, so they never need to
// agree across nodes. Numbers are not reused while the allocator lives, so a stale
// map entry can never name a different label set.
//
// Numbers can outlive the process: the agent stores each allocation's Sum and number
// (in a pinned map) and hands them back through Remember after a restart, so the new
// agent gives every label set the number the running datapath already uses.
type Allocator struct {
	mu         sync.Mutex
	byKey      map[string]*entry
	byID       map[ID]*entry
	remembered map[Sum]ID
	nextGlob   ID
	nextLocal  ID
}

// Sum names a label set (or a local name) persistently without storing the labels.
type Sum [32]byte

func sumOf(key string) Sum { return sha256.Sum256([]byte(key)) }

type entry struct {
	id     ID
	key    string
	labels map[string]string
	refs   int
}

// NewAllocator returns an empty allocator.
func NewAllocator() *Allocator {
	return &Allocator{byKey: map[string]*entry{}, byID: map[ID]*entry{}, remembered: map[Sum]ID{},
		nextGlob: MinCluster, nextLocal: MinLocal}
}

// Key is the canonical form of a label set: sorted key=value pairs.
func Key(labels map[string]string) string {
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(';')
		}
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(labels[k])
	}
	return b.String()
}

// Acquire returns the identity of a label set, allocating it on first use; created
// says whether it is new. Each Acquire needs one Release.
func (a *Allocator) Acquire(labels map[string]string) (id ID, created bool, err error) {
	return a.acquire(Key(labels), labels, false)
}

// AcquireLocal is Acquire for node-local identities (CIDR selectors), keyed by name.
func (a *Allocator) AcquireLocal(name string) (ID, bool, error) {
	return a.acquire("local:"+name, nil, true)
}

func (a *Allocator) acquire(key string, labels map[string]string, local bool) (ID, bool, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if e, ok := a.byKey[key]; ok {
		e.refs++
		return e.id, false, nil
	}
	var id ID
	if rid, ok := a.remembered[sumOf(key)]; ok && a.byID[rid] == nil {
		delete(a.remembered, sumOf(key))
		id = rid
	} else if local {
		if a.nextLocal == 0 { // wrapped past 2^32
			return 0, false, fmt.Errorf("allocating a local identity for %q: node-local identities exhausted", key)
		}
		id = a.nextLocal
		a.nextLocal++
	} else {
		if a.nextGlob >= MinLocal {
			return 0, false, fmt.Errorf("allocating an identity for %q: cluster identities exhausted (%d in use)", key, len(a.byID))
		}
		id = a.nextGlob
		a.nextGlob++
	}
	cp := make(map[string]string, len(labels))
	for k, v := range labels {
		cp[k] = v
	}
	e := &entry{id: id, key: key, labels: cp, refs: 1}
	a.byKey[key] = e
	a.byID[id] = e
	return id, true, nil
}

// Remember reserves id for the label set whose Sum is s: the next Acquire of that set
// gets id back. Fresh numbers are allocated above every remembered one.
func (a *Allocator) Remember(s Sum, id ID) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.remembered[s] = id
	if id >= MinLocal {
		if id >= a.nextLocal {
			a.nextLocal = id + 1
		}
	} else if id >= a.nextGlob {
		a.nextGlob = id + 1
	}
}

// ForgetUnclaimed drops the remembered numbers no Acquire has claimed (their label
// sets are gone) and returns their sums, for the agent to delete from storage.
func (a *Allocator) ForgetUnclaimed() []Sum {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]Sum, 0, len(a.remembered))
	for s := range a.remembered {
		out = append(out, s)
	}
	clear(a.remembered)
	return out
}

// SumOf returns the Sum of a live identity.
func (a *Allocator) SumOf(id ID) (Sum, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if e, ok := a.byID[id]; ok {
		return sumOf(e.key), true
	}
	return Sum{}, false
}

// Release drops one reference; freed says the identity is gone.
func (a *Allocator) Release(id ID) (freed bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	e, ok := a.byID[id]
	if !ok {
		return false
	}
	e.refs--
	if e.refs > 0 {
		return false
	}
	delete(a.byID, id)
	delete(a.byKey, e.key)
	return true
}

// Labels returns the label set of id (nil for unknown or local identities); the map
// must not be modified.
func (a *Allocator) Labels(id ID) map[string]string {
	a.mu.Lock()
	defer a.mu.Unlock()
	if e, ok := a.byID[id]; ok {
		return e.labels
	}
	return nil
}

// Len is the number of live identities.
func (a *Allocator) Len() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.byID)
}
