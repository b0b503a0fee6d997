package flows_test

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/flatnet/flatnet/dataplane/agent"
	"github.com/flatnet/flatnet/dataplane/enforce"
	"github.com/flatnet/flatnet/dataplane/flows"
	"github.com/flatnet/flatnet/dataplane/metrics"
	"github.com/flatnet/flatnet/dataplane/podnet/podnettest"
)

const seedDefaultDeny = `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: default-deny, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - {}
  egress:
  - {}
`

var must, dump = flows.Must, flows.Dump

// TestDeniedSYNIsOneDroppedFlowNamingThePolicy runs the seed scenario on a netns
// "node" through the real enforcer and datapath: a client's SYN to a server under
// the seed's default-deny CNP must become exactly one DROPPED flow, enriched with
// both pods and naming default-deny in ingress_denied_by.
func TestDeniedSYNIsOneDroppedFlowNamingThePolicy(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pn := newPolicyNode(ctx, t, seedDefaultDeny)
	enf, clientNS, serverIP, clientIP := pn.enf, pn.clientNS, pn.serverIP, pn.clientIP

	rd, err := enf.Datapath().NewFlowReader()
	must(t, err)
	t.Cleanup(func() { rd.Close() })
	en, err := flows.NewEnricher("self", enf.Snapshots())
	must(t, err)
	store := flows.NewStore(100)
	runCtx, stopRun := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- flows.Run(runCtx, rd, en, store) }()

	// 700 ms is below the kernel's first SYN retransmission (1 s), so normally one SYN
	// leaves; on a loaded machine the socket may close late and a retransmission
	// leave too. The client netns' own TCP counter says how many did.
	var dialErr error
	var synsSent int
	must(t, clientNS.Do(func(ns.NetNS) error {
		before, err := podnettest.TCPCounter("OutSegs")
		if err != nil {
			return err
		}
		c, err := net.DialTimeout("tcp", netip.AddrPortFrom(serverIP, 80).String(), 700*time.Millisecond)
		if err == nil {
			c.Close()
		}
		dialErr = err
		after, err := podnettest.TCPCounter("OutSegs")
		synsSent = after - before
		return err
	}))
	if dialErr == nil {
		t.Fatal("client connected to server:80 under default-deny")
	}
	t.Logf("the client sent %d SYN(s)", synsSent)
	if synsSent < 1 {
		t.Fatalf("the client sent %d TCP segments", synsSent)
	}
	// Let the reader drain the ring: wait for the drops, then a little more for extras.
	// Only TCP: the pods' own IPv6 chatter (DAD, router solicitations) is dropped too.
	tcpDrops := flows.Filter{Verdict: flows.VerdictDropped, Protocol: "TCP"}
	for deadline := time.Now().Add(5 * time.Second); len(store.Recent(tcpDrops, 0)) < synsSent && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	stopRun()
	must(t, <-done)

	dropped := store.Recent(tcpDrops, 0)
	if len(dropped) != synsSent {
		t.Fatalf("%d DROPPED flows, want exactly one per denied SYN (%d sent): %s", len(dropped), synsSent, dump(dropped))
	}
	if dropped[0].Flow.L4.TCP.SourcePort != dropped[len(dropped)-1].Flow.L4.TCP.SourcePort {
		t.Fatalf("drops of different connections: %s", dump(dropped))
	}
	f := dropped[0].Flow
	switch {
	case f.TrafficDirection != flows.Ingress || f.DropReasonDesc != "POLICY_DENIED" || f.NodeName != "self":
		t.Errorf("flow %s: want an INGRESS POLICY_DENIED drop on node self", dump(dropped))
	case f.Source == nil || f.Source.PodName != "client" || f.Destination == nil || f.Destination.PodName != "server":
		t.Errorf("flow %s: want source pod client, destination pod server", dump(dropped))
	case f.L4 == nil || f.L4.TCP == nil || f.L4.TCP.DestinationPort != 80 || f.L4.TCP.Flags == nil || !f.L4.TCP.Flags.SYN || f.L4.TCP.Flags.ACK:
		t.Errorf("flow %s: want a TCP SYN to port 80", dump(dropped))
	case len(f.IngressDeniedBy) != 1 || f.IngressDeniedBy[0].Name != "default-deny" ||
		f.IngressDeniedBy[0].Namespace != "default" || f.IngressDeniedBy[0].Kind != "CiliumNetworkPolicy":
		t.Errorf("flow %s: want ingress_denied_by = [CiliumNetworkPolicy default/default-deny]", dump(dropped))
	}
	if !slices.Contains(f.Destination.Labels, "k8s:app=server") || !slices.Contains(f.Source.Labels, "k8s:app=client") {
		t.Errorf("labels %v / %v: want k8s:app=client / k8s:app=server", f.Source.Labels, f.Destination.Labels)
	}
	if d := time.Since(f.Time); d < 0 || d > 10*time.Second {
		t.Errorf("flow time %v is %v from now: monotonic stamps are not converted to wall time", f.Time, d)
	}
	checkMetrics(t, enf, synsSent)
	checkExplain(t, enf, clientIP)
	// The client is not selected: its egress SYN was forwarded, with no policy named.
	fwd := store.Recent(flows.Filter{Verdict: flows.VerdictForwarded, Pod: "default/client"}, 0)
	if len(fwd) == 0 || fwd[0].Flow.TrafficDirection != flows.Egress || len(fwd[0].Flow.EgressAllowedBy) != 0 {
		t.Errorf("forwarded flows %s: want the client's egress SYN, allowed by no policy", dump(fwd))
	}
}

