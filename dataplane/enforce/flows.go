package enforce

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/flatnet/flatnet/dataplane/bpf"
	"github.com/flatnet/flatnet/dataplane/compile"
	"github.com/flatnet/flatnet/dataplane/policy"
)

// What flows, explain and the per-pod metrics read. None of it takes e.mu: they
// read the compiler's published snapshot and the attached endpoints' interfaces
// as last published, so a flow or an explain never waits for a policy to compile
// or a datapath write to finish.

// Snapshots are the compiler's published snapshots: the getters flows are named
// with (flows.NewEnricher).
func (e *Enforcer) Snapshots() compile.Latest { return e.c.Latest() }

// DefaultDenyBy lists the policies putting a local pod in default deny for dir.
func (e *Enforcer) DefaultDenyBy(namespace, name string, dir policy.Direction) []policy.Ref {
	return e.c.Snapshot().DefaultDenyBy(namespace, name, dir)
}

// Explain decides a new connection for a local pod as the datapath would.
func (e *Enforcer) Explain(namespace, name string, dir policy.Direction, remote netip.Addr, proto policy.Protocol, port uint16) (compile.Decision, compile.RuleInfo, error) {
	s := e.c.Snapshot()
	d, err := s.Explain(namespace, name, dir, remote, proto, port)
	if err != nil {
		return d, compile.RuleInfo{}, err
	}
	ri, _ := s.RuleName(d.RuleID)
	return d, ri, nil
}

// LookupMaps reads what the datapath's maps hold for a new connection of a local
// pod (bpf.Datapath.Lookup), with the rule its entry names.
func (e *Enforcer) LookupMaps(namespace, name string, dir policy.Direction, remote netip.Addr, proto policy.Protocol, port uint16) (bpf.MapDecision, compile.RuleInfo, error) {
	ifindex, ok := e.ifindexesPublished()[namespace+"/"+name]
	if !ok {
		return bpf.MapDecision{}, compile.RuleInfo{}, fmt.Errorf("%s/%s has no interface attached on this node", namespace, name)
	}
	md, err := e.d.Lookup(context.Background(), ifindex, dir, remote, proto, port)
	if err != nil {
		return md, compile.RuleInfo{}, err
	}
	ri, _ := e.c.Snapshot().RuleName(md.RuleID)
	return md, ri, nil
}

// LocalPods names the attached endpoints: "namespace/name" by host ifindex.
func (e *Enforcer) LocalPods() map[int]string {
	published := e.ifindexesPublished()
	out := make(map[int]string, len(published))
	for key, ifindex := range published {
		out[ifindex] = key
	}
	return out
}

// NodeName is the node this enforcer runs on.
func (e *Enforcer) NodeName() string { return e.cfg.NodeName }

// publishIfindexesLocked republishes the attached endpoints' host interfaces
// after a change (a copy: at most the node's pods).
func (e *Enforcer) publishIfindexesLocked() {
	m := make(map[string]int, len(e.attached))
	for key, ep := range e.attached {
		m[key] = ep.HostIfIndex
	}
	e.ifindexes.Store(&m)
}

// ifindexesPublished is the last published copy of the attached endpoints'
// interfaces (none before the first Attach).
func (e *Enforcer) ifindexesPublished() map[string]int {
	if m := e.ifindexes.Load(); m != nil {
		return *m
	}
	return nil
}
