package compile

import (
	"net/netip"
	"testing"

	"github.com/flatnet/flatnet/dataplane/identity"
	"github.com/flatnet/flatnet/dataplane/ipv4"
	"github.com/flatnet/flatnet/dataplane/policy"
)

// What the enforcer needs to contain a failed write: which local pods a CIDR prefix's
// policies select (they are isolated while it is missing), which object contributes
// an endpoint's entries (it is blamed when they do not fit), and re-emitting just the
// endpoint or prefix that failed.
func TestFailedWriteHelpers(t *testing.T) {
	c := New(identity.NewAllocator())
	for _, ns := range []string{"a", "b"} {
		mustDo(t, c.UpsertNamespace(Namespace{Name: ns}))
	}
	mustDo(t, c.UpsertPod(Pod{Namespace: "a", Name: "x", Labels: map[string]string{"app": "x"}, IP: netip.MustParseAddr("10.0.0.5"), Local: true}))
	mustDo(t, c.UpsertPod(Pod{Namespace: "a", Name: "remote", Labels: map[string]string{"app": "x"}, IP: netip.MustParseAddr("10.0.1.5")}))
	mustDo(t, c.UpsertPod(Pod{Namespace: "b", Name: "y", Labels: map[string]string{"app": "y"}, IP: netip.MustParseAddr("10.0.0.6"), Local: true}))
	block, except := ipv4.MustParsePrefix("192.168.0.0/16"), ipv4.MustParsePrefix("192.168.1.0/24")
	ref := policy.Ref{Kind: policy.KindNetworkPolicy, Namespace: "a", Name: "cidr"}
	subj := policy.Selector{}.And(policy.Eq(policy.NamespaceLabel, "a"))
	mustDo(t, c.UpsertPolicy("np/a/cidr", []*policy.Policy{{Ref: ref, Subject: subj, DefaultDeny: [2]bool{false, true},
		Rules: []policy.Rule{{Direction: policy.Egress, Name: "spec.egress[0]", Peers: []policy.Peer{{CIDR: &policy.CIDR{Prefix: block, Except: []ipv4.Prefix{except}}}},
			Ports: []policy.Port{{Protocol: policy.ProtoTCP, Port: 443, EndPort: 443}}}}}}))
	up := c.Flush()
	if len(up.CIDRs) != 2 {
		t.Fatalf("CIDR updates %+v, want the block and its exception", up.CIDRs)
	}
	for _, p := range []ipv4.Prefix{block, except} {
		refs, pods := c.PrefixUsers(p)
		if len(refs) != 1 || refs[0] != ref || len(pods) != 1 || pods[0] != "a/x" {
			t.Errorf("PrefixUsers(%v) = %v, %v; want the policy and its one local pod a/x", p, refs, pods)
		}
	}
	if refs, pods := c.PrefixUsers(ipv4.MustParsePrefix("10.0.0.0/8")); len(refs)+len(pods) != 0 {
		t.Errorf("PrefixUsers of an unused prefix = %v, %v", refs, pods)
	}
	if got := c.EntriesByPolicy(c.EndpointPolicy("a", "x")); got[ref] == 0 || len(got) != 1 {
		t.Errorf("EntriesByPolicy = %v, want every entry of a/x from %v", got, ref)
	}
	if up := c.Flush(); !up.Empty() {
		t.Fatalf("a second Flush emitted %+v", up)
	}
	c.Retry("a", "x")
	c.RetryPrefix(except)
	up = c.Flush()
	if len(up.Endpoints) != 1 || up.Endpoints[0].Name != "x" || up.Endpoints[0].Policy == nil ||
		len(up.CIDRs) != 1 || up.CIDRs[0].Prefix != except || len(up.Identities) != 0 {
		t.Errorf("after Retry(a/x) and RetryPrefix(%v): %+v, want exactly those again", except, up)
	}
}
