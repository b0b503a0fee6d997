package enforce

import (
	"context"
	"maps"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/flatnet/flatnet/dataplane/bpf"
	"github.com/flatnet/flatnet/dataplane/flows"
	"github.com/flatnet/flatnet/dataplane/policy"
)

// TestFlowsAndExplainDoNotWaitForThePolicyLock: while the enforcer's lock is held
// (a long compile or datapath write), a flow is still named and an explain still
// answered, from what the last flush published.
func TestFlowsAndExplainDoNotWaitForThePolicyLock(t *testing.T) {
	c := newContainEnv(t)
	ctx := context.Background()
	server, client := netip.MustParseAddr("10.224.1.11"), netip.MustParseAddr("10.224.1.12")
	c.pod("default", "server", server.String())
	c.pod("default", "client", client.String())
	must(t, c.node.Do(func(ns.NetNS) error { return c.e.Synced(ctx) }))
	must(t, c.attach("default", "server", server.String()))
	must(t, c.e.UpsertCiliumPolicy(ctx, cnp(t, denyAll)))
	en, err := flows.NewEnricher("n1", c.e.Snapshots())
	must(t, err)

	c.e.mu.Lock()
	done := make(chan struct{})
	go func() {
		defer close(done)
		f := en.Flow(bpf.FlowEvent{Src: client, Dst: server, SrcPort: 40000, DstPort: 80, Protocol: 6,
			Direction: policy.Ingress, Code: bpf.DropPolicy})
		if f.Source.PodName != "client" || f.Destination.PodName != "server" ||
			len(f.IngressDeniedBy) != 1 || f.IngressDeniedBy[0].Name != "deny" {
			t.Errorf("flow %+v -> %+v denied by %v: want client -> server denied by deny", f.Source, f.Destination, f.IngressDeniedBy)
		}
		d, _, err := c.e.Explain("default", "server", policy.Ingress, client, policy.ProtoTCP, 80)
		if err != nil || d.Allowed {
			t.Errorf("explain: %+v, %v; want a drop", d, err)
		}
		if refs := c.e.DefaultDenyBy("default", "server", policy.Ingress); len(refs) != 1 || refs[0].Name != "deny" {
			t.Errorf("default deny by %v, want [deny]", refs)
		}
		md, _, err := c.e.LookupMaps("default", "server", policy.Ingress, client, policy.ProtoTCP, 80)
		if err != nil || md.Allowed {
			t.Errorf("datapath view: %+v, %v; want a drop", md, err)
		}
		if pods := c.e.LocalPods(); !slices.Contains(slices.Collect(maps.Values(pods)), "default/server") {
			t.Errorf("local pods %v: want default/server", pods)
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Error("flow enrichment or explain still waits for the enforcer's lock")
	}
	c.e.mu.Unlock()
	<-done
}
