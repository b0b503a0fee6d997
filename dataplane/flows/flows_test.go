package flows

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flatnet/flatnet/dataplane/bpf"
	"github.com/flatnet/flatnet/dataplane/compile"
	"github.com/flatnet/flatnet/dataplane/flows/flowstest"
	"github.com/flatnet/flatnet/dataplane/identity"
	"github.com/flatnet/flatnet/dataplane/policy"
)

// The addresses of flowstest.Compiler's pods, and one outside the cluster.
var serverIP, clientIP, worldIP = flowstest.ServerIP, flowstest.ClientIP, flowstest.WorldIP

// denyClientCNP lets every pod reach server but client on TCP 80.
const denyClientCNP = `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny-client, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{}]
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
`

// toWorldCNP lets client reach the world on UDP 53.
const toWorldCNP = `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: to-world, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEntities: [world]
    toPorts: [{ports: [{port: "53", protocol: UDP}]}]
`

// get walks a decoded JSON object along a path of keys ("0" indexes a list).
func get(t *testing.T, v any, path ...string) any {
	t.Helper()
	for _, k := range path {
		switch x := v.(type) {
		case map[string]any:
			var ok bool
			if v, ok = x[k]; !ok {
				t.Fatalf("no field %q on the way to %s", k, strings.Join(path, "."))
			}
		case []any:
			if k != "0" || len(x) == 0 {
				t.Fatalf("list at %q on the way to %s: %v", k, strings.Join(path, "."), x)
			}
			v = x[0]
		default:
			t.Fatalf("%s: %v is not an object", strings.Join(path, "."), v)
		}
	}
	return v
}

// The field names are those of `hubble observe -o json` (Cilium's flow.Flow in a
// GetFlowsResponse): scripts written for Hubble read flatnet's flows unchanged.
func TestDenyRuleFlowHasHubbleFieldNames(t *testing.T) {
	c := flowstest.Compiler(t, denyClientCNP)
	d, err := c.Explain("default", "server", policy.Ingress, clientIP, policy.ProtoTCP, 80)
	must(t, err)
	if !d.Deny || d.RuleID == 0 {
		t.Fatalf("compiler decision %+v: want the deny rule", d)
	}
	serverID, _ := c.IdentityOf("default", "server")
	clientID, _ := c.IdentityOf("default", "client")
	en, err := NewEnricher("node-a", c.Latest())
	must(t, err)
	f := en.Flow(bpf.FlowEvent{Monotonic: time.Second, Src: clientIP, Dst: serverIP, SrcPort: 41000, DstPort: 80,
		Protocol: 6, TCPFlags: 0x02, Direction: policy.Ingress, Code: bpf.DropPolicyDeny, RuleID: d.RuleID,
		RemoteIdentity: clientID, LocalIdentity: serverID})
	js, err := json.Marshal(Response{Flow: f, NodeName: f.NodeName, Time: f.Time})
	must(t, err)
	var v any
	must(t, json.Unmarshal(js, &v))
	for _, c := range []struct {
		path []string
		want any
	}{
		{[]string{"node_name"}, "node-a"},
		{[]string{"flow", "verdict"}, "DROPPED"},
		{[]string{"flow", "drop_reason_desc"}, "POLICY_DENY"},
		{[]string{"flow", "traffic_direction"}, "INGRESS"},
		{[]string{"flow", "node_name"}, "node-a"},
		{[]string{"flow", "IP", "source"}, "10.224.0.41"},
		{[]string{"flow", "IP", "destination"}, "10.224.0.40"},
		{[]string{"flow", "l4", "TCP", "source_port"}, 41000.0},
		{[]string{"flow", "l4", "TCP", "destination_port"}, 80.0},
		{[]string{"flow", "l4", "TCP", "flags", "SYN"}, true},
		{[]string{"flow", "source", "namespace"}, "default"},
		{[]string{"flow", "source", "pod_name"}, "client"},
		{[]string{"flow", "source", "identity"}, float64(clientID)},
		{[]string{"flow", "destination", "pod_name"}, "server"},
		{[]string{"flow", "ingress_denied_by", "0", "name"}, "deny-client"},
		{[]string{"flow", "ingress_denied_by", "0", "namespace"}, "default"},
		{[]string{"flow", "ingress_denied_by", "0", "kind"}, "CiliumNetworkPolicy"},
		{[]string{"flow", "flatnet_rule"}, "spec.ingressDeny[0]"},
	} {
		if got := get(t, v, c.path...); got != c.want {
			t.Errorf("%s = %v, want %v", strings.Join(c.path, "."), got, c.want)
		}
	}
	if labels := get(t, v, "flow", "destination", "labels").([]any); !slices.Contains(labels, "k8s:app=server") || !slices.Contains(labels, "k8s:io.kubernetes.pod.namespace=default") {
		t.Errorf("destination labels %v: want k8s:app=server and k8s:io.kubernetes.pod.namespace=default", labels)
	}
	if _, err := time.Parse(time.RFC3339Nano, get(t, v, "flow", "time").(string)); err != nil {
		t.Errorf("flow.time: %v", err)
	}
	for _, k := range []string{"egress_denied_by", "ingress_allowed_by", "egress_allowed_by"} {
		if _, ok := v.(map[string]any)["flow"].(map[string]any)[k]; ok {
			t.Errorf("flow.%s set on an ingress deny", k)
		}
	}
}

