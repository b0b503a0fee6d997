package metrics

import (
	"context"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/flatnet/flatnet/dataplane/bpf"
	"github.com/flatnet/flatnet/dataplane/identity"
	"github.com/flatnet/flatnet/dataplane/policy"
)

type fakeDatapath struct {
	counters []bpf.Counter
	fill     []bpf.MapFill
}

func (f fakeDatapath) Counters(context.Context) ([]bpf.Counter, error) { return f.counters, nil }
func (f fakeDatapath) EventsLost(context.Context) (uint64, error)      { return 7, nil }
func (f fakeDatapath) Identities(context.Context) (map[identity.Sum]identity.ID, error) {
	return map[identity.Sum]identity.ID{{1}: 256, {2}: 257}, nil
}
func (f fakeDatapath) MapFill(context.Context) ([]bpf.MapFill, error) { return f.fill, nil }

type fakePods map[int]string

func (p fakePods) LocalPods() map[int]string { return p }

// TestCollectorPerPodAndMapFill: per-pod counters sum every reason of an endpoint,
// an endpoint no pod owns stays in the totals only, and map fill is exported.
func TestCollectorPerPodAndMapFill(t *testing.T) {
	dp := fakeDatapath{
		counters: []bpf.Counter{
			{IfIndex: 5, Direction: policy.Ingress, Code: bpf.DropPolicy, Packets: 3, Bytes: 180},
			{IfIndex: 5, Direction: policy.Ingress, Code: bpf.DropPolicyDeny, Packets: 1, Bytes: 60},
			{IfIndex: 5, Direction: policy.Egress, Code: bpf.ForwardPolicy, Packets: 10, Bytes: 1000},
			{IfIndex: 9, Direction: policy.Ingress, Code: bpf.DropPolicy, Packets: 2, Bytes: 120},
		},
		fill: []bpf.MapFill{{Map: "endpoints", Entries: 2, Capacity: 4096}, {Map: "ct", Entries: 40, Capacity: 262144}},
	}
	c := NewCollector(dp).WithPods(fakePods{5: "default/server"})
	want := `
# HELP flatnet_endpoint_packets_total Packets judged by the policy datapath per local pod, by direction and verdict.
# TYPE flatnet_endpoint_packets_total counter
flatnet_endpoint_packets_total{direction="EGRESS",namespace="default",pod="server",verdict="FORWARDED"} 10
flatnet_endpoint_packets_total{direction="INGRESS",namespace="default",pod="server",verdict="DROPPED"} 4
# HELP flatnet_bpf_map_entries Entries in a datapath map (policy: endpoints with a policy map).
# TYPE flatnet_bpf_map_entries gauge
flatnet_bpf_map_entries{map="ct"} 40
flatnet_bpf_map_entries{map="endpoints"} 2
# HELP flatnet_bpf_map_capacity max_entries of a datapath map.
# TYPE flatnet_bpf_map_capacity gauge
flatnet_bpf_map_capacity{map="ct"} 262144
flatnet_bpf_map_capacity{map="endpoints"} 4096
# HELP flatnet_datapath_packets_total Packets judged by the policy datapath on this node's pod interfaces, by verdict and reason.
# TYPE flatnet_datapath_packets_total counter
flatnet_datapath_packets_total{direction="EGRESS",reason="POLICY_ALLOWED",verdict="FORWARDED"} 10
flatnet_datapath_packets_total{direction="INGRESS",reason="POLICY_DENIED",verdict="DROPPED"} 5
flatnet_datapath_packets_total{direction="INGRESS",reason="POLICY_DENY",verdict="DROPPED"} 1
# HELP flatnet_identities Security identities stored in this node's datapath.
# TYPE flatnet_identities gauge
flatnet_identities 2
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "flatnet_endpoint_packets_total", "flatnet_bpf_map_entries",
		"flatnet_bpf_map_capacity", "flatnet_datapath_packets_total", "flatnet_identities"); err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(c, "flatnet_endpoint_bytes_total"); n != 2 {
		t.Errorf("flatnet_endpoint_bytes_total has %d series, want 2", n)
	}
	// Without a PodNamer or MapFiller those series are absent, and the collector is
	// still valid (its descriptions are a superset).
	if err := testutil.CollectAndCompare(NewCollector(struct{ CounterSource }{dp}), strings.NewReader(""),
		"flatnet_endpoint_packets_total", "flatnet_bpf_map_entries"); err != nil {
		t.Fatal(err)
	}
	if _, err := testutil.CollectAndLint(c); err != nil {
		t.Fatal(err)
	}
}
