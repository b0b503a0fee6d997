package filter

import (
	"errors"
	"strings"
	"testing"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// The flows below are what flatnet's seed scenario produces, in Hubble's form: a client in namespace seed
// connects to a server on port 80; the first attempt is dropped by default-deny, the next is forwarded and
// answered. Expected results come from Hubble's documentation of FlowFilter (flow.proto) and hubble
// observe's flags, not from this package.

func client() *flowpb.Endpoint {
	return &flowpb.Endpoint{
		ID: 101, Identity: 30001, ClusterName: "kind", Namespace: "seed", PodName: "client-7d9f",
		Labels: []string{
			"k8s:app=client",
			"k8s:io.kubernetes.pod.namespace=seed",
			"k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=seed",
		},
		Workloads: []*flowpb.Workload{{Name: "client", Kind: "Deployment"}},
	}
}

func server() *flowpb.Endpoint {
	return &flowpb.Endpoint{
		ID: 102, Identity: 30002, ClusterName: "kind", Namespace: "seed", PodName: "server-0",
		Labels: []string{
			"k8s:app=server",
			"k8s:tier=web",
			"k8s:io.kubernetes.pod.namespace=seed",
		},
		Workloads: []*flowpb.Workload{{Name: "server", Kind: "StatefulSet"}},
	}
}

func world() *flowpb.Endpoint {
	return &flowpb.Endpoint{Identity: 2, Labels: []string{"reserved:world", "cidr:203.0.113.0/24"}}
}

func tcp(src, dst uint32, flags *flowpb.TCPFlags) *flowpb.Layer4 {
	return &flowpb.Layer4{Protocol: &flowpb.Layer4_TCP{TCP: &flowpb.TCP{SourcePort: src, DestinationPort: dst, Flags: flags}}}
}

func ipv4(src, dst string) *flowpb.IP {
	return &flowpb.IP{Source: src, Destination: dst, IpVersion: flowpb.IPVersion_IPv4}
}

// denied: the client's SYN to the server, dropped at the server's ingress by policy.
func denied() *flowpb.Flow {
	return &flowpb.Flow{
		Uuid: "0b3a1c55-8a7e-4f43-9d7e-2f6a9e0c0001", Verdict: flowpb.Verdict_DROPPED, DropReason: 133,
		DropReasonDesc: flowpb.DropReason_POLICY_DENIED,
		IP:             ipv4("10.244.1.5", "10.244.2.7"), L4: tcp(40000, 80, &flowpb.TCPFlags{SYN: true}),
		Source: client(), Destination: server(), Type: flowpb.FlowType_L3_L4,
		NodeName: "kind/kind-worker2", NodeLabels: []string{"kubernetes.io/hostname=kind-worker2", "kubernetes.io/os=linux"},
		EventType: &flowpb.CiliumEventType{Type: 1, SubType: 133}, TrafficDirection: flowpb.TrafficDirection_INGRESS,
		Interface: &flowpb.NetworkInterface{Index: 7, Name: "lxc8a3c"},
	}
}

// forwarded: the same SYN once allowed, as a trace event to the endpoint.
func forwarded() *flowpb.Flow {
	return &flowpb.Flow{
		Uuid: "0b3a1c55-8a7e-4f43-9d7e-2f6a9e0c0002", Verdict: flowpb.Verdict_FORWARDED,
		IP: ipv4("10.244.1.5", "10.244.2.7"), L4: tcp(40001, 80, &flowpb.TCPFlags{SYN: true}),
		Source: client(), Destination: server(), Type: flowpb.FlowType_L3_L4,
		NodeName: "kind/kind-worker2", NodeLabels: []string{"kubernetes.io/hostname=kind-worker2", "kubernetes.io/os=linux"},
		EventType: &flowpb.CiliumEventType{Type: 4, SubType: 0}, TrafficDirection: flowpb.TrafficDirection_INGRESS,
		IsReply: wrapperspb.Bool(false), Interface: &flowpb.NetworkInterface{Index: 7, Name: "lxc8a3c"},
	}
}

// reply: the server's SYN-ACK back to the client.
func reply() *flowpb.Flow {
	return &flowpb.Flow{
		Uuid: "0b3a1c55-8a7e-4f43-9d7e-2f6a9e0c0003", Verdict: flowpb.Verdict_FORWARDED,
		IP: ipv4("10.244.2.7", "10.244.1.5"), L4: tcp(80, 40001, &flowpb.TCPFlags{SYN: true, ACK: true}),
		Source: server(), Destination: client(), Type: flowpb.FlowType_L3_L4,
		NodeName: "kind-worker", NodeLabels: []string{"kubernetes.io/hostname=kind-worker"},
		EventType: &flowpb.CiliumEventType{Type: 4, SubType: 3}, TrafficDirection: flowpb.TrafficDirection_EGRESS,
		IsReply: wrapperspb.Bool(true),
	}
}

// egressUDP: the client's DNS query to a world address over IPv6, forwarded at egress; its reply state is
// unknown.
func egressUDP() *flowpb.Flow {
	return &flowpb.Flow{
		Uuid: "0b3a1c55-8a7e-4f43-9d7e-2f6a9e0c0004", Verdict: flowpb.Verdict_FORWARDED,
		IP:     &flowpb.IP{Source: "fd00:10:244:1::5", Destination: "2001:db8::53", IpVersion: flowpb.IPVersion_IPv6},
		L4:     &flowpb.Layer4{Protocol: &flowpb.Layer4_UDP{UDP: &flowpb.UDP{SourcePort: 53124, DestinationPort: 53}}},
		Source: client(), Destination: world(), Type: flowpb.FlowType_L3_L4, NodeName: "kind-worker",
		EventType: &flowpb.CiliumEventType{Type: 4, SubType: 0}, TrafficDirection: flowpb.TrafficDirection_EGRESS,
		DestinationService: &flowpb.Service{Name: "kube-dns", Namespace: "kube-system"},
	}
}

// icmp: a host's ping to the server, forwarded.
func icmp() *flowpb.Flow {
	return &flowpb.Flow{
		Uuid: "0b3a1c55-8a7e-4f43-9d7e-2f6a9e0c0005", Verdict: flowpb.Verdict_FORWARDED,
		IP:     ipv4("172.18.0.3", "10.244.2.7"),
		L4:     &flowpb.Layer4{Protocol: &flowpb.Layer4_ICMPv4{ICMPv4: &flowpb.ICMPv4{Type: 8}}},
		Source: &flowpb.Endpoint{Identity: 1, Labels: []string{"reserved:host"}}, Destination: server(),
		Type: flowpb.FlowType_L3_L4, NodeName: "kind-worker2",
		EventType: &flowpb.CiliumEventType{Type: 4}, TrafficDirection: flowpb.TrafficDirection_INGRESS,
		IsReply: wrapperspb.Bool(false),
	}
}

// dnsL7: what a DNS proxy would record: Hubble's shape, which flatnet does not produce yet.
func dnsL7() *flowpb.Flow {
	return &flowpb.Flow{
		Verdict: flowpb.Verdict_FORWARDED, Type: flowpb.FlowType_L7, Source: client(),
		EventType: &flowpb.CiliumEventType{Type: 129}, DestinationNames: []string{"api.example.com"},
		L7: &flowpb.Layer7{Type: flowpb.L7FlowType_REQUEST, Record: &flowpb.Layer7_Dns{Dns: &flowpb.DNS{Query: "api.example.com."}}},
	}
}

// httpL7: an HTTP response record as Hubble's L7 proxy writes it.
func httpL7() *flowpb.Flow {
	return &flowpb.Flow{
		Verdict: flowpb.Verdict_FORWARDED, Type: flowpb.FlowType_L7, Source: server(), Destination: client(),
		EventType: &flowpb.CiliumEventType{Type: 129},
		L7: &flowpb.Layer7{Type: flowpb.L7FlowType_RESPONSE, Record: &flowpb.Layer7_Http{Http: &flowpb.HTTP{
			Code: 404, Method: "GET", Url: "http://server.seed/api/v1/items?id=3", Protocol: "HTTP/1.1",
			Headers: []*flowpb.HTTPHeader{{Key: "X-Request-Id", Value: "abc"}},
		}}},
	}
}

// sampleFlows are the sample, by name; each case lists the names that pass.
var sampleFlows = map[string]func() *flowpb.Flow{
	"denied": denied, "forwarded": forwarded, "reply": reply, "egressUDP": egressUDP, "icmp": icmp,
	"dnsL7": dnsL7, "httpL7": httpL7,
}

type matchCase struct {
	name        string
	allow, deny []*flowpb.FlowFilter
	pass        []string // names of the flows that pass; all others must not
}

func runMatchCases(t *testing.T, cases []matchCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			match, err := Compile(tc.allow, tc.deny)
			if err != nil {
				t.Fatalf("Compile: %v", err)
			}
			want := make(map[string]bool)
			for _, n := range tc.pass {
				if sampleFlows[n] == nil {
					t.Fatalf("no sample flow %q", n)
				}
				want[n] = true
			}
			for name, f := range sampleFlows {
				if got := match(f()); got != want[name] {
					t.Errorf("flow %s: passes = %v, want %v", name, got, want[name])
				}
			}
		})
	}
}

