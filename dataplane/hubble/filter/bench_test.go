package filter

import (
	"fmt"
	"testing"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// benchFlows makes n flows between pods of a few namespaces, a mix of verdicts, ports and directions like
// a node's flow history, so that filters fail at different fields.
func benchFlows(n int) []*flowpb.Flow {
	namespaces := []string{"seed", "kube-system", "shop", "default"}
	verdicts := []flowpb.Verdict{flowpb.Verdict_FORWARDED, flowpb.Verdict_FORWARDED, flowpb.Verdict_DROPPED}
	ports := []uint32{80, 443, 53, 8080, 5432}
	endpoint := func(i int) *flowpb.Endpoint {
		ns := namespaces[i%len(namespaces)]
		app := fmt.Sprintf("app-%d", i%7)
		return &flowpb.Endpoint{
			Identity: uint32(30000 + i%50), Namespace: ns, PodName: fmt.Sprintf("%s-%d", app, i%13),
			Labels: []string{"k8s:app=" + app, "k8s:io.kubernetes.pod.namespace=" + ns,
				"k8s:io.cilium.k8s.policy.serviceaccount=default", "k8s:io.cilium.k8s.policy.cluster=kind"},
		}
	}
	out := make([]*flowpb.Flow, n)
	for i := range out {
		v := verdicts[i%len(verdicts)]
		f := &flowpb.Flow{
			Verdict: v, Source: endpoint(i), Destination: endpoint(i / 3),
			IP:       ipv4(fmt.Sprintf("10.244.%d.%d", i%4, i%250+1), fmt.Sprintf("10.244.%d.%d", (i/3)%4, (i/3)%250+1)),
			L4:       tcp(uint32(30000+i%30000), ports[i%len(ports)], &flowpb.TCPFlags{SYN: true}),
			NodeName: "kind/kind-worker", EventType: &flowpb.CiliumEventType{Type: 4},
			TrafficDirection: flowpb.TrafficDirection(1 + i%2), IsReply: wrapperspb.Bool(false),
		}
		if v == flowpb.Verdict_DROPPED {
			f.DropReasonDesc = flowpb.DropReason_POLICY_DENIED
			f.EventType = &flowpb.CiliumEventType{Type: 1, SubType: 133}
			f.IsReply = nil
		}
		out[i] = f
	}
	return out
}

// BenchmarkMatch evaluates compiled whitelists over 10,000 flows and reports the cost per flow.
func BenchmarkMatch(b *testing.B) {
	flows := benchFlows(10_000)
	cases := []struct {
		name  string
		allow []*flowpb.FlowFilter
	}{
		// hubble observe --namespace seed --verdict DROPPED, plus a label, port and CIDR filter.
		{"whitelist3", []*flowpb.FlowFilter{
			{SourcePod: []string{"seed/"}, Verdict: []flowpb.Verdict{flowpb.Verdict_DROPPED}},
			{DestinationPod: []string{"seed/"}, Verdict: []flowpb.Verdict{flowpb.Verdict_DROPPED}},
			{DestinationLabel: []string{"k8s:app in (app-1, app-2)"}, DestinationPort: []string{"80"}, SourceIp: []string{"10.244.0.0/16"}},
		}},
		{"labels", []*flowpb.FlowFilter{{SourceLabel: []string{"k8s:app=app-3, io.kubernetes.pod.namespace=shop"}}}},
		{"cel", []*flowpb.FlowFilter{{Experimental: &flowpb.FlowFilter_Experimental{
			CelExpression: []string{`_flow.verdict == Verdict.DROPPED && _flow.destination.namespace == "seed"`}}}}},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			match, err := Compile(c.allow, nil)
			if err != nil {
				b.Fatal(err)
			}
			passed := 0
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				passed = 0
				for _, f := range flows {
					if match(f) {
						passed++
					}
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(len(flows)), "ns/flow")
			b.ReportMetric(float64(passed), "passed")
		})
	}
}

// BenchmarkCompile is the cost of compiling a GetFlows request's filters, paid once per request.
func BenchmarkCompile(b *testing.B) {
	for _, c := range []struct {
		name  string
		allow []*flowpb.FlowFilter
	}{
		{"namespace-verdict", []*flowpb.FlowFilter{
			{SourcePod: []string{"seed/"}, Verdict: []flowpb.Verdict{flowpb.Verdict_DROPPED}},
			{DestinationPod: []string{"seed/"}, Verdict: []flowpb.Verdict{flowpb.Verdict_DROPPED}},
		}},
		{"label-node-cidr", []*flowpb.FlowFilter{{SourceLabel: []string{"k8s:app in (a, b), !reserved:world"},
			NodeName: []string{"kind/kind-worker*"}, DestinationIp: []string{"10.244.0.0/16"}}}},
		{"cel", []*flowpb.FlowFilter{{Experimental: &flowpb.FlowFilter_Experimental{
			CelExpression: []string{`_flow.verdict == Verdict.DROPPED`}}}}},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Compile(c.allow, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
