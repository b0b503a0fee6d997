package bpf

import (
	"context"
	"runtime"
	"testing"
	"time"

	"github.com/flatnet/flatnet/dataplane/policy"
)

func TestFlowEventsNameTheRuleAndCounters(t *testing.T) {
	d := loadTest(t)
	cl := newCluster(t, d)
	cl.cnp("deny-client", `
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{}]
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
`)
	rd, err := d.NewFlowReader()
	must(t, err)
	defer rd.Close()
	expect(t, d, "denied", dirIngress, tcp(clientIP, serverIP, 46000, 80, tcpSYN), tcxDrop)
	expect(t, d, "allowed", dirIngress, tcp(clientIP, serverIP, 46001, 81, tcpSYN), tcxNext)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ev, err := rd.Read(ctx)
	must(t, err)
	if !ev.Code.Dropped() || ev.Code != DropPolicyDeny || ev.Src != clientIP || ev.Dst != serverIP || ev.DstPort != 80 ||
		ev.Direction != policy.Ingress || ev.LocalIdentity != cl.id {
		t.Fatalf("first event = %+v, want the deny of client -> server:80 on ingress", ev)
	}
	info, ok := cl.c.Rule(ev.RuleID)
	if !ok || info.Policy.Name != "deny-client" || info.Rule != "spec.ingressDeny[0]" {
		t.Fatalf("rule %d names %+v (found %v), want deny-client spec.ingressDeny[0]", ev.RuleID, info, ok)
	}
	clientID, _ := cl.c.IdentityOf("default", "client")
	if ev.RemoteIdentity != clientID {
		t.Fatalf("remote identity %v, want the client's %v", ev.RemoteIdentity, clientID)
	}
	ev, err = rd.Read(ctx)
	must(t, err)
	if ev.Code != ForwardPolicy || ev.DstPort != 81 {
		t.Fatalf("second event = %+v, want the allowed new connection to :81", ev)
	}
	if info, _ := cl.c.Rule(ev.RuleID); info.Rule != "spec.ingress[0]" {
		t.Fatalf("allowed by %+v, want spec.ingress[0]", info)
	}

	counters, err := d.Counters(context.Background())
	must(t, err)
	got := map[Code]uint64{}
	for _, c := range counters {
		if c.IfIndex == testIfindex && c.Direction == policy.Ingress {
			got[c.Code] += c.Packets
		}
	}
	if got[DropPolicyDeny] != 1 || got[ForwardPolicy] != 1 {
		t.Fatalf("ingress counters %v, want one deny-rule drop and one policy forward", got)
	}
}

func TestFlowEventsRateLimited(t *testing.T) {
	d := loadTest(t)
	cl := newCluster(t, d)
	cl.cnp("default-deny", seedDefaultDeny)
	const rate, flood = 5, 200
	must(t, d.SetEventRate(context.Background(), rate))
	rd, err := d.NewFlowReader()
	must(t, err)
	defer rd.Close()
	for i := 0; i < flood; i++ {
		expect(t, d, "flood", dirIngress, tcp(clientIP, serverIP, uint16(20000+i), 80, tcpSYN), tcxDrop)
	}
	n := 0
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		_, err := rd.Read(ctx)
		cancel()
		if err != nil {
			break
		}
		n++
	}
	lost, err := d.EventsLost(context.Background())
	must(t, err)
	maxEvents := rate*runtime.NumCPU() + 1 // per-CPU buckets, one refill at most
	if n < rate || n > maxEvents {
		t.Fatalf("read %d events of a %d-packet flood, want between %d and %d", n, flood, rate, maxEvents)
	}
	if lost+uint64(n) != flood {
		t.Fatalf("lost %d + read %d != %d packets: loss is not fully counted", lost, n, flood)
	}
}

func TestFlowEventsOff(t *testing.T) {
	d := loadTest(t)
	cl := newCluster(t, d)
	cl.cnp("default-deny", seedDefaultDeny)
	ctx := context.Background()
	must(t, d.SetEventRate(ctx, 5))
	must(t, d.SetFlowEvents(ctx, false))
	rd, err := d.NewFlowReader()
	must(t, err)
	defer rd.Close()
	expect(t, d, "denied, events off", dirIngress, tcp(clientIP, serverIP, 47000, 80, tcpSYN), tcxDrop)
	rctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	ev, err := rd.Read(rctx)
	cancel()
	if err == nil {
		t.Fatalf("event %+v with flow events off", ev)
	}
	if lost, err := d.EventsLost(ctx); err != nil || lost != 0 {
		t.Fatalf("lost %d (%v) with flow events off, want 0: off is not a loss", lost, err)
	}
	must(t, d.SetFlowEvents(ctx, true))
	var cfg datapathDpConfig
	must(t, d.objs.FnConfig.Lookup(uint32(0), &cfg))
	if cfg.EventsPerSec != 5 {
		t.Fatalf("events_per_sec %d after switching events on, want the 5 set before", cfg.EventsPerSec)
	}
	expect(t, d, "denied, events on", dirIngress, tcp(clientIP, serverIP, 47001, 80, tcpSYN), tcxDrop)
	rctx, cancel = context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	ev, err = rd.Read(rctx)
	must(t, err)
	if ev.SrcPort != 47001 || ev.Code != DropPolicy {
		t.Fatalf("event %+v, want the drop of port 47001", ev)
	}
}