var all = []string{"denied", "forwarded", "reply", "egressUDP", "icmp", "dnsL7", "httpL7"}

func TestListSemantics(t *testing.T) {
	runMatchCases(t, []matchCase{
		{name: "no filters pass everything", pass: all},
		{name: "an empty FlowFilter in the whitelist matches everything", allow: []*flowpb.FlowFilter{{}}, pass: all},
		{name: "an empty FlowFilter in the blacklist drops everything", deny: []*flowpb.FlowFilter{{}}},
		{name: "values of one field are ORed",
			allow: []*flowpb.FlowFilter{{Verdict: []flowpb.Verdict{flowpb.Verdict_DROPPED, flowpb.Verdict_ERROR}}},
			pass:  []string{"denied"}},
		{name: "fields of one filter are ANDed",
			allow: []*flowpb.FlowFilter{{Verdict: []flowpb.Verdict{flowpb.Verdict_FORWARDED}, DestinationPort: []string{"80"}}},
			pass:  []string{"forwarded"}},
		{name: "filters of the whitelist are ORed (hubble observe --namespace seed: from OR to)",
			allow: []*flowpb.FlowFilter{{SourcePod: []string{"kube-system/"}}, {DestinationPort: []string{"53"}}},
			pass:  []string{"egressUDP"}},
		{name: "a flow passes when it matches no blacklist filter",
			deny: []*flowpb.FlowFilter{{Verdict: []flowpb.Verdict{flowpb.Verdict_DROPPED}}, {Protocol: []string{"udp"}}},
			pass: []string{"forwarded", "reply", "icmp", "dnsL7", "httpL7"}},
		{name: "the blacklist wins over the whitelist",
			allow: []*flowpb.FlowFilter{{DestinationPod: []string{"seed/server"}}},
			deny:  []*flowpb.FlowFilter{{Verdict: []flowpb.Verdict{flowpb.Verdict_DROPPED}}},
			pass:  []string{"forwarded", "icmp"}},
		{name: "a nil FlowFilter is an empty one", allow: []*flowpb.FlowFilter{nil}, pass: all},
	})
	match, err := Compile(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if match(nil) {
		t.Error("a nil flow passes")
	}
}

func TestEndpointFields(t *testing.T) {
	ff := func(f *flowpb.FlowFilter) []*flowpb.FlowFilter { return []*flowpb.FlowFilter{f} }
	runMatchCases(t, []matchCase{
		{name: "source_ip exact", allow: ff(&flowpb.FlowFilter{SourceIp: []string{"10.244.1.5"}}), pass: []string{"denied", "forwarded"}},
		{name: "source_ip CIDR", allow: ff(&flowpb.FlowFilter{SourceIp: []string{"10.244.0.0/16"}}), pass: []string{"denied", "forwarded", "reply"}},
		{name: "source_ip IPv6 written in another form",
			allow: ff(&flowpb.FlowFilter{SourceIp: []string{"FD00:10:244:1:0:0:0:5"}}), pass: []string{"egressUDP"}},
		{name: "destination_ip v6 CIDR and a v4 address",
			allow: ff(&flowpb.FlowFilter{DestinationIp: []string{"2001:db8::/32", "10.244.1.5"}}), pass: []string{"reply", "egressUDP"}},
		{name: "a v4 CIDR does not contain v6 addresses", allow: ff(&flowpb.FlowFilter{DestinationIp: []string{"0.0.0.0/0"}}),
			pass: []string{"denied", "forwarded", "reply", "icmp"}},
		{name: "source_ip_xlated: flatnet translates nothing", allow: ff(&flowpb.FlowFilter{SourceIpXlated: []string{"0.0.0.0/0", "::/0"}})},
		{name: "ip_version", allow: ff(&flowpb.FlowFilter{IpVersion: []flowpb.IPVersion{flowpb.IPVersion_IPv6}}), pass: []string{"egressUDP"}},

		{name: "pod ns/prefix (--from-pod seed/client)", allow: ff(&flowpb.FlowFilter{SourcePod: []string{"seed/client"}}),
			pass: []string{"denied", "forwarded", "egressUDP", "dnsL7"}},
		{name: "pod bare name means namespace default", allow: ff(&flowpb.FlowFilter{SourcePod: []string{"client"}})},
		{name: "pod /prefix means any namespace", allow: ff(&flowpb.FlowFilter{DestinationPod: []string{"/server-"}}),
			pass: []string{"denied", "forwarded", "icmp"}},
		{name: "pod ns/ is the whole namespace (--to-namespace seed)", allow: ff(&flowpb.FlowFilter{DestinationPod: []string{"seed/"}}),
			pass: []string{"denied", "forwarded", "reply", "icmp", "httpL7"}},
		{name: "pod prefix must be a prefix", allow: ff(&flowpb.FlowFilter{SourcePod: []string{"seed/lient"}})},
		{name: "pod namespace must match whole", allow: ff(&flowpb.FlowFilter{SourcePod: []string{"see/"}})},
		{name: "destination_service", allow: ff(&flowpb.FlowFilter{DestinationService: []string{"kube-system/kube-dns"}}),
			pass: []string{"egressUDP"}},
		{name: "source_service: no flow has one", allow: ff(&flowpb.FlowFilter{SourceService: []string{"/"}})},
		{name: "source_workload by kind", allow: ff(&flowpb.FlowFilter{SourceWorkload: []*flowpb.Workload{{Kind: "StatefulSet"}}}),
			pass: []string{"reply", "httpL7"}},
		{name: "destination_workload by name and kind",
			allow: ff(&flowpb.FlowFilter{DestinationWorkload: []*flowpb.Workload{{Name: "server", Kind: "Deployment"}, {Name: "client", Kind: "Deployment"}}}),
			pass:  []string{"reply", "httpL7"}},
		{name: "source_cluster_name", allow: ff(&flowpb.FlowFilter{SourceClusterName: []string{"kind"}}),
			pass: []string{"denied", "forwarded", "reply", "egressUDP", "dnsL7", "httpL7"}},
		{name: "destination_cluster_name other", allow: ff(&flowpb.FlowFilter{DestinationClusterName: []string{"other"}})},
		{name: "source_identity", allow: ff(&flowpb.FlowFilter{SourceIdentity: []uint32{1, 30002}}), pass: []string{"reply", "icmp", "httpL7"}},
		{name: "destination_identity world", allow: ff(&flowpb.FlowFilter{DestinationIdentity: []uint32{2}}), pass: []string{"egressUDP"}},
		{name: "destination_identity 0 needs a destination endpoint", allow: ff(&flowpb.FlowFilter{DestinationIdentity: []uint32{0}})},
		{name: "uuid", allow: ff(&flowpb.FlowFilter{Uuid: []string{"0b3a1c55-8a7e-4f43-9d7e-2f6a9e0c0003"}}), pass: []string{"reply"}},
	})
}

func TestLabelField(t *testing.T) {
	ff := func(f *flowpb.FlowFilter) []*flowpb.FlowFilter { return []*flowpb.FlowFilter{f} }
	runMatchCases(t, []matchCase{
		{name: "bare key=value matches any source (--label app=server)",
			allow: ff(&flowpb.FlowFilter{SourceLabel: []string{"app=server"}}), pass: []string{"reply", "httpL7"}},
		{name: "k8s: source", allow: ff(&flowpb.FlowFilter{DestinationLabel: []string{"k8s:app=server"}}),
			pass: []string{"denied", "forwarded", "icmp"}},
		{name: "another source does not match", allow: ff(&flowpb.FlowFilter{DestinationLabel: []string{"container:app=server"}})},
		{name: "reserved label exists", allow: ff(&flowpb.FlowFilter{SourceLabel: []string{"reserved:host"}}), pass: []string{"icmp"}},
		{name: "not exists (a flow without a destination has no labels)",
			allow: ff(&flowpb.FlowFilter{DestinationLabel: []string{"!reserved:world"}}),
			pass:  []string{"denied", "forwarded", "reply", "icmp", "dnsL7", "httpL7"}},
		{name: "set-based and ANDed requirements",
			allow: ff(&flowpb.FlowFilter{DestinationLabel: []string{"k8s:app in (server, api), tier notin (db)"}}),
			pass:  []string{"denied", "forwarded", "icmp"}},
		{name: "selectors of one field are ORed",
			allow: ff(&flowpb.FlowFilter{SourceLabel: []string{"app=client", "reserved:host"}}),
			pass:  []string{"denied", "forwarded", "egressUDP", "icmp", "dnsL7"}},
		{name: "keys with dots and slashes",
			allow: ff(&flowpb.FlowFilter{SourceLabel: []string{"k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=seed"}}),
			pass:  []string{"denied", "forwarded", "egressUDP", "dnsL7"}},
		{name: "CIDR labels match by containment", allow: ff(&flowpb.FlowFilter{DestinationLabel: []string{"cidr:203.0.0.0/8"}}),
			pass: []string{"egressUDP"}},
		{name: "a narrower CIDR does not contain a wider one", allow: ff(&flowpb.FlowFilter{DestinationLabel: []string{"cidr:203.0.113.0/25"}})},
		{name: "node_labels have no source", allow: ff(&flowpb.FlowFilter{NodeLabels: []string{"kubernetes.io/hostname=kind-worker2"}}),
			pass: []string{"denied", "forwarded"}},
		{name: "an empty selector selects every flow", allow: ff(&flowpb.FlowFilter{SourceLabel: []string{""}}), pass: all},
	})
}

func TestFlowFields(t *testing.T) {
	ff := func(f *flowpb.FlowFilter) []*flowpb.FlowFilter { return []*flowpb.FlowFilter{f} }
	runMatchCases(t, []matchCase{
		{name: "verdict (--verdict DROPPED)", allow: ff(&flowpb.FlowFilter{Verdict: []flowpb.Verdict{flowpb.Verdict_DROPPED}}), pass: []string{"denied"}},
		{name: "drop_reason_desc", allow: ff(&flowpb.FlowFilter{DropReasonDesc: []flowpb.DropReason{flowpb.DropReason_POLICY_DENIED}}), pass: []string{"denied"}},
		{name: "drop_reason_desc unknown matches dropped flows only",
			allow: ff(&flowpb.FlowFilter{DropReasonDesc: []flowpb.DropReason{flowpb.DropReason_DROP_REASON_UNKNOWN}})},
		{name: "traffic_direction", allow: ff(&flowpb.FlowFilter{TrafficDirection: []flowpb.TrafficDirection{flowpb.TrafficDirection_EGRESS}}),
			pass: []string{"reply", "egressUDP"}},
		{name: "traffic_direction unknown", allow: ff(&flowpb.FlowFilter{TrafficDirection: []flowpb.TrafficDirection{flowpb.TrafficDirection_TRAFFIC_DIRECTION_UNKNOWN}}),
			pass: []string{"dnsL7", "httpL7"}},
		{name: "event type (--type drop)", allow: ff(&flowpb.FlowFilter{EventType: []*flowpb.EventTypeFilter{{Type: 1}}}), pass: []string{"denied"}},
		{name: "event type with sub-type (--type trace:to-stack)",
			allow: ff(&flowpb.FlowFilter{EventType: []*flowpb.EventTypeFilter{{Type: 4, SubType: 3, MatchSubType: true}}}), pass: []string{"reply"}},
		{name: "sub-type 0 matched explicitly (--type trace:to-endpoint)",
			allow: ff(&flowpb.FlowFilter{EventType: []*flowpb.EventTypeFilter{{Type: 4, SubType: 0, MatchSubType: true}}}),
			pass:  []string{"forwarded", "egressUDP", "icmp"}},
		{name: "event type 0 is any type", allow: ff(&flowpb.FlowFilter{EventType: []*flowpb.EventTypeFilter{{Type: 0}}}), pass: all},
		{name: "l7 event type", allow: ff(&flowpb.FlowFilter{EventType: []*flowpb.EventTypeFilter{{Type: 129}}}), pass: []string{"dnsL7", "httpL7"}},
		{name: "protocol, case-insensitive", allow: ff(&flowpb.FlowFilter{Protocol: []string{"TCP", "icmpv4"}}),
			pass: []string{"denied", "forwarded", "reply", "icmp"}},
		{name: "protocol icmp covers v4 and v6", allow: ff(&flowpb.FlowFilter{Protocol: []string{"icmp"}}), pass: []string{"icmp"}},
		{name: "protocol udp", allow: ff(&flowpb.FlowFilter{Protocol: []string{"udp"}}), pass: []string{"egressUDP"}},
		{name: "protocol dns is the L7 record", allow: ff(&flowpb.FlowFilter{Protocol: []string{"dns"}}), pass: []string{"dnsL7"}},
		{name: "destination_port (--to-port 80)", allow: ff(&flowpb.FlowFilter{DestinationPort: []string{"80"}}), pass: []string{"denied", "forwarded"}},
		{name: "source_port", allow: ff(&flowpb.FlowFilter{SourcePort: []string{"80", "53124"}}), pass: []string{"reply", "egressUDP"}},
		{name: "port 0 does not match portless flows", allow: ff(&flowpb.FlowFilter{DestinationPort: []string{"0"}})},
		{name: "reply true", allow: ff(&flowpb.FlowFilter{Reply: []bool{true}}), pass: []string{"reply"}},
		{name: "reply false: dropped flows of unknown direction count as not replies",
			allow: ff(&flowpb.FlowFilter{Reply: []bool{false}}), pass: []string{"denied", "forwarded", "icmp"}},
		{name: "tcp_flags SYN matches SYN-ACK too", allow: ff(&flowpb.FlowFilter{TcpFlags: []*flowpb.TCPFlags{{SYN: true}}}),
			pass: []string{"denied", "forwarded", "reply"}},
		{name: "tcp_flags needs every flag of one value",
			allow: ff(&flowpb.FlowFilter{TcpFlags: []*flowpb.TCPFlags{{SYN: true, ACK: true}, {FIN: true}}}), pass: []string{"reply"}},
		{name: "node_name glob", allow: ff(&flowpb.FlowFilter{NodeName: []string{"kind-worker*"}}),
			pass: []string{"denied", "forwarded", "reply", "egressUDP", "icmp"}},
		{name: "node_name exact", allow: ff(&flowpb.FlowFilter{NodeName: []string{"kind-worker"}}), pass: []string{"reply", "egressUDP"}},
		{name: "node_name cluster/", allow: ff(&flowpb.FlowFilter{NodeName: []string{"kind/"}}), pass: []string{"denied", "forwarded"}},
		{name: "node_name without a cluster is in cluster default", allow: ff(&flowpb.FlowFilter{NodeName: []string{"default/*2"}}),
			pass: []string{"icmp"}},
		{name: "node_name is case-insensitive and ignores a trailing dot", allow: ff(&flowpb.FlowFilter{NodeName: []string{"KIND/Kind-Worker2."}}),
			pass: []string{"denied", "forwarded"}},
		{name: "interface by index", allow: ff(&flowpb.FlowFilter{Interface: []*flowpb.NetworkInterface{{Index: 7}}}), pass: []string{"denied", "forwarded"}},
		{name: "interface by name", allow: ff(&flowpb.FlowFilter{Interface: []*flowpb.NetworkInterface{{Name: "eth0"}}})},
		{name: "encrypted false", allow: ff(&flowpb.FlowFilter{Encrypted: []bool{false}}), pass: all},
		{name: "encrypted true", allow: ff(&flowpb.FlowFilter{Encrypted: []bool{true}})},
		{name: "trace_id", allow: ff(&flowpb.FlowFilter{TraceId: []string{"4bf92f3577b34da6a3ce929d0e0e4736"}})},
		{name: "ip_trace_id", allow: ff(&flowpb.FlowFilter{IpTraceId: []uint64{42}})},
	})
}

func TestL7Fields(t *testing.T) {
	ff := func(f *flowpb.FlowFilter) []*flowpb.FlowFilter { return []*flowpb.FlowFilter{f} }
	runMatchCases(t, []matchCase{
		{name: "destination_fqdn glob", allow: ff(&flowpb.FlowFilter{DestinationFqdn: []string{"*.example.com"}}), pass: []string{"dnsL7"}},
		{name: "fqdn is anchored", allow: ff(&flowpb.FlowFilter{DestinationFqdn: []string{"example.com"}})},
		{name: "source_fqdn", allow: ff(&flowpb.FlowFilter{SourceFqdn: []string{"*"}})},
		{name: "dns_query regexp is unanchored", allow: ff(&flowpb.FlowFilter{DnsQuery: []string{`example\.com`}}), pass: []string{"dnsL7"}},
		{name: "http_status_code prefix", allow: ff(&flowpb.FlowFilter{HttpStatusCode: []string{"4+"}}), pass: []string{"httpL7"}},
		{name: "http_status_code exact", allow: ff(&flowpb.FlowFilter{HttpStatusCode: []string{"200", "50+"}})},
		{name: "http_method is case-insensitive", allow: ff(&flowpb.FlowFilter{HttpMethod: []string{"get"}}), pass: []string{"httpL7"}},
		{name: "http_path matches the URL's path",
			allow: ff(&flowpb.FlowFilter{HttpPath: []string{`^/api/v1/items$`}, EventType: []*flowpb.EventTypeFilter{{Type: 129}}}),
			pass:  []string{"httpL7"}},
		{name: "http_url matches the whole URL", allow: ff(&flowpb.FlowFilter{HttpUrl: []string{`id=3$`}}), pass: []string{"httpL7"}},
		{name: "http_header key and value", allow: ff(&flowpb.FlowFilter{HttpHeader: []*flowpb.HTTPHeader{{Key: "X-Request-Id", Value: "abc"}}}),
			pass: []string{"httpL7"}},
		{name: "http_header value must match", allow: ff(&flowpb.FlowFilter{HttpHeader: []*flowpb.HTTPHeader{{Key: "X-Request-Id"}}})},
	})
}

func TestCompileErrors(t *testing.T) {
	cases := []struct {
		name        string
		allow, deny []*flowpb.FlowFilter
		path        string // the *Error's Path
		says        string // a part of its message
	}{
		{"bad IP", []*flowpb.FlowFilter{{SourceIp: []string{"10.0.0.1", "10.0.0/8"}}}, nil,
			"whitelist[0].source_ip[1]", `"10.0.0/8" is not an IP or CIDR`},
		{"bad address", nil, []*flowpb.FlowFilter{{}, {DestinationIp: []string{"server"}}}, "blacklist[1].destination_ip[0]", "not an IP"},
		{"bad xlated", []*flowpb.FlowFilter{{SourceIpXlated: []string{"1.2.3.4/33"}}}, nil, "whitelist[0].source_ip_xlated[0]", "not an IP or CIDR"},
		{"bad port", []*flowpb.FlowFilter{{DestinationPort: []string{"http"}}}, nil, "whitelist[0].destination_port[0]", `"http" is not a port`},
		{"port too big", []*flowpb.FlowFilter{{SourcePort: []string{"65536"}}}, nil, "whitelist[0].source_port[0]", "0 to 65535"},
		{"bad selector", []*flowpb.FlowFilter{{SourceLabel: []string{"app in (a"}}}, nil, "whitelist[0].source_label[0]", "not a label selector"},
		{"blank selector", []*flowpb.FlowFilter{{DestinationLabel: []string{" "}}}, nil, "whitelist[0].destination_label[0]", "not a label selector"},
		{"bad node selector", []*flowpb.FlowFilter{{NodeLabels: []string{"a=b=c"}}}, nil, "whitelist[0].node_labels[0]", "not a label selector"},
		{"empty pod", []*flowpb.FlowFilter{{SourcePod: []string{""}}}, nil, "whitelist[0].source_pod[0]", "is empty"},
		{"pod with two slashes", []*flowpb.FlowFilter{{DestinationPod: []string{"a/b/c"}}}, nil, "whitelist[0].destination_pod[0]", "more than one '/'"},
		{"empty service", []*flowpb.FlowFilter{{DestinationService: []string{""}}}, nil, "whitelist[0].destination_service[0]", "is empty"},
		{"empty cluster", []*flowpb.FlowFilter{{SourceClusterName: []string{"kind", ""}}}, nil, "whitelist[0].source_cluster_name[1]", "is empty"},
		{"unknown verdict", []*flowpb.FlowFilter{{Verdict: []flowpb.Verdict{flowpb.Verdict_DROPPED, 99}}}, nil, "whitelist[0].verdict[1]", "99 is not a flow.Verdict"},
		{"unknown direction", []*flowpb.FlowFilter{{TrafficDirection: []flowpb.TrafficDirection{7}}}, nil, "whitelist[0].traffic_direction[0]", "not a flow.TrafficDirection"},
		{"unknown drop reason", []*flowpb.FlowFilter{{DropReasonDesc: []flowpb.DropReason{1}}}, nil, "whitelist[0].drop_reason_desc[0]", "not a flow.DropReason"},
		{"unknown ip version", []*flowpb.FlowFilter{{IpVersion: []flowpb.IPVersion{4}}}, nil, "whitelist[0].ip_version[0]", "not a flow.IPVersion"},
		{"bad event type", []*flowpb.FlowFilter{{EventType: []*flowpb.EventTypeFilter{{Type: 1}, {Type: -1}}}}, nil, "whitelist[0].event_type[1].type", "not a monitor message type"},
		{"sub-type without match", []*flowpb.FlowFilter{{EventType: []*flowpb.EventTypeFilter{{Type: 4, SubType: 3}}}}, nil, "whitelist[0].event_type[0].sub_type", "match_sub_type"},
		{"unknown protocol", []*flowpb.FlowFilter{{Protocol: []string{"quic"}}}, nil, "whitelist[0].protocol[0]", `unknown protocol "quic"`},
		{"bad node pattern", []*flowpb.FlowFilter{{NodeName: []string{"a/b/c"}}}, nil, "whitelist[0].node_name[0]", "more than one '/'"},
		{"bad node rune", []*flowpb.FlowFilter{{NodeName: []string{"kind-worker?"}}}, nil, "whitelist[0].node_name[0]", "'?'"},
		{"bad fqdn", []*flowpb.FlowFilter{{DestinationFqdn: []string{"example.com.."}}}, nil, "whitelist[0].destination_fqdn[0]", "more than one dot"},
		{"empty fqdn", []*flowpb.FlowFilter{{SourceFqdn: []string{" "}}}, nil, "whitelist[0].source_fqdn[0]", "empty pattern"},
		{"bad dns regexp", []*flowpb.FlowFilter{{DnsQuery: []string{"(("}}}, nil, "whitelist[0].dns_query[0]", "not a regular expression"},
		{"bad http path", []*flowpb.FlowFilter{{HttpPath: []string{"[a"}}}, nil, "whitelist[0].http_path[0]", "not a regular expression"},
		{"bad http url", []*flowpb.FlowFilter{{HttpUrl: []string{"*"}}}, nil, "whitelist[0].http_url[0]", "not a regular expression"},
		{"bad status", []*flowpb.FlowFilter{{HttpStatusCode: []string{"600"}}}, nil, "whitelist[0].http_status_code[0]", "not a status code"},
		{"http with non-L7 event type", []*flowpb.FlowFilter{{HttpMethod: []string{"GET"}, EventType: []*flowpb.EventTypeFilter{{Type: 1}}}}, nil,
			"whitelist[0].http_method", "event_type excludes L7"},
		{"empty uuid", []*flowpb.FlowFilter{{Uuid: []string{""}}}, nil, "whitelist[0].uuid[0]", "is empty"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			match, err := Compile(tc.allow, tc.deny)
			if err == nil {
				t.Fatalf("Compile succeeded (match %p), want an error at %s", match, tc.path)
			}
			var fe *Error
			if !errors.As(err, &fe) {
				t.Fatalf("error %v (%T) is not a *filter.Error", err, err)
			}
			if fe.Path != tc.path {
				t.Errorf("Path = %q, want %q", fe.Path, tc.path)
			}
			if !strings.Contains(err.Error(), tc.says) || !strings.HasPrefix(err.Error(), tc.path+": ") {
				t.Errorf("message %q: want it to start with %q and say %q", err, tc.path+": ", tc.says)
			}
			if fe.Fix == "" {
				t.Errorf("error %q says no fix", err)
			}
		})
	}
}