// checkMetrics scrapes the collector over the real datapath maps: the one denied SYN
// are dropped ingress packets with the default-deny reason.
func checkMetrics(t *testing.T, enf *enforce.Enforcer, syns int) {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(metrics.NewCollector(enf.Datapath()))
	mfs, err := reg.Gather()
	must(t, err)
	var dropped, ids float64 = -1, -1
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			l := map[string]string{}
			for _, lp := range m.GetLabel() {
				l[lp.GetName()] = lp.GetValue()
			}
			switch {
			case mf.GetName() == "flatnet_datapath_packets_total" && l["direction"] == flows.Ingress && l["verdict"] == flows.VerdictDropped && l["reason"] == "POLICY_DENIED":
				dropped = m.GetCounter().GetValue()
			case mf.GetName() == "flatnet_identities":
				ids = m.GetGauge().GetValue()
			case mf.GetName() == "flatnet_datapath_scrape_errors" && m.GetGauge().GetValue() != 0:
				t.Errorf("scrape error reading %s", l["map"])
			}
		}
	}
	if dropped != float64(syns) {
		t.Errorf("flatnet_datapath_packets_total{INGRESS,DROPPED,POLICY_DENIED} = %v, want %d (the SYNs sent)", dropped, syns)
	}
	if ids < 2 {
		t.Errorf("flatnet_identities = %v, want at least the client's and the server's", ids)
	}
}

// checkExplain asks /v1/explain what the enforcer would decide for the same SYN.
func checkExplain(t *testing.T, enf *enforce.Enforcer, client netip.Addr) {
	t.Helper()
	srv := httptest.NewServer(agent.ExplainHandler(enf, "self"))
	defer srv.Close()
	get := func(q string) (int, string) {
		resp, err := http.Get(srv.URL + agent.ExplainPath + "?" + q)
		must(t, err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	code, body := get("namespace=default&pod=server&direction=INGRESS&protocol=TCP&port=80&remote=" + client.String())
	var e agent.Explanation
	if code != http.StatusOK || json.Unmarshal([]byte(body), &e) != nil {
		t.Fatalf("explain: %d %s", code, body)
	}
	if e.Verdict != flows.VerdictDropped || len(e.Policies) != 1 || e.Policies[0].Name != "default-deny" {
		t.Errorf("explain %s: want DROPPED by default-deny", body)
	}
	// The maps read back: the same verdict, from the endpoint's real policy map.
	if dp := e.Datapath; dp == nil || dp.Error != "" || dp.Verdict != flows.VerdictDropped || !dp.Enforced || !e.Agrees || dp.RemoteIdentity < 256 {
		t.Errorf("explain %s: want the datapath's maps to say DROPPED (enforced, the client's identity) and agree", body)
	}
	if code, body := get("namespace=default&pod=ghost&direction=INGRESS&port=80&remote=" + client.String()); code != http.StatusNotFound || !strings.Contains(body, "default/ghost") {
		t.Errorf("explain of an unknown pod: %d %q, want 404 naming default/ghost", code, body)
	}
	if code, body := get("namespace=default&pod=server&direction=sideways&port=80&remote=" + client.String()); code != http.StatusBadRequest || !strings.HasPrefix(body, "direction") {
		t.Errorf("explain with a bad direction: %d %q, want 400 naming direction", code, body)
	}
}
