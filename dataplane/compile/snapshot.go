package compile

import (
	"fmt"
	"hash/maphash"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/flatnet/flatnet/dataplane/identity"
	"github.com/flatnet/flatnet/dataplane/ipv4"
	"github.com/flatnet/flatnet/dataplane/policy"
)

// Snapshot is the compiler's state as one Flush left it, frozen: what flow records
// and `explain` are named and decided with (the owner of each address, the name of
// each rule, each local endpoint's emitted policy and the policies putting it in
// default deny, the CIDR-rule prefixes). The compiler publishes one at the end of
// every Flush; readers on other goroutines load it without any lock
// (Compiler.Snapshot) while the compiler goes on changing its own maps. Its lookups
// are small getters, as Hubble's parser has them, so a flow never waits for policy
// compilation.
//
// Its tables are copy-on-write maps (cowMap): a new snapshot shares every shard
// the Flush did not touch with the previous one, so publishing costs what changed,
// not the size of the cluster.
type Snapshot struct {
	peers     *cowMap[[4]byte, *Peer] // pointers: a shard copies in a few words per address
	rules     *cowMap[RuleID, RuleInfo]
	endpoints *cowMap[string, *flushedEndpoint] // local endpoints by "namespace/name"
	cidrs     *cowMap[ipv4.Prefix, identity.ID]
}

// flushedEndpoint is a local endpoint as the Flush emitted it.
type flushedEndpoint struct {
	policy      *EndpointPolicy
	defaultDeny [2][]policy.Ref // by direction: see DefaultDenyBy
}

// publisher keeps the last snapshot and what the next one must redo.
type publisher struct {
	current atomic.Pointer[Snapshot]
	// peers are the addresses whose owners Flush saw change (peerChanged): the
	// compiler's dirty set of addresses keeps its largest size ever, too costly
	// to walk twice per Flush.
	peers []netip.Addr
	// rulesChanged are the policy keys upserted or deleted since the last publish;
	// oldRules the rule IDs they held before (renamed or gone now). Rule names
	// have no dirty set of their own.
	rulesChanged map[string]struct{}
	oldRules     map[RuleID]struct{}
}

// peerChanged notes, as Flush walks the addresses whose owners changed, one for
// the next publish.
func (p *publisher) peerChanged(ip netip.Addr) { p.peers = append(p.peers, ip) }

// Snapshot returns the last published snapshot, empty before the first Flush.
// Unlike the compiler's other methods it is safe to call from any goroutine.
func (c *Compiler) Snapshot() *Snapshot { return c.Latest().Snapshot() }

// Latest returns the getters of c's latest snapshot (see Latest).
func (c *Compiler) Latest() Latest { return Latest{&c.published} }

// Latest reads the last published snapshot anew at each call: the getters of a
// reader that lives across flushes (the flow enricher). Safe from any goroutine.
type Latest struct{ p *publisher }

// Snapshot returns the last published snapshot, empty before the first Flush.
func (l Latest) Snapshot() *Snapshot {
	if s := l.p.current.Load(); s != nil {
		return s
	}
	return &Snapshot{peers: newCOWMap[[4]byte, *Peer](), rules: newCOWMap[RuleID, RuleInfo](),
		endpoints: newCOWMap[string, *flushedEndpoint](), cidrs: newCOWMap[ipv4.Prefix, identity.ID]()}
}

// PeerOf is Snapshot().PeerOf.
func (l Latest) PeerOf(ip netip.Addr) (Peer, bool) { return l.Snapshot().PeerOf(ip) }

// RuleName is Snapshot().RuleName.
func (l Latest) RuleName(id RuleID) (RuleInfo, bool) { return l.Snapshot().RuleName(id) }

// DefaultDenyBy is Snapshot().DefaultDenyBy.
func (l Latest) DefaultDenyBy(namespace, name string, dir policy.Direction) []policy.Ref {
	return l.Snapshot().DefaultDenyBy(namespace, name, dir)
}

// rulesChanging notes, before UpsertPolicy or DeletePolicy changes key's rules,
// the rule IDs the key holds: the next publish renames or forgets them.
func (c *Compiler) rulesChanging(key string) {
	p := &c.published
	if p.rulesChanged == nil {
		p.rulesChanged, p.oldRules = map[string]struct{}{}, map[RuleID]struct{}{}
	}
	p.rulesChanged[key] = struct{}{}
	for _, id := range c.repo.ruleIDs[key] {
		p.oldRules[id] = struct{}{}
	}
}

