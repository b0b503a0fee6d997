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
// one endpoint: the IP and CIDR caches and the endpoint's policy map, read back and
// decided by the lookup contract (compile.EndpointPolicy.Decide). Set beside the
// compiler's answer, it shows whether intent and datapath disagree.
type MapDecision struct {
	compile.Decision
	RemoteIdentity identity.ID // from the IP cache; world when the address is not there
	CIDRIdentity   identity.ID // the longest CIDR-rule prefix's identity, 0 if none
	// Deferred: egress to a Service address or to the node's own address, which the
	// programs let through marked and judge on the backend after kube-proxy's DNAT.
	Deferred bool
	Enforced bool // the direction is enforced (no match drops)
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
	if dir == policy.Egress && (ipc.Flags&ipcacheFlagService != 0 || out.RemoteIdentity == identity.Host) {
		out.Deferred, out.Allowed = true, true
		return out, nil
	}
	if out.RemoteIdentity == identity.Host {
		out.Host, out.Allowed = true, true
		return out, nil
	}
	pol, err := d.readPolicy(ifindex)
	if err != nil {
		return out, err
	}
	out.Enforced = pol.Enforce[dir]
	var cv datapathIpcacheVal
	switch err := d.objs.FnCidrcache.Lookup(&k, &cv); {
	case err == nil:
		out.CIDRIdentity = identity.ID(cv.Identity)
	case !errors.Is(err, ebpf.ErrKeyNotExist):
		return out, fmt.Errorf("looking up %s in the CIDR cache: %w", remote, err)
	}
	// The entries as the maps hold them, decided by the lookup contract's Go
	// statement (which the programs are held to by the differential test).
	out.Decision = pol.Decide(dir, out.RemoteIdentity, out.CIDRIdentity, proto, port)
	return out, nil
}
