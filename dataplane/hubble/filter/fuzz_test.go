package filter

import (
	"errors"
	"strings"
	"testing"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"google.golang.org/protobuf/proto"
)

// fuzzStringFields are the string fields the fuzzer writes its value into, beside what the wire bytes set.
var fuzzStringFields = []func(ff *flowpb.FlowFilter, v string){
	func(ff *flowpb.FlowFilter, v string) { ff.SourceIp = append(ff.SourceIp, v) },
	func(ff *flowpb.FlowFilter, v string) { ff.DestinationPod = append(ff.DestinationPod, v) },
	func(ff *flowpb.FlowFilter, v string) { ff.SourceLabel = append(ff.SourceLabel, v) },
	func(ff *flowpb.FlowFilter, v string) { ff.NodeLabels = append(ff.NodeLabels, v) },
	func(ff *flowpb.FlowFilter, v string) { ff.DestinationPort = append(ff.DestinationPort, v) },
	func(ff *flowpb.FlowFilter, v string) { ff.NodeName = append(ff.NodeName, v) },
	func(ff *flowpb.FlowFilter, v string) { ff.DestinationFqdn = append(ff.DestinationFqdn, v) },
	func(ff *flowpb.FlowFilter, v string) { ff.DnsQuery = append(ff.DnsQuery, v) },
	func(ff *flowpb.FlowFilter, v string) { ff.Protocol = append(ff.Protocol, v) },
	func(ff *flowpb.FlowFilter, v string) { ff.HttpStatusCode = append(ff.HttpStatusCode, v) },
	func(ff *flowpb.FlowFilter, v string) { ff.HttpPath = append(ff.HttpPath, v) },
	func(ff *flowpb.FlowFilter, v string) {
		ff.Experimental = &flowpb.FlowFilter_Experimental{CelExpression: []string{v}}
	},
}

// FuzzCompile feeds Compile a FlowFilter decoded from wire bytes plus one fuzzed string in a field that
// parses text. Compile must not panic, must fail only with a *Error inside the filter's path, and a filter
// that compiles must select, as a whitelist, exactly the sample flows it removes as a blacklist.
func FuzzCompile(f *testing.F) {
	seeds := []struct {
		field int
		value string
		ff    *flowpb.FlowFilter
	}{
		{0, "10.0.0.0/8", &flowpb.FlowFilter{Verdict: []flowpb.Verdict{flowpb.Verdict_DROPPED}}},
		{1, "seed/server", &flowpb.FlowFilter{DestinationPort: []string{"80"}}},
		{2, "k8s:app in (a, b), !reserved:world", &flowpb.FlowFilter{EventType: []*flowpb.EventTypeFilter{{Type: 4, SubType: 3, MatchSubType: true}}}},
		{3, "kubernetes.io/hostname=kind-worker", &flowpb.FlowFilter{TcpFlags: []*flowpb.TCPFlags{{SYN: true}}}},
		{4, "65535", &flowpb.FlowFilter{Reply: []bool{false}}},
		{5, "kind/kind-worker*", &flowpb.FlowFilter{IpVersion: []flowpb.IPVersion{flowpb.IPVersion_IPv6}}},
		{6, "*.example.com.", &flowpb.FlowFilter{SourceWorkload: []*flowpb.Workload{{Kind: "Deployment"}}}},
		{7, `kube.*local`, &flowpb.FlowFilter{Interface: []*flowpb.NetworkInterface{{Index: 7}}}},
		{8, "TCP", &flowpb.FlowFilter{SourceIdentity: []uint32{1, 2}}},
		{9, "4+", &flowpb.FlowFilter{EventType: []*flowpb.EventTypeFilter{{Type: 129}}}},
		{10, "^/api", &flowpb.FlowFilter{TrafficDirection: []flowpb.TrafficDirection{flowpb.TrafficDirection_EGRESS}}},
		{11, "_flow.verdict == Verdict.DROPPED", &flowpb.FlowFilter{DropReasonDesc: []flowpb.DropReason{flowpb.DropReason_POLICY_DENIED}}},
	}
	for _, s := range seeds {
		wire, err := proto.Marshal(s.ff)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(uint8(s.field), s.value, wire)
	}
	samples := make([]*flowpb.Flow, 0, len(sampleFlows))
	for _, mk := range sampleFlows {
		samples = append(samples, mk())
	}
	f.Fuzz(func(t *testing.T, field uint8, value string, wire []byte) {
		ff := &flowpb.FlowFilter{}
		if proto.Unmarshal(wire, ff) != nil {
			return
		}
		fuzzStringFields[int(field)%len(fuzzStringFields)](ff, value)
		allow, errAllow := Compile([]*flowpb.FlowFilter{ff}, nil)
		deny, errDeny := Compile(nil, []*flowpb.FlowFilter{ff})
		if (errAllow == nil) != (errDeny == nil) {
			t.Fatalf("as a whitelist: %v; as a blacklist: %v", errAllow, errDeny)
		}
		if errAllow != nil {
			var fe *Error
			if !errors.As(errAllow, &fe) || !strings.HasPrefix(fe.Path, "whitelist[0]") {
				t.Fatalf("error %v (%T) is not a *filter.Error under whitelist[0]", errAllow, errAllow)
			}
			return
		}
		for _, fl := range samples {
			if allow(fl) == deny(fl) {
				t.Fatalf("flow %v passes the whitelist (%v) and the blacklist (%v) alike", fl, allow(fl), deny(fl))
			}
		}
	})
}
