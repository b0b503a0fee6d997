package filter

import (
	"net/netip"
	"testing"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flatnet/flatnet/dataplane/bpf"
	"github.com/flatnet/flatnet/dataplane/compile"
	"github.com/flatnet/flatnet/dataplane/flows"
	"github.com/flatnet/flatnet/dataplane/flows/flowstest"
	"github.com/flatnet/flatnet/dataplane/identity"
	"github.com/flatnet/flatnet/dataplane/policy"
)

// The filters work on what flatnet actually serves: flows recorded by package flows, as the enricher
// names them (labels rendered by flows.LabelStrings, reserved identities by identity.ID), converted by
// (*flows.Response).Proto. The filters are those hubble observe sends in the suite.
func TestFlatnetFlows(t *testing.T) {
	server := &flows.Endpoint{Identity: 30002, ClusterName: "default", Namespace: "seed", PodName: "server-5c8d",
		Labels: flows.LabelStrings(map[string]string{"app": "server", "io.kubernetes.pod.namespace": "seed"})}
	client := &flows.Endpoint{Identity: 30001, ClusterName: "default", Namespace: "seed", PodName: "client-7d9f",
		Labels: flows.LabelStrings(map[string]string{"app": "client", "io.kubernetes.pod.namespace": "seed"})}
	world := &flows.Endpoint{Identity: uint32(identity.World), Labels: []string{identity.World.String()}}
	syn := func(src, dst uint16) *flows.Layer4 {
		return &flows.Layer4{TCP: &flows.TCP{SourcePort: src, DestinationPort: dst, Flags: &flows.TCPFlags{SYN: true}}}
	}
	recorded := map[string]*flows.Flow{
		"denied": {Verdict: flows.VerdictDropped, DropReason: 133, DropReasonDesc: "POLICY_DENIED",
			IP: &flows.IP{Source: "10.244.1.5", Destination: "10.244.2.7"}, L4: syn(40000, 80),
			Source: client, Destination: server, NodeName: "kind-worker2", EventType: flows.EventType{Type: 1, SubType: 133},
			TrafficDirection: flows.Ingress, IngressDeniedBy: []*flows.Policy{{Name: "default-deny", Namespace: "seed", Kind: "CiliumNetworkPolicy"}}},
		"forwarded": {Verdict: flows.VerdictForwarded,
			IP: &flows.IP{Source: "10.244.1.5", Destination: "10.244.2.7"}, L4: syn(40001, 80),
			Source: client, Destination: server, NodeName: "kind-worker2", EventType: flows.EventType{Type: 4},
			TrafficDirection: flows.Ingress},
		"toWorld": {Verdict: flows.VerdictForwarded,
			IP: &flows.IP{Source: "10.244.1.5", Destination: "203.0.113.9"}, L4: syn(40002, 443),
			Source: client, Destination: world, NodeName: "kind-worker", EventType: flows.EventType{Type: 4},
			TrafficDirection: flows.Egress},
	}
	for _, tc := range []struct {
		name        string
		allow, deny []*flowpb.FlowFilter
		pass        []string
	}{
		{"--namespace seed --verdict DROPPED", []*flowpb.FlowFilter{
			{SourcePod: []string{"seed/"}, Verdict: []flowpb.Verdict{flowpb.Verdict_DROPPED}},
			{DestinationPod: []string{"seed/"}, Verdict: []flowpb.Verdict{flowpb.Verdict_DROPPED}}}, nil, []string{"denied"}},
		{"--from-pod seed/client --to-port 80", []*flowpb.FlowFilter{{SourcePod: []string{"seed/client"}, DestinationPort: []string{"80"}}}, nil,
			[]string{"denied", "forwarded"}},
		{"--to-label reserved:world", []*flowpb.FlowFilter{{DestinationLabel: []string{"reserved:world"}}}, nil, []string{"toWorld"}},
		{"--label app=server --drop-reason-desc POLICY_DENIED", []*flowpb.FlowFilter{
			{SourceLabel: []string{"app=server"}, DropReasonDesc: []flowpb.DropReason{flowpb.DropReason_POLICY_DENIED}},
			{DestinationLabel: []string{"app=server"}, DropReasonDesc: []flowpb.DropReason{flowpb.DropReason_POLICY_DENIED}}}, nil,
			[]string{"denied"}},
		{"--node-name kind-worker2 --tcp-flags SYN --not --traffic-direction egress",
			[]*flowpb.FlowFilter{{NodeName: []string{"kind-worker2"}, TcpFlags: []*flowpb.TCPFlags{{SYN: true}}}},
			[]*flowpb.FlowFilter{{TrafficDirection: []flowpb.TrafficDirection{flowpb.TrafficDirection_EGRESS}}}, []string{"denied", "forwarded"}},
		{"--type trace --reply false --ipv4", []*flowpb.FlowFilter{{EventType: []*flowpb.EventTypeFilter{{Type: 4}}, Reply: []bool{false},
			IpVersion: []flowpb.IPVersion{flowpb.IPVersion_IPv4}}}, nil, []string{"forwarded", "toWorld"}},
		{"--to-identity world (2)", []*flowpb.FlowFilter{{DestinationIdentity: []uint32{2}}}, nil, []string{"toWorld"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			match, err := Compile(tc.allow, tc.deny)
			if err != nil {
				t.Fatal(err)
			}
			want := map[string]bool{}
			for _, n := range tc.pass {
				want[n] = true
			}
			for name, f := range recorded {
				r := &flows.Response{Flow: f, NodeName: f.NodeName}
				if got := match(r.Proto()); got != want[name] {
					t.Errorf("flow %s: passes = %v, want %v", name, got, want[name])
				}
			}
		})
	}
}

