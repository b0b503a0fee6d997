package bpf

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"

	"github.com/flatnet/flatnet/dataplane/compile"
	"github.com/flatnet/flatnet/dataplane/identity"
	"github.com/flatnet/flatnet/dataplane/policy"
)

// MapDecision is what the maps of the running datapath hold for a new connection of
// one endpoint, read back with the programs' own lookup order (the IP and CIDR caches,
// the endpoint's policy map, its meta entry, the deny-first precedence). Set beside the
// compiler's answer, it shows whether intent and datapath disagree.
type MapDecision struct {
	RemoteIdentity identity.ID // from the IP cache; world when the address is not there
	CIDRIdentity   identity.ID // the longest CIDR-rule prefix's key identity, 0 if none
	// Deferred: egress to a Service address or to the node's own address, which the
	// programs let through marked and judge on the backend after kube-proxy's DNAT.
	Deferred bool
	Host     bool // the remote is the pod's own node: always allowed
	Enforced bool // the direction is enforced (no match drops)
	Allowed  bool
	Deny     bool // a deny entry decided
	RuleID   compile.RuleID
}

// Lookup reads what the datapath would decide for the first packet of a connection
// between the endpoint on ifindex and remote, without sending one (no connection is
// tracked, nothing is counted).
func (d *Datapath) Lookup(_ context.Context, ifindex int, dir policy.Direction, remote netip.Addr, proto policy.Protocol, port uint16) (MapDecision, error) {
	var out MapDecision
	if !remote.Is4() {
		return out, fmt.Errorf("looking up %s: only IPv4 is supported", remote)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	var ipc datapathIpcacheVal
	k := datapathIpcacheKey{Prefixlen: 32, Addr: addrBE(remote)}
	out.RemoteIdentity = identity.World
	switch err := d.objs.FnIpcache.Lookup(&k, &ipc); {
	case err == nil && ipc.Identity != 0:
		out.RemoteIdentity = identity.ID(ipc.Identity)
	case err != nil && !errors.Is(err, ebpf.ErrKeyNotExist):
		return out, fmt.Errorf("looking up %s in the IP cache: %w", remote, err)
	}
	bdir := uint8(dirIngress)
	if dir == policy.Egress {
		bdir = dirEgress
	}
	if dir == policy.Egress && (ipc.Flags&1 != 0 || out.RemoteIdentity == identity.Host) {
		out.Deferred, out.Allowed = true, true
		return out, nil
	}
	if out.RemoteIdentity == identity.Host {
		out.Host, out.Allowed = true, true
		return out, nil
	}
	var innerID uint32
	if err := d.objs.FnPolicy.Lookup(uint32(ifindex), &innerID); err != nil {
		return out, fmt.Errorf("endpoint %d has no policy map in the datapath (its packets drop): %w", ifindex, err)
	}
	pol, err := ebpf.NewMapFromID(ebpf.MapID(innerID))
	if err != nil {
		return out, fmt.Errorf("opening the policy map of endpoint %d: %w", ifindex, err)
	}
	defer pol.Close()
	get := func(key datapathPolicyKey) (*datapathPolicyVal, error) {
		var v datapathPolicyVal
		switch err := pol.Lookup(&key, &v); {
		case err == nil:
			return &v, nil
		case errors.Is(err, ebpf.ErrKeyNotExist):
			return nil, nil
		default:
			return nil, fmt.Errorf("reading the policy map of endpoint %d: %w", ifindex, err)
		}
	}
	meta, err := get(datapathPolicyKey{Dir: bdir, Identity: policyMetaIdentity})
	if err != nil {
		return out, err
	}
	var lens uint32
	if meta != nil {
		lens = meta.Lens
		out.Enforced = meta.DefaultAllow == 0
	}
	var cv datapathIpcacheVal
	switch err := d.objs.FnCidrcache.Lookup(&k, &cv); {
	case err == nil:
		out.CIDRIdentity = identity.ID(cv.Identity)
	case !errors.Is(err, ebpf.ErrKeyNotExist):
		return out, fmt.Errorf("looking up %s in the CIDR cache: %w", remote, err)
	}
	if out.CIDRIdentity != 0 && out.RemoteIdentity == identity.World && meta != nil && meta.WorldCidr != 0 {
		out.CIDRIdentity = compile.WorldCIDR(out.CIDRIdentity)
	}
	// lookupOne: the longest port prefix the endpoint uses, else the any-protocol entry.
	lookupOne := func(id identity.ID) (*datapathPolicyVal, error) {
		key := datapathPolicyKey{Dir: bdir, Proto: uint8(proto), Identity: uint32(id)}
		for l := 16; l >= 0; l-- {
			if lens&(1<<l) == 0 {
				continue
			}
			key.Plen = uint8(l)
			key.Dport = 0
			if l > 0 {
				key.Dport = htons(port & uint16(0xffff<<(16-l)))
			}
			if v, err := get(key); v != nil || err != nil {
				return v, err
			}
		}
		return get(datapathPolicyKey{Dir: bdir, Identity: uint32(id)})
	}
	ids := []identity.ID{out.RemoteIdentity, out.CIDRIdentity, identity.Any}
	var allow *datapathPolicyVal
	for i, id := range ids {
		if i == 1 && id == 0 {
			continue
		}
		v, err := lookupOne(id)
		if err != nil {
			return out, err
		}
		if v == nil {
			continue
		}
		if v.Deny != 0 {
			out.Deny, out.RuleID = true, compile.RuleID(v.RuleId)
			return out, nil
		}
		if allow == nil {
			allow = v
		}
	}
	switch {
	case allow != nil:
		out.Allowed, out.RuleID = true, compile.RuleID(allow.RuleId)
	case !out.Enforced && meta != nil:
		out.Allowed = true
	}
	return out, nil
}