// TestNonIPv4DropNamesThePod: a frame that is not IPv4 (the datapath reports the
// pod's address on its side and nothing on the other) is a drop of the pod with
// Cilium's reason, without made-up addresses.
func TestNonIPv4DropNamesThePod(t *testing.T) {
	c := flowstest.Compiler(t)
	clientID, _ := c.IdentityOf("default", "client")
	en, err := NewEnricher("n", c.Latest())
	must(t, err)
	f := en.Flow(bpf.FlowEvent{Src: clientIP, Dst: netip.IPv4Unspecified(), Direction: policy.Egress,
		Code: bpf.DropUnknownL3, LocalIdentity: clientID})
	if f.Verdict != VerdictDropped || f.DropReasonDesc != "UNSUPPORTED_L3_PROTOCOL" || f.DropReason != 139 {
		t.Errorf("verdict %s reason %d %q: want DROPPED 139 UNSUPPORTED_L3_PROTOCOL", f.Verdict, f.DropReason, f.DropReasonDesc)
	}
	if f.Source == nil || f.Source.PodName != "client" || f.Destination != nil || f.IP != nil || f.L4 != nil {
		t.Errorf("source %+v destination %+v ip %+v l4 %+v: want the client pod as source and nothing else", f.Source, f.Destination, f.IP, f.L4)
	}
}

func TestEgressToWorldIsReservedWorldAndAllowedByRule(t *testing.T) {
	c := flowstest.Compiler(t, toWorldCNP)
	d, err := c.Explain("default", "client", policy.Egress, worldIP, policy.ProtoUDP, 53)
	must(t, err)
	if !d.Allowed || d.RuleID == 0 {
		t.Fatalf("decision %+v: want allowed by the rule", d)
	}
	clientID, _ := c.IdentityOf("default", "client")
	en, err := NewEnricher("n", c.Latest())
	must(t, err)
	f := en.Flow(bpf.FlowEvent{Src: clientIP, Dst: worldIP, SrcPort: 5353, DstPort: 53, Protocol: 17,
		Direction: policy.Egress, Code: bpf.ForwardPolicy, RuleID: d.RuleID, LocalIdentity: clientID, RemoteIdentity: identity.World})
	if f.Verdict != VerdictForwarded || f.TrafficDirection != Egress || f.DropReasonDesc != "" {
		t.Errorf("verdict %s direction %s reason %q: want FORWARDED EGRESS without drop reason", f.Verdict, f.TrafficDirection, f.DropReasonDesc)
	}
	if f.L4 == nil || f.L4.UDP == nil || f.L4.UDP.DestinationPort != 53 || f.L4.TCP != nil {
		t.Errorf("l4 %+v: want UDP to 53", f.L4)
	}
	if f.Destination.PodName != "" || len(f.Destination.Labels) != 1 || f.Destination.Labels[0] != "reserved:world" {
		t.Errorf("destination %+v: want no pod and labels [reserved:world]", f.Destination)
	}
	if len(f.EgressAllowedBy) != 1 || f.EgressAllowedBy[0].Name != "to-world" || f.EgressDeniedBy != nil {
		t.Errorf("egress_allowed_by %v denied_by %v: want [to-world] and none", f.EgressAllowedBy, f.EgressDeniedBy)
	}
}

