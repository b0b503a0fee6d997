package flows

import (
	"fmt"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestPolicyDrops: dropped flows count once per deciding policy, forwarded flows
// not at all, and the policy label set is capped.
func TestPolicyDrops(t *testing.T) {
	p := NewPolicyDrops()
	deny := &Policy{Kind: "CiliumNetworkPolicy", Namespace: "default", Name: "default-deny"}
	p.Observe(&Response{Flow: &Flow{Verdict: VerdictDropped, TrafficDirection: Ingress, IngressDeniedBy: []*Policy{deny}}})
	p.Observe(&Response{Flow: &Flow{Verdict: VerdictDropped, TrafficDirection: Ingress, IngressDeniedBy: []*Policy{deny}}})
	p.Observe(&Response{Flow: &Flow{Verdict: VerdictDropped, TrafficDirection: Egress}})
	p.Observe(&Response{Flow: &Flow{Verdict: VerdictForwarded, TrafficDirection: Ingress, IngressAllowedBy: []*Policy{deny}}})
	want := `
# HELP flatnet_policy_drop_events_total Dropped flow events by deciding policy (kind, namespace, name; "none" when no policy is known), from the rate-limited flow events.
# TYPE flatnet_policy_drop_events_total counter
flatnet_policy_drop_events_total{direction="EGRESS",kind="none",namespace="",policy="none"} 1
flatnet_policy_drop_events_total{direction="INGRESS",kind="CiliumNetworkPolicy",namespace="default",policy="default-deny"} 2
`
	if err := testutil.CollectAndCompare(p.Collector(), strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
	for i := range maxPolicyLabels + 50 {
		p.Observe(&Response{Flow: &Flow{Verdict: VerdictDropped, TrafficDirection: Egress,
			EgressDeniedBy: []*Policy{{Kind: "NetworkPolicy", Namespace: "ns", Name: fmt.Sprint("p", i)}}}})
	}
	// 200 named (default-deny among them), "none", and "other".
	if n := testutil.CollectAndCount(p.Collector()); n != maxPolicyLabels+2 {
		t.Errorf("%d series after %d policies, want the label set capped at %d+2", n, maxPolicyLabels+51, maxPolicyLabels)
	}
	other := p.vec.WithLabelValues(Egress, "other", "", "other")
	if v := testutil.ToFloat64(other); v != 51 {
		t.Errorf("other = %v, want 51", v)
	}
	var _ prometheus.Collector = p.Collector()
}
