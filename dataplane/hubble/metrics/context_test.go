package metrics

import (
	"strings"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// newRegistered makes the metrics of spec on a registry of their own.
func newRegistered(t *testing.T, spec string, cfg Config) (*Metrics, *prometheus.Registry) {
	t.Helper()
	specs, err := ParseSpecs(spec)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Specs = specs
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(m.Collectors()...)
	return m, reg
}

func compare(t *testing.T, reg *prometheus.Registry, want string, names ...string) {
	t.Helper()
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}
}

// A flow between two pods with everything Hubble's contexts read: workloads and
// DNS names, which flatnet's flows do not carry yet, are in Hubble's flows.
func richFlow() *flowpb.Flow {
	return &flowpb.Flow{
		Verdict:   flowpb.Verdict_FORWARDED,
		EventType: &flowpb.CiliumEventType{Type: 4},
		IP:        &flowpb.IP{Source: "10.224.0.41", Destination: "10.224.0.40", IpVersion: flowpb.IPVersion_IPv4},
		L4: &flowpb.Layer4{Protocol: &flowpb.Layer4_TCP{TCP: &flowpb.TCP{SourcePort: 40000, DestinationPort: 80,
			Flags: &flowpb.TCPFlags{SYN: true}}}},
		Source: &flowpb.Endpoint{Identity: 30000, Namespace: "shop", PodName: "client-7d4b9-x2x",
			Labels:    []string{"k8s:app.kubernetes.io/name=client", "k8s:io.kubernetes.pod.namespace=shop"},
			Workloads: []*flowpb.Workload{{Name: "client", Kind: "Deployment"}}},
		Destination: &flowpb.Endpoint{Identity: 30001, Namespace: "shop", PodName: "server-0",
			Labels:    []string{"k8s:app=server", "k8s:io.kubernetes.pod.namespace=shop"},
			Workloads: []*flowpb.Workload{{Name: "server", Kind: "StatefulSet"}}},
		DestinationNames: []string{"server.shop.svc.cluster.local"},
		TrafficDirection: flowpb.TrafficDirection_INGRESS,
		IsReply:          wrapperspb.Bool(false),
	}
}

// Each context identifier gives the value Hubble's documentation describes.
func TestContextIdentifiers(t *testing.T) {
	for ctx, want := range map[string][2]string{
		"namespace":         {"shop", "shop"},
		"pod":               {"shop/client-7d4b9-x2x", "shop/server-0"},
		"pod-name":          {"client-7d4b9-x2x", "server-0"},
		"ip":                {"10.224.0.41", "10.224.0.40"},
		"workload":          {"shop/client", "shop/server"},
		"workload-name":     {"client", "server"},
		"app":               {"client", "server"},
		"identity":          {"k8s:app.kubernetes.io/name=client,k8s:io.kubernetes.pod.namespace=shop", "k8s:app=server,k8s:io.kubernetes.pod.namespace=shop"},
		"dns":               {"", "server.shop.svc.cluster.local"},
		"reserved-identity": {"", ""},
		// The first non-empty value wins.
		"dns|ip":                      {"10.224.0.41", "server.shop.svc.cluster.local"},
		"reserved-identity|namespace": {"shop", "shop"},
	} {
		m, reg := newRegistered(t, "tcp:sourceContext="+ctx+";destinationContext="+ctx, Config{})
		m.process(richFlow(), nil)
		compare(t, reg, `# HELP hubble_tcp_flags_total TCP flag occurrences
# TYPE hubble_tcp_flags_total counter
hubble_tcp_flags_total{destination="`+want[1]+`",family="IPv4",flag="SYN",source="`+want[0]+`"} 1
`, "hubble_tcp_flags_total")
	}
}

// reserved-identity prefers reserved:kube-apiserver to the other reserved labels
// (Hubble's note on the three cases).
func TestReservedIdentity(t *testing.T) {
	m, reg := newRegistered(t, "flow:destinationContext=reserved-identity", Config{})
	f := richFlow()
	f.Destination = &flowpb.Endpoint{Identity: 7, Labels: []string{"reserved:host", "reserved:kube-apiserver"}}
	m.process(f, nil)
	f = richFlow()
	f.Destination = &flowpb.Endpoint{Identity: 2, Labels: []string{"reserved:world"}}
	m.process(f, nil)
	compare(t, reg, `# HELP hubble_flows_processed_total Total number of flows processed
# TYPE hubble_flows_processed_total counter
hubble_flows_processed_total{destination="reserved:kube-apiserver",protocol="TCP",subtype="to-endpoint",type="Trace",verdict="FORWARDED"} 1
hubble_flows_processed_total{destination="reserved:world",protocol="TCP",subtype="to-endpoint",type="Trace",verdict="FORWARDED"} 1
`, "hubble_flows_processed_total")
}

