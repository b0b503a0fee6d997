package compile

import (
	"net/netip"

	"github.com/flatnet/flatnet/dataplane/identity"
	"github.com/flatnet/flatnet/dataplane/policy"
)

// Decision is the verdict for the first packet of a connection, as the datapath
// reaches it (see the package comment for the lookup contract).
type Decision struct {
	Allowed bool
	// Deny is set when a deny rule decided; RuleID is then that rule. For an allow it
	// is the allowing rule (0 when the direction is not enforced and nothing matched).
	Deny   bool
	RuleID RuleID
	// Host is set when the remote is the pod's own node, which is always allowed.
	Host bool
}

// Decide evaluates the policy for a remote with security identity remote and CIDR
// identity cidr (0 when no CIDR-rule prefix holds the address).
func (p *EndpointPolicy) Decide(dir policy.Direction, remote, cidr identity.ID, proto policy.Protocol, port uint16) Decision {
	if remote == identity.Host {
		return Decision{Allowed: true, Host: true}
	}
	if cidr != 0 && remote == identity.World && p.hasWorldCIDR(dir) {
		cidr = WorldCIDR(cidr)
	}
	ids := []identity.ID{remote, cidr, identity.Any}
	var allow *Verdict
	for i, id := range ids {
		if i == 1 && cidr == 0 {
			continue
		}
		v, ok := p.longest(dir, id, proto, port)
		if !ok {
			continue
		}
		if v.Deny {
			return Decision{Deny: true, RuleID: v.RuleID}
		}
		if allow == nil {
			allow = &v
		}
	}
	if allow != nil {
		return Decision{Allowed: true, RuleID: allow.RuleID}
	}
	return Decision{Allowed: !p.Enforce[dir]}
}

// hasWorldCIDR reports whether direction dir has world-only CIDR entries (the
// datapath keeps this in the direction's meta entry).
func (p *EndpointPolicy) hasWorldCIDR(dir policy.Direction) bool {
	for k := range p.Entries {
		if k.Direction == dir && IsWorldCIDR(k.Identity) {
			return true
		}
	}
	return false
}

// longest returns the entry of the longest port prefix for id, else its
// any-protocol entry.
func (p *EndpointPolicy) longest(dir policy.Direction, id identity.ID, proto policy.Protocol, port uint16) (Verdict, bool) {
	if proto != policy.ProtoAny {
		for l := 16; l >= 0; l-- {
			k := Key{Direction: dir, Identity: id, Protocol: proto, Port: maskPort(port, uint8(l)), PortPrefixLen: uint8(l)}
			if v, ok := p.Entries[k]; ok {
				return v, true
			}
		}
	}
	v, ok := p.Entries[Key{Direction: dir, Identity: id}]
	return v, ok
}

// Explain decides a new connection between a local pod and a remote address as the
// datapath would now (for `flatnetctl explain` and tests).
func (c *Compiler) Explain(namespace, name string, dir policy.Direction, remote netip.Addr, proto policy.Protocol, port uint16) (Decision, error) {
	pol := c.emit.emitted[namespace+"/"+name]
	if pol == nil {
		return Decision{}, notEmitted(namespace, name)
	}
	id, ok := c.ipc.resolve(remote)
	if !ok {
		id = identity.World
	}
	return pol.Decide(dir, id, c.pfx.identityOf(remote), proto, port), nil
}
