package filter

import (
	"testing"

	flowpb "github.com/cilium/cilium/api/v1/flow"
)

// hubble observe turns its flags into GetFlows whitelists and blacklists (hubble/cmd/observe/flows_filter.go
// at v1.19.4): a flag that names both ends (--namespace, --label, --port) makes two FlowFilters, one per
// end, each ANDed with every other flag; --not sends the next flag to the blacklist. These are the filters
// it sends for the invocations the issue and Hubble's documentation use, and the flows they must select.
func TestHubbleObserveInvocations(t *testing.T) {
	dropped := []flowpb.Verdict{flowpb.Verdict_DROPPED}
	runMatchCases(t, []matchCase{
		{name: "--namespace seed --verdict DROPPED",
			allow: []*flowpb.FlowFilter{{SourcePod: []string{"seed/"}, Verdict: dropped}, {DestinationPod: []string{"seed/"}, Verdict: dropped}},
			pass:  []string{"denied"}},
		{name: "--namespace kube-system",
			allow: []*flowpb.FlowFilter{{SourcePod: []string{"kube-system/"}}, {DestinationPod: []string{"kube-system/"}}}},
		{name: "--all-namespaces",
			allow: []*flowpb.FlowFilter{{SourcePod: []string{"/"}}, {DestinationPod: []string{"/"}}},
			pass:  []string{"denied", "forwarded", "reply", "egressUDP", "icmp", "dnsL7", "httpL7"}},
		{name: "--from-pod seed/client --to-port 80",
			allow: []*flowpb.FlowFilter{{SourcePod: []string{"seed/client"}, DestinationPort: []string{"80"}}},
			pass:  []string{"denied", "forwarded"}},
		{name: "--to-namespace seed --to-pod server",
			allow: []*flowpb.FlowFilter{{DestinationPod: []string{"seed/server"}}},
			pass:  []string{"denied", "forwarded", "icmp"}},
		{name: "--pod server (bare: namespace default)",
			allow: []*flowpb.FlowFilter{{SourcePod: []string{"server"}}, {DestinationPod: []string{"server"}}}},
		{name: "--label app=client",
			allow: []*flowpb.FlowFilter{{SourceLabel: []string{"app=client"}}, {DestinationLabel: []string{"app=client"}}},
			pass:  []string{"denied", "forwarded", "reply", "egressUDP", "dnsL7", "httpL7"}},
		{name: "--port 53",
			allow: []*flowpb.FlowFilter{{SourcePort: []string{"53"}}, {DestinationPort: []string{"53"}}},
			pass:  []string{"egressUDP"}},
		{name: "--type trace:to-stack",
			allow: []*flowpb.FlowFilter{{EventType: []*flowpb.EventTypeFilter{{Type: 4, SubType: 3, MatchSubType: true}}}},
			pass:  []string{"reply"}},
		{name: "--type drop --type l7",
			allow: []*flowpb.FlowFilter{{EventType: []*flowpb.EventTypeFilter{{Type: 1}, {Type: 129}}}},
			pass:  []string{"denied", "dnsL7", "httpL7"}},
		{name: "--tcp-flags SYN --traffic-direction ingress",
			allow: []*flowpb.FlowFilter{{TcpFlags: []*flowpb.TCPFlags{{SYN: true}}, TrafficDirection: []flowpb.TrafficDirection{flowpb.TrafficDirection_INGRESS}}},
			pass:  []string{"denied", "forwarded"}},
		{name: "--node-name kind-worker2",
			allow: []*flowpb.FlowFilter{{NodeName: []string{"kind-worker2"}}},
			pass:  []string{"denied", "forwarded", "icmp"}},
		{name: "--protocol tcp --not --verdict DROPPED",
			allow: []*flowpb.FlowFilter{{Protocol: []string{"tcp"}}},
			deny:  []*flowpb.FlowFilter{{Verdict: dropped}},
			pass:  []string{"forwarded", "reply"}},
		{name: "--identity world (2)",
			allow: []*flowpb.FlowFilter{{SourceIdentity: []uint32{2}}, {DestinationIdentity: []uint32{2}}},
			pass:  []string{"egressUDP"}},
		{name: "--drop-reason-desc POLICY_DENIED",
			allow: []*flowpb.FlowFilter{{DropReasonDesc: []flowpb.DropReason{flowpb.DropReason_POLICY_DENIED}}},
			pass:  []string{"denied"}},
		{name: "--ip 10.244.2.7",
			allow: []*flowpb.FlowFilter{{SourceIp: []string{"10.244.2.7"}}, {DestinationIp: []string{"10.244.2.7"}}},
			pass:  []string{"denied", "forwarded", "reply", "icmp"}},
		{name: "--from-workload Deployment/client (kind/name)",
			allow: []*flowpb.FlowFilter{{SourceWorkload: []*flowpb.Workload{{Kind: "Deployment", Name: "client"}}}},
			pass:  []string{"denied", "forwarded", "egressUDP", "dnsL7"}},
		{name: "--interface lxc8a3c",
			allow: []*flowpb.FlowFilter{{Interface: []*flowpb.NetworkInterface{{Name: "lxc8a3c"}}}},
			pass:  []string{"denied", "forwarded"}},
		{name: "--unencrypted --to-label k8s:app=server",
			allow: []*flowpb.FlowFilter{{Encrypted: []bool{false}, DestinationLabel: []string{"k8s:app=server"}}},
			pass:  []string{"denied", "forwarded", "icmp"}},
	})
}