// The egress and ingress contexts replace sourceContext/destinationContext for
// flows of their direction; labelsContext adds its labels whatever order it lists
// them in, every one even when empty.
func TestDirectionalAndLabelsContexts(t *testing.T) {
	m, reg := newRegistered(t, "drop:sourceContext=namespace;sourceIngressContext=pod;labelsContext=traffic_direction,destination_workload_kind,source_ip", Config{})
	in := richFlow()
	in.Verdict, in.DropReasonDesc, in.EventType = flowpb.Verdict_DROPPED, flowpb.DropReason_POLICY_DENIED, &flowpb.CiliumEventType{Type: 1, SubType: 133}
	m.process(in, nil)
	out := richFlow()
	out.Verdict, out.DropReasonDesc, out.EventType = flowpb.Verdict_DROPPED, flowpb.DropReason_POLICY_DENY, &flowpb.CiliumEventType{Type: 1, SubType: 181}
	out.TrafficDirection = flowpb.TrafficDirection_EGRESS
	out.Destination.Workloads = nil
	m.process(out, nil)
	compare(t, reg, `# HELP hubble_drop_total Number of drops
# TYPE hubble_drop_total counter
hubble_drop_total{destination_workload_kind="StatefulSet",protocol="TCP",reason="POLICY_DENIED",source="shop/client-7d4b9-x2x",source_ip="10.224.0.41",traffic_direction="ingress"} 1
hubble_drop_total{destination_workload_kind="",protocol="TCP",reason="POLICY_DENY",source="shop",source_ip="10.224.0.41",traffic_direction="egress"} 1
`, "hubble_drop_total")
}

// Series naming a deleted pod go after the grace period, those of other pods and
// of contexts that do not name pods stay, as Hubble's documentation says.
func TestPodDeletionRemovesItsSeries(t *testing.T) {
	const grace = 50 * time.Millisecond
	m, reg := newRegistered(t, "flow:sourceContext=pod;destinationContext=pod tcp:labelsContext=destination_namespace,destination_pod drop:sourceContext=pod-name", Config{PodDeleteGrace: grace})
	f := richFlow()
	m.process(f, nil)
	f.Verdict, f.DropReasonDesc, f.EventType = flowpb.Verdict_DROPPED, flowpb.DropReason_POLICY_DENIED, &flowpb.CiliumEventType{Type: 1}
	m.process(f, nil)
	other := richFlow()
	other.Source.PodName = "client-other"
	m.process(other, nil)

	m.PodDeleted("shop", "client-7d4b9-x2x")
	time.Sleep(grace / 5)
	if n := testutil.CollectAndCount(reg, "hubble_flows_processed_total"); n != 3 {
		t.Fatalf("%d flow series before the grace period ended, want 3 (nothing removed yet)", n)
	}
	deadline := time.Now().Add(5 * time.Second)
	for testutil.CollectAndCount(reg, "hubble_flows_processed_total") != 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	compare(t, reg, `# HELP hubble_flows_processed_total Total number of flows processed
# TYPE hubble_flows_processed_total counter
hubble_flows_processed_total{destination="shop/server-0",protocol="TCP",source="shop/client-other",subtype="to-endpoint",type="Trace",verdict="FORWARDED"} 1
# HELP hubble_drop_total Number of drops
# TYPE hubble_drop_total counter
hubble_drop_total{protocol="TCP",reason="POLICY_DENIED",source="client-7d4b9-x2x"} 1
`, "hubble_flows_processed_total", "hubble_drop_total")

	// The destination's side: the tcp series of server-0 (both flows) go.
	m.PodDeleted("shop", "server-0")
	deadline = time.Now().Add(5 * time.Second)
	for testutil.CollectAndCount(reg, "hubble_tcp_flags_total") != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := testutil.CollectAndCount(reg, "hubble_tcp_flags_total", "hubble_flows_processed_total"); n != 0 {
		t.Errorf("%d series of the deleted server-0 left", n)
	}
}
