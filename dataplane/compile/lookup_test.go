package compile

import (
	"net/netip"
	"testing"

	"github.com/flatnet/flatnet/dataplane/identity"
	"github.com/flatnet/flatnet/dataplane/policy"
)

func TestPeerOfAndDefaultDenyBy(t *testing.T) {
	c := New(identity.NewAllocator())
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	server, client, nodeIP := netip.MustParseAddr("10.224.0.40"), netip.MustParseAddr("10.224.0.41"), netip.MustParseAddr("10.224.0.2")
	must(c.UpsertNamespace(Namespace{Name: "default"}))
	must(c.UpsertPod(Pod{Namespace: "default", Name: "server", Labels: map[string]string{"app": "server"}, IP: server, Local: true}))
	must(c.UpsertPod(Pod{Namespace: "default", Name: "client", Labels: map[string]string{"app": "client"}, IP: client}))
	c.UpsertNode("n1", []netip.Addr{nodeIP}, true)
	sel := policy.Selector{Requirements: []policy.Requirement{policy.Eq("app", "server")}}
	ingressOnly := func(name string) []*policy.Policy {
		return []*policy.Policy{{Ref: policy.Ref{Kind: policy.KindCNP, Namespace: "default", Name: name}, Subject: sel,
			DefaultDeny: [2]bool{policy.Ingress: true}}}
	}
	must(c.UpsertPolicy("cnp/default/b-deny", ingressOnly("b-deny")))
	must(c.UpsertPolicy("cnp/default/a-deny", ingressOnly("a-deny")))
	c.Flush()

	got := c.DefaultDenyBy("default", "server", policy.Ingress)
	if len(got) != 2 || got[0].Name != "a-deny" || got[1].Name != "b-deny" {
		t.Errorf("ingress default deny by %v, want a-deny and b-deny in order", got)
	}
	if got := c.DefaultDenyBy("default", "server", policy.Egress); len(got) != 0 {
		t.Errorf("egress default deny by %v, want none (no policy denies egress)", got)
	}
	if got := c.DefaultDenyBy("default", "client", policy.Ingress); len(got) != 0 {
		t.Errorf("client default deny by %v, want none (not selected)", got)
	}
	p, ok := c.PeerOf(client)
	clientID, _ := c.IdentityOf("default", "client")
	if !ok || p.Namespace != "default" || p.Name != "client" || p.Identity != clientID || p.Labels["app"] != "client" {
		t.Errorf("PeerOf(client) = %+v, %v", p, ok)
	}
	if p, ok := c.PeerOf(nodeIP); !ok || p.Node != "n1" || p.Name != "" || p.Identity != identity.Host {
		t.Errorf("PeerOf(node) = %+v, %v; want node n1 with the host identity", p, ok)
	}
	if _, ok := c.PeerOf(netip.MustParseAddr("192.0.2.1")); ok {
		t.Error("PeerOf(an outside address) found an owner")
	}
}