func resp(verdict, dir, srcNS, srcPod, dstNS, dstPod string, srcLabels []string, proto string, sport, dport uint16, at time.Time) *Response {
	f := &Flow{Time: at, Verdict: verdict, TrafficDirection: dir,
		Source:      &Endpoint{Namespace: srcNS, PodName: srcPod, Labels: srcLabels},
		Destination: &Endpoint{Namespace: dstNS, PodName: dstPod}}
	switch proto {
	case "TCP":
		f.L4 = &Layer4{TCP: &TCP{SourcePort: sport, DestinationPort: dport}}
	case "UDP":
		f.L4 = &Layer4{UDP: &UDP{SourcePort: sport, DestinationPort: dport}}
	}
	return &Response{Flow: f, Time: at}
}

func TestFilter(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	drop := resp(VerdictDropped, Ingress, "a", "client", "b", "server", []string{"k8s:app=client", "k8s:tier=web"}, "TCP", 40000, 80, t0)
	fwd := resp(VerdictForwarded, Egress, "b", "server", "", "", nil, "UDP", 5353, 53, t0.Add(time.Minute))
	parse := func(ns, pod string, labels []string, verdict, port, proto, since string) Filter {
		t.Helper()
		f, err := ParseFilter(ns, pod, labels, verdict, port, proto, since, t0.Add(2*time.Minute))
		must(t, err)
		return f
	}
	for _, c := range []struct {
		name      string
		f         Filter
		drop, fwd bool
	}{
		{"empty", parse("", "", nil, "", "", "", ""), true, true},
		{"verdict any case", parse("", "", nil, "dropped", "", "", ""), true, false},
		{"namespace of the destination", parse("b", "", nil, "", "", "", ""), true, true},
		{"namespace of neither", parse("c", "", nil, "", "", "", ""), false, false},
		{"pod by name", parse("", "client", nil, "", "", "", ""), true, false},
		{"pod ns/name", parse("", "b/server", nil, "", "", "", ""), true, true},
		{"pod in another namespace", parse("", "a/server", nil, "", "", "", ""), false, false},
		{"namespace and pod on different sides", parse("a", "server", nil, "", "", "", ""), false, false},
		{"label without prefix", parse("", "", []string{"app=client"}, "", "", "", ""), true, false},
		{"labels all on one side", parse("", "", []string{"app=client", "k8s:tier=web"}, "", "", "", ""), true, false},
		{"label missing", parse("", "", []string{"app=client", "tier=db"}, "", "", "", ""), false, false},
		{"destination port", parse("", "", nil, "", "80", "", ""), true, false},
		{"source port", parse("", "", nil, "", "5353", "", ""), false, true},
		{"protocol", parse("", "", nil, "", "", "udp", ""), false, true},
		{"since a duration", parse("", "", nil, "", "", "", "90s"), false, true},
		{"since a time", parse("", "", nil, "", "", "", t0.Format(time.RFC3339)), true, true},
	} {
		if got := c.f.Match(drop); got != c.drop {
			t.Errorf("%s: matches the drop = %v, want %v", c.name, got, c.drop)
		}
		if got := c.f.Match(fwd); got != c.fwd {
			t.Errorf("%s: matches the forward = %v, want %v", c.name, got, c.fwd)
		}
		// What flatnetctl sends is what the agent applies.
		back, err := FilterFromQuery(c.f.Values(), t0)
		must(t, err)
		if back.Match(drop) != c.drop || back.Match(fwd) != c.fwd {
			t.Errorf("%s: the filter changes meaning through query parameters %v", c.name, c.f.Values())
		}
	}
}