// publish makes the next snapshot from the last one and what this Flush changed:
// the addresses it noted (peerChanged), the local pods it looked at (flushed:
// their emitted policy or default-deny owners may have changed, as a policy
// change marks the identities it selects dirty), the CIDR-rule prefixes it
// emitted, and the policies upserted or deleted since the last publish.
func (c *Compiler) publish(flushed []string, cidrs []PrefixUpdate) {
	prev := c.Snapshot()
	next := *prev
	if p := &c.published; len(p.peers) > 0 {
		w := prev.peers.write()
		for _, ip := range p.peers {
			if peer, ok := c.PeerOf(ip); ok {
				// A Peer's labels are its identity's, which never change.
				if old, had := w.get(ip.As4()); !had || old.Namespace != peer.Namespace || old.Name != peer.Name ||
					old.Node != peer.Node || old.Identity != peer.Identity || !slices.Equal(old.Workloads, peer.Workloads) {
					w.set(ip.As4(), &peer)
				}
			} else {
				w.delete(ip.As4())
			}
		}
		next.peers = w.done()
		p.peers = nil // the first Flush notes every address: do not keep that much
	}
	if p := &c.published; len(p.rulesChanged) > 0 {
		for key := range p.rulesChanged {
			for _, id := range c.repo.ruleIDs[key] {
				p.oldRules[id] = struct{}{}
			}
		}
		w := prev.rules.write()
		for id := range p.oldRules {
			if ri, ok := c.repo.rules[id]; ok {
				if old, had := w.get(id); !had || old != ri {
					w.set(id, ri)
				}
			} else {
				w.delete(id)
			}
		}
		next.rules = w.done()
		// Dropped, not cleared: the first Flush fills them with every policy,
		// and clearing a map costs its largest size ever.
		p.rulesChanged, p.oldRules = nil, nil
	}
	if len(flushed) > 0 {
		w := prev.endpoints.write()
		for _, k := range flushed {
			pol := c.emit.emitted[k]
			if pol == nil {
				w.delete(k)
				continue
			}
			ns, name, _ := strings.Cut(k, "/")
			ep := &flushedEndpoint{policy: pol, defaultDeny: c.defaultDeny(ns, name)}
			if old, had := w.get(k); !had || old.policy != ep.policy ||
				!slices.Equal(old.defaultDeny[policy.Ingress], ep.defaultDeny[policy.Ingress]) ||
				!slices.Equal(old.defaultDeny[policy.Egress], ep.defaultDeny[policy.Egress]) {
				w.set(k, ep)
			}
		}
		next.endpoints = w.done()
	}
	if len(cidrs) > 0 {
		w := prev.cidrs.write()
		for _, u := range cidrs {
			if u.Delete {
				w.delete(u.Prefix)
			} else {
				w.set(u.Prefix, u.Identity)
			}
		}
		next.cidrs = w.done()
	}
	c.published.current.Store(&next)
}

// PeerOf names the owner of an address as the datapath resolves it (see
// Compiler.PeerOf).
func (s *Snapshot) PeerOf(ip netip.Addr) (Peer, bool) {
	if !ip.Is4() {
		return Peer{}, false
	}
	p, ok := s.peers.get(ip.As4())
	if !ok {
		return Peer{}, false
	}
	return *p, true
}

// RuleName names the rule of a flow event or an explanation.
func (s *Snapshot) RuleName(id RuleID) (RuleInfo, bool) { return s.rules.get(id) }

// DefaultDenyBy lists the policies putting a local endpoint in default deny for dir
// (see Compiler.DefaultDenyBy); nil for a pod that is not a local endpoint. The
// list is the snapshot's own, shared (it names every dropped flow without a rule):
// callers must not modify it.
func (s *Snapshot) DefaultDenyBy(namespace, name string, dir policy.Direction) []policy.Ref {
	ep, ok := s.endpoints.get(namespace + "/" + name)
	if !ok {
		return nil
	}
	return ep.defaultDeny[dir]
}

