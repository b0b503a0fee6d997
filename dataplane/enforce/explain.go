package enforce

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/flatnet/flatnet/dataplane/bpf"
	"github.com/flatnet/flatnet/dataplane/compile"
	"github.com/flatnet/flatnet/dataplane/policy"
)

// Explain decides a new connection for a local pod as the datapath would.
func (e *Enforcer) Explain(namespace, name string, dir policy.Direction, remote netip.Addr, proto policy.Protocol, port uint16) (compile.Decision, compile.RuleInfo, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	d, err := e.c.Explain(namespace, name, dir, remote, proto, port)
	if err != nil {
		return d, compile.RuleInfo{}, err
	}
	ri, _ := e.c.Rule(d.RuleID)
	return d, ri, nil
}

// LookupMaps reads what the datapath's maps hold for a new connection of a local
// pod (bpf.Datapath.Lookup), with the rule its entry names.
func (e *Enforcer) LookupMaps(namespace, name string, dir policy.Direction, remote netip.Addr, proto policy.Protocol, port uint16) (bpf.MapDecision, compile.RuleInfo, error) {
	e.mu.Lock()
	ifindex, ok := e.ifindexOf(namespace, name)
	e.mu.Unlock()
	if !ok {
		return bpf.MapDecision{}, compile.RuleInfo{}, fmt.Errorf("%s/%s has no interface attached on this node", namespace, name)
	}
	md, err := e.d.Lookup(context.Background(), ifindex, dir, remote, proto, port)
	if err != nil {
		return md, compile.RuleInfo{}, err
	}
	ri, _ := e.RuleName(md.RuleID)
	return md, ri, nil
}

// RuleName names the rule of a flow event.
func (e *Enforcer) RuleName(id compile.RuleID) (compile.RuleInfo, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.c.Rule(id)
}