// TestFlatnetWorkloads: a pod created by a Deployment, fed to the compiler as the informer delivers it
// (owned by the ReplicaSet "web-5d8f7c9b6"), is named in its flows by the Deployment, so that
// `hubble observe --from-workload web` (source_workload {name: web}) finds them, as do the kind alone and the
// pair; the ReplicaSet's name does not, as in Hubble, and the destination is no such workload.
func TestFlatnetWorkloads(t *testing.T) {
	c := compile.New(identity.NewAllocator())
	web := flowstest.DeploymentPod("seed", netip.MustParseAddr("10.244.1.5"))
	server := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "seed", Name: "server", Labels: map[string]string{"app": "server"}},
		Status: corev1.PodStatus{PodIP: "10.244.2.7"}}
	for _, p := range []*corev1.Pod{web, server} {
		if err := c.UpsertPod(compile.PodFromCore(p, p == server)); err != nil {
			t.Fatal(err)
		}
	}
	c.Flush()
	en, err := flows.NewEnricher("kind-worker", c.Latest())
	if err != nil {
		t.Fatal(err)
	}
	f := en.Flow(bpf.FlowEvent{Src: netip.MustParseAddr("10.244.1.5"), Dst: netip.MustParseAddr("10.244.2.7"),
		SrcPort: 40000, DstPort: 80, Protocol: 6, TCPFlags: 0x02, Direction: policy.Ingress, Code: bpf.ForwardPolicy})
	flow := (&flows.Response{Flow: f, NodeName: f.NodeName, Time: f.Time}).Proto()
	for _, tc := range []struct {
		name string
		ff   *flowpb.FlowFilter
		want bool
	}{
		{"--from-workload web", &flowpb.FlowFilter{SourceWorkload: []*flowpb.Workload{{Name: "web"}}}, true},
		{"source_workload kind Deployment", &flowpb.FlowFilter{SourceWorkload: []*flowpb.Workload{{Kind: "Deployment"}}}, true},
		{"source_workload Deployment/web", &flowpb.FlowFilter{SourceWorkload: []*flowpb.Workload{{Name: "web", Kind: "Deployment"}}}, true},
		{"--from-workload web-5d8f7c9b6 (the ReplicaSet)", &flowpb.FlowFilter{SourceWorkload: []*flowpb.Workload{{Name: "web-5d8f7c9b6"}}}, false},
		{"source_workload ReplicaSet/web", &flowpb.FlowFilter{SourceWorkload: []*flowpb.Workload{{Name: "web", Kind: "ReplicaSet"}}}, false},
		{"--to-workload web", &flowpb.FlowFilter{DestinationWorkload: []*flowpb.Workload{{Name: "web"}}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			match, err := Compile([]*flowpb.FlowFilter{tc.ff}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if got := match(flow); got != tc.want {
				t.Errorf("passes = %v, want %v (source workloads %v)", got, tc.want, flow.GetSource().GetWorkloads())
			}
		})
	}
}