// Explain decides a new connection between a local endpoint and a remote address as
// the datapath does with what this snapshot's Flush emitted (see Compiler.Explain).
func (s *Snapshot) Explain(namespace, name string, dir policy.Direction, remote netip.Addr, proto policy.Protocol, port uint16) (Decision, error) {
	ep, ok := s.endpoints.get(namespace + "/" + name)
	if !ok {
		return Decision{}, notEmitted(namespace, name)
	}
	id := identity.World
	if p, ok := s.PeerOf(remote); ok {
		id = p.Identity
	}
	return ep.policy.Decide(dir, id, s.cidrIdentity(remote), proto, port), nil
}

// cidrIdentity returns the identity of the longest CIDR-rule prefix holding a, or 0.
func (s *Snapshot) cidrIdentity(a netip.Addr) identity.ID {
	for bits := 32; bits >= 0; bits-- {
		p, err := ipv4.From4(a.As4(), bits)
		if err != nil {
			return 0 // not IPv4: no CIDR rule holds it
		}
		if id, ok := s.cidrs.get(p); ok {
			return id
		}
	}
	return 0
}

func notEmitted(namespace, name string) error {
	return fmt.Errorf("explaining %s/%s: not a local endpoint with a compiled policy (Flush first)", namespace, name)
}

// cowShards is how many shards a cowMap has: a change copies about 1/cowShards
// of the map. They are held in cowGroups groups of cowGroups, so that a change
// also copies only its group's table of shards (a few hundred bytes), not one
// table of them all.
const (
	cowGroups = 32
	cowShards = cowGroups * cowGroups
)

// cowMap is an immutable map: a new version (write, then done) shares with the
// old every shard (and every group of shards) it did not change, so a small change
// of a large map copies a small part of it and readers of the old version are
// never disturbed.
type cowMap[K comparable, V any] struct {
	seed   maphash.Seed
	groups [cowGroups]*[cowGroups]map[K]V // nil: empty
}

func newCOWMap[K comparable, V any]() *cowMap[K, V] {
	return &cowMap[K, V]{seed: maphash.MakeSeed()}
}

func (m *cowMap[K, V]) shard(k K) (group, shard int) {
	i := int(maphash.Comparable(m.seed, k) % cowShards)
	return i / cowGroups, i % cowGroups
}

func (m *cowMap[K, V]) get(k K) (V, bool) {
	g, i := m.shard(k)
	if m.groups[g] == nil {
		var zero V
		return zero, false
	}
	v, ok := m.groups[g][i][k]
	return v, ok
}

// write starts the next version of m.
func (m *cowMap[K, V]) write() *cowWriter[K, V] { return &cowWriter[K, V]{base: m} }

// cowWriter builds the next version of a cowMap: it copies the map's table of
// groups at the first change, a group's table of shards at its first change, and
// each shard once, at its first change.
type cowWriter[K comparable, V any] struct {
	base, next  *cowMap[K, V] // next is nil until something changes
	groupCopied [cowGroups]bool
	shardCopied [cowShards / 64]uint64 // bit set: the shard is next's own
}

func (w *cowWriter[K, V]) get(k K) (V, bool) {
	if w.next != nil {
		return w.next.get(k)
	}
	return w.base.get(k)
}

func (w *cowWriter[K, V]) writable(g, i int) map[K]V {
	if w.next == nil {
		next := *w.base
		w.next = &next
	}
	if !w.groupCopied[g] {
		group := new([cowGroups]map[K]V)
		if old := w.next.groups[g]; old != nil {
			*group = *old
		}
		w.next.groups[g] = group
		w.groupCopied[g] = true
	}
	n := g*cowGroups + i
	if w.shardCopied[n/64]&(1<<(n%64)) == 0 {
		shard := maps.Clone(w.next.groups[g][i])
		if shard == nil {
			shard = map[K]V{}
		}
		w.next.groups[g][i] = shard
		w.shardCopied[n/64] |= 1 << (n % 64)
	}
	return w.next.groups[g][i]
}

func (w *cowWriter[K, V]) set(k K, v V) { w.writable(w.base.shard(k))[k] = v }

func (w *cowWriter[K, V]) delete(k K) {
	if _, ok := w.get(k); ok {
		delete(w.writable(w.base.shard(k)), k)
	}
}

// done returns the new version (m itself when nothing changed); w must not be
// used after.
func (w *cowWriter[K, V]) done() *cowMap[K, V] {
	if w.next == nil {
		return w.base
	}
	return w.next
}
