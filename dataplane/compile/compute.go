package compile

import (
	"github.com/flatnet/flatnet/dataplane/identity"
	"github.com/flatnet/flatnet/dataplane/policy"
)

// compute builds the policy of one endpoint from every policy selecting its identity.
func (c *Compiler) compute(ps *podState) *EndpointPolicy {
	ep := &EndpointPolicy{Entries: map[Key]Verdict{}}
	is := c.ids.byID[ps.id]
	if is == nil {
		return ep
	}
	for _, e := range c.repo.selecting(is) {
		for d := range ep.Enforce {
			ep.Enforce[d] = ep.Enforce[d] || e.pol.DefaultDeny[d]
		}
		for ri, r := range e.pol.Rules {
			c.addRule(ep, ps, r, e.ruleIDs[ri])
		}
	}
	mergeWorldCIDR(ep)
	foldDenies(ep)
	return ep
}

// mergeWorldCIDR copies, in each direction that has world-only CIDR entries, every
// plain CIDR entry into the world space (see WorldCIDR): a world remote is looked up
// there only, and must meet ipBlock rules as well as CiliumNetworkPolicy CIDR rules.
// foldDenies then settles the precedence between the two.
func mergeWorldCIDR(ep *EndpointPolicy) {
	var world [2]bool
	for k := range ep.Entries {
		if IsWorldCIDR(k.Identity) {
			world[k.Direction] = true
		}
	}
	if !world[policy.Ingress] && !world[policy.Egress] {
		return
	}
	var plain []Key
	for k := range ep.Entries {
		if world[k.Direction] && k.Identity >= identity.MinLocal && !IsWorldCIDR(k.Identity) {
			plain = append(plain, k)
		}
	}
	for _, k := range plain {
		v := ep.Entries[k]
		k.Identity = WorldCIDR(k.Identity)
		add(ep, k, v)
	}
}

// peerIDs lists the identities a rule's peers select; named ports of egress rules
// need to know, per identity, where a name resolves, so peers carry that too.
type peerSet struct {
	id    identity.ID
	named map[NamedPort]int // where egress names resolve for this peer
}

func (c *Compiler) peers(r policy.Rule) []peerSet {
	if r.AnyPeer {
		return []peerSet{{id: identity.Any, named: c.ids.named}}
	}
	var out []peerSet
	for _, p := range r.Peers {
		switch {
		case p.Endpoints != nil:
			s := c.sels.lookup(*p.Endpoints)
			if s == nil {
				continue
			}
			for id := range s.ids {
				out = append(out, peerSet{id: id, named: c.ids.byID[id].named})
			}
		case p.CIDR != nil:
			cp := c.pfx.lookupPeer(*p.CIDR)
			if cp == nil {
				continue
			}
			for id := range cp.ids {
				if p.CIDR.WorldOnly {
					id = WorldCIDR(id)
				}
				out = append(out, peerSet{id: id, named: c.ids.named})
			}
		default:
			for _, id := range entityIDs(p.Entity, c) {
				out = append(out, peerSet{id: id, named: c.ids.named})
			}
		}
	}
	return out
}

func entityIDs(e policy.Entity, c *Compiler) []identity.ID {
	switch e {
	case policy.EntityAll:
		return []identity.ID{identity.Any}
	case policy.EntityWorld:
		return []identity.ID{identity.World}
	case policy.EntityHost:
		return []identity.ID{identity.Host}
	case policy.EntityRemoteNode:
		return []identity.ID{identity.RemoteNode, identity.KubeAPIServer}
	case policy.EntityKubeAPI:
		return []identity.ID{identity.KubeAPIServer}
	case policy.EntityCluster:
		ids := []identity.ID{identity.Host, identity.RemoteNode, identity.KubeAPIServer, identity.Unmanaged}
		for id := range c.ids.byID {
			ids = append(ids, id)
		}
		return ids
	}
	return nil
}

