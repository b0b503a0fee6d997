package agent

import (
	"net/http"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/flatnet/flatnet/dataplane/enforce"
	"github.com/flatnet/flatnet/dataplane/flows"
)

// TestHubbleMetricsServed: the Hubble metrics counted from flows are served by the
// agent's own /metrics, beside its flatnet_ families, with the labels the
// --hubble-metrics value asks for.
func TestHubbleMetricsServed(t *testing.T) {
	addr := freeAddr(t)
	a := apiTestAgent(t, Config{HTTPAddr: addr, APIAddr: freeAddr(t)})
	hm := hubbleMetrics(t, "flow:sourceContext=namespace;destinationContext=namespace drop tcp policy")
	registerPolicyMetrics(a.Metrics(), noDatapath{}, noPods{}, enforce.NewMetrics(), flows.NewPolicyDrops(), hm)

	// A client's SYN to a server that default deny drops, as the enricher names it.
	at := time.Now()
	hm.Observe(&flows.Response{NodeName: "node-a", Time: at, Flow: &flows.Flow{
		Time: at, Verdict: flows.VerdictDropped, DropReason: 133, DropReasonDesc: "POLICY_DENIED",
		IP:          &flows.IP{Source: "10.224.0.41", Destination: "10.224.0.40", IPVersion: "IPv4"},
		L4:          &flows.Layer4{TCP: &flows.TCP{SourcePort: 41000, DestinationPort: 80, Flags: &flows.TCPFlags{SYN: true}}},
		Source:      &flows.Endpoint{Identity: 30001, Namespace: "shop", PodName: "client", Labels: []string{"k8s:app=client"}},
		Destination: &flows.Endpoint{Identity: 30002, Namespace: "shop", PodName: "server", Labels: []string{"k8s:app=server"}},
		Type:        "L3_L4", NodeName: "node-a", EventType: flows.EventType{Type: 1, SubType: 133},
		TrafficDirection: flows.Ingress, Reason: "policy denied (default deny)",
		IngressDeniedBy: []*flows.Policy{{Name: "default-deny", Namespace: "shop", Kind: "CiliumNetworkPolicy"}},
	}})

	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("GET /metrics: not Prometheus text: %v", err)
	}
	for _, c := range []struct {
		family string
		labels map[string]string
		value  float64
	}{
		{"hubble_flows_processed_total", map[string]string{"protocol": "TCP", "type": "Drop", "subtype": "", "verdict": "DROPPED", "source": "shop", "destination": "shop"}, 1},
		{"hubble_drop_total", map[string]string{"reason": "POLICY_DENIED", "protocol": "TCP"}, 1},
		{"hubble_policy_verdicts_total", map[string]string{"direction": "ingress", "match": "none", "action": "dropped"}, 1},
		{"hubble_lost_events_total", map[string]string{"source": "perf_event_ring_buffer"}, 0},
		{"flatnet_endpoints", nil, -1}, // the agent's own, beside them
	} {
		fam := fams[c.family]
		if fam == nil {
			t.Errorf("/metrics has no %s", c.family)
			continue
		}
		if c.value < 0 {
			continue
		}
		if m := find(fam, c.labels); m == nil {
			t.Errorf("%s: no series %v in %v", c.family, c.labels, fam.GetMetric())
		} else if v := m.GetCounter().GetValue(); v != c.value {
			t.Errorf("%s%v = %v, want %v", c.family, c.labels, v, c.value)
		}
	}
	// tcp counts forwarded flows only: registered, but no series yet.
	if fam := fams["hubble_tcp_flags_total"]; fam != nil {
		t.Errorf("hubble_tcp_flags_total has series after a dropped SYN only: %v", fam.GetMetric())
	}
	if !strings.HasPrefix(fams["hubble_drop_total"].GetHelp(), "Number of drops") {
		t.Errorf("hubble_drop_total help %q, want Hubble's", fams["hubble_drop_total"].GetHelp())
	}
}

// find is the series of fam with exactly labels.
func find(fam *dto.MetricFamily, labels map[string]string) *dto.Metric {
	for _, m := range fam.GetMetric() {
		if len(m.GetLabel()) != len(labels) {
			continue
		}
		ok := true
		for _, l := range m.GetLabel() {
			if v, has := labels[l.GetName()]; !has || v != l.GetValue() {
				ok = false
			}
		}
		if ok {
			return m
		}
	}
	return nil
}
