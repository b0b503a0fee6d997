package compile

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"

	iradix "github.com/hashicorp/go-immutable-radix/v2"

	"github.com/flatnet/flatnet/dataplane/identity"
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
// The tables are persistent radix trees: a new snapshot shares every node the
// Flush did not touch with the previous one, so publishing costs what changed, not
// the size of the cluster.
type Snapshot struct {
	peers     *iradix.Tree[Peer]             // by IPv4 address (4 bytes)
	rules     *iradix.Tree[RuleInfo]         // by RuleID (4 bytes, big endian)
	endpoints *iradix.Tree[*flushedEndpoint] // local endpoints by "namespace/name"
	cidrs     *iradix.Tree[identity.ID]      // CIDR-rule prefixes: 4 address bytes, then the length
}

// flushedEndpoint is a local endpoint as the Flush emitted it.
type flushedEndpoint struct {
	policy      *EndpointPolicy
	defaultDeny [2][]policy.Ref // by direction: see DefaultDenyBy
}

// publisher keeps the last snapshot and what the next one must redo that Flush's
// own dirty sets do not say: which policies' rules changed.
type publisher struct {
	current atomic.Pointer[Snapshot]
	// rulesChanged are the policy keys upserted or deleted since the last publish;
	// oldRules the rule IDs they held before (renamed or gone now).
	rulesChanged map[string]struct{}
	oldRules     map[RuleID]struct{}
}

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
	return &Snapshot{peers: iradix.New[Peer](), rules: iradix.New[RuleInfo](),
		endpoints: iradix.New[*flushedEndpoint](), cidrs: iradix.New[identity.ID]()}
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
	for _, id := range c.ruleIDs[key] {
		p.oldRules[id] = struct{}{}
	}
}

// publish makes the next snapshot from the last one and what this Flush changed.
// Flush calls it last, while its dirty sets still say what that was.
func (c *Compiler) publish() {
	prev := c.Snapshot()
	next := *prev
	if len(c.dirtyIPs) > 0 {
		txn := prev.peers.Txn()
		for ip := range c.dirtyIPs {
			if !ip.Is4() {
				continue // never owned: addIPOwner keeps them out
			}
			if p, ok := c.PeerOf(ip); ok {
				txn.Insert(addrKey(ip), p)
			} else {
				txn.Delete(addrKey(ip))
			}
		}
		next.peers = txn.CommitOnly()
	}
	if p := &c.published; len(p.rulesChanged) > 0 {
		for key := range p.rulesChanged {
			for _, id := range c.ruleIDs[key] {
				p.oldRules[id] = struct{}{}
			}
		}
		txn := prev.rules.Txn()
		for id := range p.oldRules {
			if ri, ok := c.rules[id]; ok {
				txn.Insert(ruleKey(id), ri)
			} else {
				txn.Delete(ruleKey(id))
			}
		}
		next.rules = txn.CommitOnly()
		clear(p.rulesChanged)
		clear(p.oldRules)
	}
	if keys := c.flushedEndpoints(); len(keys) > 0 {
		txn := prev.endpoints.Txn()
		for k := range keys {
			pol := c.emitted[k]
			if pol == nil {
				txn.Delete([]byte(k))
				continue
			}
			ns, name, _ := strings.Cut(k, "/")
			txn.Insert([]byte(k), &flushedEndpoint{policy: pol, defaultDeny: [2][]policy.Ref{
				policy.Ingress: c.DefaultDenyBy(ns, name, policy.Ingress),
				policy.Egress:  c.DefaultDenyBy(ns, name, policy.Egress),
			}})
		}
		next.endpoints = txn.CommitOnly()
	}
	if len(c.dirtyPfx) > 0 {
		txn := prev.cidrs.Txn()
		for p := range c.dirtyPfx {
			a := p.Addr4()
			key := append(a[:], byte(p.Bits()))
			if st, ok := c.cidrs[p]; ok {
				txn.Insert(key, st.id)
			} else {
				txn.Delete(key)
			}
		}
		next.cidrs = txn.CommitOnly()
	}
	c.published.current.Store(&next)
}

// flushedEndpoints are the local pods whose emitted policy or default-deny owners
// this Flush may have changed: the pods it looked at (a policy change marks the
// identities it selects dirty).
func (c *Compiler) flushedEndpoints() map[string]struct{} {
	keys := make(map[string]struct{}, len(c.dirtyPods))
	for k := range c.dirtyPods {
		keys[k] = struct{}{}
	}
	for id := range c.dirtyIDs {
		for k := range c.localByID[id] {
			keys[k] = struct{}{}
		}
	}
	return keys
}

func addrKey(ip netip.Addr) []byte {
	a := ip.As4()
	return a[:]
}

func ruleKey(id RuleID) []byte { return binary.BigEndian.AppendUint32(nil, uint32(id)) }

// PeerOf names the owner of an address as the datapath resolves it (see
// Compiler.PeerOf).
func (s *Snapshot) PeerOf(ip netip.Addr) (Peer, bool) {
	if !ip.Is4() {
		return Peer{}, false
	}
	return s.peers.Get(addrKey(ip))
}

// RuleName names the rule of a flow event or an explanation.
func (s *Snapshot) RuleName(id RuleID) (RuleInfo, bool) { return s.rules.Get(ruleKey(id)) }

// DefaultDenyBy lists the policies putting a local endpoint in default deny for dir
// (see Compiler.DefaultDenyBy); nil for a pod that is not a local endpoint.
func (s *Snapshot) DefaultDenyBy(namespace, name string, dir policy.Direction) []policy.Ref {
	ep, ok := s.endpoints.Get([]byte(namespace + "/" + name))
	if !ok {
		return nil
	}
	return slices.Clone(ep.defaultDeny[dir])
}

// Explain decides a new connection between a local endpoint and a remote address as
// the datapath does with what this snapshot's Flush emitted (see Compiler.Explain).
func (s *Snapshot) Explain(namespace, name string, dir policy.Direction, remote netip.Addr, proto policy.Protocol, port uint16) (Decision, error) {
	ep, ok := s.endpoints.Get([]byte(namespace + "/" + name))
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
	if !a.Is4() {
		return 0
	}
	for bits := 32; bits >= 0; bits-- {
		p := netip.PrefixFrom(a, bits).Masked()
		key := append(p.Addr().AsSlice(), byte(bits))
		if id, ok := s.cidrs.Get(key); ok {
			return id
		}
	}
	return 0
}

func notEmitted(namespace, name string) error {
	return fmt.Errorf("explaining %s/%s: not a local endpoint with a compiled policy (Flush first)", namespace, name)
}