func TestParseFilterErrorsNameTheField(t *testing.T) {
	for _, c := range []struct {
		labels                      []string
		verdict, port, proto, since string
		want                        string
	}{
		{verdict: "LOST", want: "verdict"},
		{port: "http", want: "port"},
		{port: "70000", want: "port"},
		{proto: "QUIC", want: "protocol"},
		{since: "yesterday", want: "since"},
		{labels: []string{"app"}, want: "label"},
	} {
		_, err := ParseFilter("", "", c.labels, c.verdict, c.port, c.proto, c.since, time.Now())
		if err == nil || !strings.HasPrefix(err.Error(), c.want+" ") {
			t.Errorf("%+v: error %v, want one starting with %q", c, err, c.want)
		}
	}
}

func TestStoreKeepsTheNewestAndFollowsWithoutGapOrDuplicate(t *testing.T) {
	s := NewStore(3)
	t0 := time.Now()
	mk := func(i int) *Response {
		return resp(VerdictForwarded, Ingress, "a", "p", "a", "q", nil, "TCP", uint16(1000+i), 80, t0.Add(time.Duration(i)*time.Second))
	}
	for i := 0; i < 5; i++ {
		s.Add(mk(i))
	}
	got := s.Recent(Filter{}, 0)
	if len(got) != 3 || got[0].Flow.L4.TCP.SourcePort != 1002 || got[2].Flow.L4.TCP.SourcePort != 1004 {
		t.Fatalf("history %s: want flows 2, 3, 4 oldest first", dump(got))
	}
	if got := s.Recent(Filter{}, 2); len(got) != 2 || got[0].Flow.L4.TCP.SourcePort != 1003 {
		t.Fatalf("last 2 = %s: want flows 3, 4", dump(got))
	}
	hist, live, stop := s.Follow(Filter{}, 1, 10)
	defer stop()
	s.Add(mk(5))
	if len(hist) != 1 || hist[0].Flow.L4.TCP.SourcePort != 1004 {
		t.Fatalf("follow history %s: want flow 4", dump(hist))
	}
	select {
	case r := <-live:
		if r.Flow.L4.TCP.SourcePort != 1005 {
			t.Fatalf("first live flow %s: want flow 5", dump([]*Response{r}))
		}
	case <-time.After(time.Second):
		t.Fatal("flow added after Follow never arrived")
	}
	stop()
	s.Add(mk(6)) // must not block or panic with no subscriber
}

// BenchmarkEnrich is the reader's cost per event (the datapath emits at most 2000
// events per second per CPU by default).
func BenchmarkEnrich(b *testing.B) {
	c := compile.New(identity.NewAllocator())
	if err := c.UpsertNamespace(compile.Namespace{Name: "default"}); err != nil {
		b.Fatal(err)
	}
	for i := 0; i < 1000; i++ {
		ip := netip.AddrFrom4([4]byte{10, 224, byte(i / 250), byte(1 + i%250)})
		if err := c.UpsertPod(compile.Pod{Namespace: "default", Name: fmt.Sprintf("p%d", i), IP: ip,
			Labels: map[string]string{"app": fmt.Sprintf("a%d", i%50)}, Local: i < 30}); err != nil {
			b.Fatal(err)
		}
	}
	c.Flush()
	en, err := NewEnricher("n", c.Latest())
	if err != nil {
		b.Fatal(err)
	}
	ev := bpf.FlowEvent{Src: netip.AddrFrom4([4]byte{10, 224, 1, 7}), Dst: netip.AddrFrom4([4]byte{10, 224, 0, 3}),
		SrcPort: 40000, DstPort: 80, Protocol: 6, TCPFlags: 2, Direction: policy.Ingress, Code: bpf.DropPolicy}
	store := NewStore(DefaultCapacity)
	b.ReportAllocs()
	for b.Loop() {
		f := en.Flow(ev)
		store.Add(&Response{Flow: f, NodeName: f.NodeName, Time: f.Time})
	}
}