func TestCompileNamed(t *testing.T) {
	_, err := CompileNamed("allowList", nil, "denyList", []*flowpb.FlowFilter{{SourceIp: []string{"x"}}})
	var fe *Error
	if !errors.As(err, &fe) || fe.Path != "denyList[0].source_ip[0]" {
		t.Fatalf("error %v: want Path denyList[0].source_ip[0]", err)
	}
}

// A newer client's field that v1.19.4 does not define arrives as unknown bytes: refuse it rather than apply
// the rest of the filter alone.
func TestUnknownFieldsAreRefused(t *testing.T) {
	withUnknown := func(m protoreflect.ProtoMessage) {
		b := protowire.AppendTag(nil, 4242, protowire.VarintType)
		m.ProtoReflect().SetUnknown(protowire.AppendVarint(b, 1))
	}
	ff := &flowpb.FlowFilter{Verdict: []flowpb.Verdict{flowpb.Verdict_DROPPED}}
	withUnknown(ff)
	tf := &flowpb.TCPFlags{SYN: true}
	withUnknown(tf)
	for _, tc := range []struct {
		ff   *flowpb.FlowFilter
		path string
	}{
		{ff, "whitelist[0]"},
		{&flowpb.FlowFilter{TcpFlags: []*flowpb.TCPFlags{{}, tf}}, "whitelist[0].tcp_flags[1]"},
	} {
		_, err := Compile([]*flowpb.FlowFilter{tc.ff}, nil)
		var fe *Error
		if !errors.As(err, &fe) || fe.Path != tc.path || !strings.Contains(err.Error(), "unknown") {
			t.Errorf("error %v: want a *filter.Error at %s about unknown fields", err, tc.path)
		}
	}
}

// Every field of FlowFilter at v1.19.4 is compiled, and fieldOrder names only fields that exist (a
// misspelt name would never be looked at).
func TestEveryFieldIsCompiled(t *testing.T) {
	fields := (&flowpb.FlowFilter{}).ProtoReflect().Descriptor().Fields()
	for i := 0; i < fields.Len(); i++ {
		if name := fields.Get(i).Name(); !knownFields[name] {
			t.Errorf("FlowFilter.%s is not in fieldOrder", name)
		}
	}
	for _, f := range fieldOrder {
		if fields.ByName(f.name) == nil {
			t.Errorf("fieldOrder names %q, which FlowFilter does not have", f.name)
		}
	}
	if len(fieldOrder) != fields.Len() {
		t.Errorf("fieldOrder has %d entries for %d fields", len(fieldOrder), fields.Len())
	}
}
