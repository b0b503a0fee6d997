package bpf

import (
	"context"
	"errors"
	"testing"

	"github.com/flatnet/flatnet/dataplane/compile"
	"github.com/flatnet/flatnet/dataplane/identity"
	"github.com/flatnet/flatnet/dataplane/ipv4"
	"github.com/flatnet/flatnet/dataplane/policy"
)

// TestApplyContainsFailures: an endpoint whose policy does not fit its map, sorted
// before the others, must not keep the others' policies (a new deny) or the CIDR
// prefixes from being written; it is left isolated (deny-all), and the error names
// it alone.
func TestApplyContainsFailures(t *testing.T) {
	d := loadTest(t)
	ctx := context.Background()
	const bigIfindex = testIfindex + 1
	allowAll := &compile.EndpointPolicy{Entries: map[compile.Key]compile.Verdict{}}
	setEndpoint(t, d, serverIP, 1000, allowAll)
	must(t, d.SyncEndpointPolicy(ctx, bigIfindex, allowAll))
	syn := tcp(clientIP, serverIP, 40000, 80, tcpSYN)
	expect(t, d, "before the update", dirIngress, syn, tcxNext)

	huge := &compile.EndpointPolicy{Enforce: [2]bool{true, false}, Entries: map[compile.Key]compile.Verdict{}}
	for i := range d.PolicyLimit() + 1 {
		huge.Entries[compile.Key{Direction: policy.Ingress, Identity: identity.ID(1000 + i), Protocol: policy.ProtoTCP, Port: 80, PortPrefixLen: 16}] = compile.Verdict{}
	}
	deny := &compile.EndpointPolicy{Entries: map[compile.Key]compile.Verdict{
		{Direction: policy.Ingress, Identity: identity.Any}: {Deny: true, RuleID: 9},
	}}
	cidr := ipv4.MustParsePrefix("192.168.0.0/16")
	up := compile.Update{
		Endpoints: []compile.EndpointUpdate{
			{Namespace: "a", Name: "big", IP: otherIP, Identity: 1001, Policy: huge},
			{Namespace: "default", Name: "server", IP: serverIP, Identity: 1000, Policy: deny},
		},
		CIDRs: []compile.PrefixUpdate{{Prefix: cidr, Identity: identity.MinLocal}},
	}
	err := d.Apply(ctx, up, func(ns, name string) (int, bool) {
		if ns == "a" {
			return bigIfindex, true
		}
		return testIfindex, true
	})
	var ae *ApplyError
	if !errors.As(err, &ae) || len(ae.Endpoints) != 1 || ae.Endpoints["a/big"] == nil ||
		!errors.Is(ae.Endpoints["a/big"], ErrPolicyTooLarge) || !ae.Endpoints["a/big"].Isolated {
		t.Fatalf("Apply = %v, want an *ApplyError naming a/big alone (too large, isolated)", err)
	}
	expect(t, d, "the deny of the endpoint after the failed one", dirIngress, tcp(clientIP, serverIP, 40001, 80, tcpSYN), tcxDrop)
	if cidrs, err := d.CIDRs(ctx); err != nil || cidrs[cidr] != identity.MinLocal {
		t.Errorf("CIDR prefix after the failed endpoint: %v %v, want it written", cidrs, err)
	}
	md, err := d.Lookup(ctx, bigIfindex, policy.Egress, clientIP, policy.ProtoTCP, 443)
	must(t, err)
	if md.Allowed || !md.Enforced {
		t.Errorf("the endpoint whose policy did not fit: egress %+v, want deny-all (enforced, nothing allowed)", md)
	}
}