func (c *Compiler) addRule(ep *EndpointPolicy, ps *podState, r policy.Rule, rid RuleID) {
	v := Verdict{Deny: r.Deny, RuleID: rid}
	for _, peer := range c.peers(r) {
		if len(r.Ports) == 0 {
			add(ep, Key{Direction: r.Direction, Identity: peer.id}, v)
			continue
		}
		for _, port := range r.Ports {
			if port.Name == "" {
				addPorts(ep, r.Direction, peer.id, port.Protocol, port.Port, port.EndPort, v)
				continue
			}
			// A named port resolves on the endpoint that owns it: the selected
			// endpoint for ingress, the peer for egress.
			if r.Direction == policy.Ingress {
				for _, np := range ps.pod.Ports {
					if np.Name == port.Name && protoMatches(port.Protocol, np.Protocol) {
						addPorts(ep, r.Direction, peer.id, np.Protocol, np.Port, np.Port, v)
					}
				}
				continue
			}
			for np := range peer.named {
				if np.Name == port.Name && protoMatches(port.Protocol, np.Protocol) {
					addPorts(ep, r.Direction, peer.id, np.Protocol, np.Port, np.Port, v)
				}
			}
		}
	}
}

func protoMatches(rule, port policy.Protocol) bool {
	return rule == policy.ProtoAny || rule == port
}

var l4Protocols = []policy.Protocol{policy.ProtoTCP, policy.ProtoUDP, policy.ProtoSCTP}

func addPorts(ep *EndpointPolicy, dir policy.Direction, id identity.ID, proto policy.Protocol, lo, hi uint16, v Verdict) {
	if proto == policy.ProtoAny {
		if lo == 0 {
			add(ep, Key{Direction: dir, Identity: id}, v)
			return
		}
		for _, p := range l4Protocols {
			addPorts(ep, dir, id, p, lo, hi, v)
		}
		return
	}
	if lo == 0 {
		add(ep, Key{Direction: dir, Identity: id, Protocol: proto}, v)
		return
	}
	for _, pp := range PortPrefixes(lo, hi) {
		add(ep, Key{Direction: dir, Identity: id, Protocol: proto, Port: pp.Port, PortPrefixLen: pp.Len}, v)
	}
}

// add merges one entry: deny beats allow; among equals the lowest rule ID stays, so
// the result does not depend on map iteration order.
func add(ep *EndpointPolicy, k Key, v Verdict) {
	old, ok := ep.Entries[k]
	switch {
	case !ok:
	case old.Deny && !v.Deny:
		return
	case old.Deny == v.Deny && old.RuleID <= v.RuleID:
		return
	}
	ep.Entries[k] = v
}

// foldDenies turns every allow entry that a less specific deny entry of the same
// identity covers into that deny: the datapath takes the longest match per identity,
// which would otherwise let the allow hide the deny.
func foldDenies(ep *EndpointPolicy) {
	for k, v := range ep.Entries {
		if v.Deny {
			continue
		}
		if d, ok := coveringDeny(ep, k); ok {
			ep.Entries[k] = d
		}
	}
}

func coveringDeny(ep *EndpointPolicy, k Key) (Verdict, bool) {
	if k.Protocol == policy.ProtoAny {
		return Verdict{}, false
	}
	probe := Key{Direction: k.Direction, Identity: k.Identity}
	if d, ok := ep.Entries[probe]; ok && d.Deny {
		return d, true
	}
	probe.Protocol = k.Protocol
	for l := uint8(0); l < k.PortPrefixLen; l++ {
		probe.Port, probe.PortPrefixLen = maskPort(k.Port, l), l
		if d, ok := ep.Entries[probe]; ok && d.Deny {
			return d, true
		}
	}
	return Verdict{}, false
}

// PortPrefix is a block of 2^(16-Len) ports starting at Port.
type PortPrefix struct {
	Port uint16
	Len  uint8
}

// PortPrefixes splits the inclusive range [lo, hi] into the fewest aligned prefixes
// (at most 30), so a range costs a bounded number of entries and one lookup.
func PortPrefixes(lo, hi uint16) []PortPrefix {
	var out []PortPrefix
	cur := uint32(lo)
	end := uint32(hi)
	for cur <= end {
		size := uint32(1)
		l := uint8(16)
		for l > 0 {
			next := size << 1
			if cur%next != 0 || cur+next-1 > end {
				break
			}
			size = next
			l--
		}
		out = append(out, PortPrefix{Port: uint16(cur), Len: l})
		cur += size
	}
	return out
}

func maskPort(p uint16, l uint8) uint16 {
	if l == 0 {
		return 0
	}
	return p & ^uint16((1<<(16-l))-1)
}
