package metrics

import (
	"context"
	"errors"
	"io"
	"net/netip"
	"testing"
	"time"

	"github.com/flatnet/flatnet/dataplane/bpf"
	"github.com/flatnet/flatnet/dataplane/compile"
	"github.com/flatnet/flatnet/dataplane/flows"
	"github.com/flatnet/flatnet/dataplane/flows/flowstest"
	"github.com/flatnet/flatnet/dataplane/identity"
	"github.com/flatnet/flatnet/dataplane/policy"
)

var (
	serverIP, clientIP, worldIP = flowstest.ServerIP, flowstest.ClientIP, flowstest.WorldIP
	nodeIP                      = netip.MustParseAddr("10.224.0.2")
)

type lostCount uint64

func (n lostCount) EventsLost(context.Context) (uint64, error) { return uint64(n), nil }

// scenario is a node with pods server and client, server's ingress allowed from
// client on TCP 80 and denied on 8080 (so default deny elsewhere), client's
// egress unrestricted; and the datapath's events of a few connections.
type scenario struct {
	en     *flows.Enricher
	events []bpf.FlowEvent
}

func newScenario(t testing.TB) scenario {
	t.Helper()
	c := flowstest.Compiler(t, `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
`)
	allow, err := c.Explain("default", "server", policy.Ingress, clientIP, policy.ProtoTCP, 80)
	must(t, err)
	deny, err := c.Explain("default", "server", policy.Ingress, clientIP, policy.ProtoTCP, 8080)
	must(t, err)
	if !allow.Allowed || allow.RuleID == 0 || !deny.Deny || deny.RuleID == 0 {
		t.Fatalf("compiler decisions %+v, %+v: want the allow and the deny rule", allow, deny)
	}
	server, _ := c.IdentityOf("default", "server")
	client, _ := c.IdentityOf("default", "client")
	en, err := flows.NewEnricher("node-a", c.Latest())
	must(t, err)
	const syn, ack, fin = 0x02, 0x10, 0x01
	in := func(dport uint16, flags uint8, code bpf.Code, rule compile.RuleID) bpf.FlowEvent {
		return bpf.FlowEvent{Src: clientIP, Dst: serverIP, SrcPort: 41000, DstPort: dport, Protocol: 6, TCPFlags: flags,
			Direction: policy.Ingress, Code: code, RuleID: rule, RemoteIdentity: client, LocalIdentity: server}
	}
	out := func(dst netip.Addr, remote identity.ID, proto uint8, dport uint16, flags uint8, code bpf.Code) bpf.FlowEvent {
		return bpf.FlowEvent{Src: clientIP, Dst: dst, SrcPort: 41000, DstPort: dport, Protocol: proto, TCPFlags: flags,
			Direction: policy.Egress, Code: code, RemoteIdentity: remote, LocalIdentity: client}
	}
	return scenario{en: en, events: []bpf.FlowEvent{
		in(80, syn, bpf.ForwardPolicy, allow.RuleID),                 // allowed by the rule
		in(8080, syn, bpf.DropPolicyDeny, deny.RuleID),               // denied by the deny rule
		in(443, syn, bpf.DropPolicy, 0),                              // default deny
		in(443, syn, bpf.DropPolicy, 0),                              // again
		out(worldIP, identity.World, 6, 443, syn, bpf.ForwardPolicy), // egress not enforced
		out(nodeIP, identity.Host, 6, 10250, syn, bpf.ForwardHost),   // to the node: always allowed
		in(80, syn|ack, bpf.ForwardPolicy, allow.RuleID),             // a SYN-ACK is not a SYN
		out(worldIP, identity.World, 6, 443, fin|ack, bpf.ForwardPolicy),
		out(worldIP, identity.World, 1, 0, 0, bpf.ForwardPolicy),       // ICMP echo
		out(worldIP, identity.World, 17, 53, 0, bpf.DropInvalidSource), // not a policy drop
	}}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// run hands the scenario's events to m through the agent's flow reader loop.
func (s scenario) run(t *testing.T, m *Metrics) {
	t.Helper()
	evs := flowstest.Events(s.events)
	err := flows.Run(context.Background(), &evs, s.en, flows.NewStore(100), m.Observe)
	if !errors.Is(err, io.EOF) {
		t.Fatalf("flows.Run: %v, want the reader's io.EOF", err)
	}
}

// The datapath's flows, named by the enricher and counted as Hubble counts its
// flows: the expected values follow Hubble's definitions (see each comment).
func TestFlowsCountedAsHubbleCounts(t *testing.T) {
	m, reg := newRegistered(t, "flow drop tcp port-distribution policy flows-to-world", Config{Datapath: lostCount(7)})
	newScenario(t).run(t, m)
	// Every flow, by L4 protocol, event type (forwarded flows are traces, observed
	// where they enter (to-endpoint) or leave (from-endpoint) the pod), verdict.
	compare(t, reg, `# HELP hubble_flows_processed_total Total number of flows processed
# TYPE hubble_flows_processed_total counter
hubble_flows_processed_total{protocol="TCP",subtype="to-endpoint",type="Trace",verdict="FORWARDED"} 2
hubble_flows_processed_total{protocol="TCP",subtype="from-endpoint",type="Trace",verdict="FORWARDED"} 3
hubble_flows_processed_total{protocol="ICMPv4",subtype="from-endpoint",type="Trace",verdict="FORWARDED"} 1
hubble_flows_processed_total{protocol="TCP",subtype="",type="Drop",verdict="DROPPED"} 3
hubble_flows_processed_total{protocol="UDP",subtype="",type="Drop",verdict="DROPPED"} 1
`, "hubble_flows_processed_total")
	// Drops by Cilium's drop reason name.
	compare(t, reg, `# HELP hubble_drop_total Number of drops
# TYPE hubble_drop_total counter
hubble_drop_total{protocol="TCP",reason="POLICY_DENY"} 1
hubble_drop_total{protocol="TCP",reason="POLICY_DENIED"} 2
hubble_drop_total{protocol="UDP",reason="INVALID_SOURCE_IP"} 1
`, "hubble_drop_total")
	// Forwarded TCP only; SYN with ACK is SYN-ACK; FIN counted; dropped SYNs not.
	compare(t, reg, `# HELP hubble_tcp_flags_total TCP flag occurrences
# TYPE hubble_tcp_flags_total counter
hubble_tcp_flags_total{family="IPv4",flag="SYN"} 3
hubble_tcp_flags_total{family="IPv4",flag="SYN-ACK"} 1
hubble_tcp_flags_total{family="IPv4",flag="FIN"} 1
`, "hubble_tcp_flags_total")
	// Forwarded, non-reply flows by destination port; ICMP is port 0.
	compare(t, reg, `# HELP hubble_port_distribution_total Numbers of packets distributed by destination port
# TYPE hubble_port_distribution_total counter
hubble_port_distribution_total{port="80",protocol="TCP"} 2
hubble_port_distribution_total{port="443",protocol="TCP"} 2
hubble_port_distribution_total{port="10250",protocol="TCP"} 1
hubble_port_distribution_total{port="0",protocol="ICMPv4"} 1
`, "hubble_port_distribution_total")
	// Policy decisions only (not the node's traffic, nor the invalid-source drop).
	compare(t, reg, `# HELP hubble_policy_verdicts_total Total number of Cilium network policy verdicts
# TYPE hubble_policy_verdicts_total counter
hubble_policy_verdicts_total{action="forwarded",direction="ingress",match="unknown"} 2
hubble_policy_verdicts_total{action="dropped",direction="ingress",match="unknown"} 1
hubble_policy_verdicts_total{action="dropped",direction="ingress",match="none"} 2
hubble_policy_verdicts_total{action="forwarded",direction="egress",match="all"} 3
`, "hubble_policy_verdicts_total")
	// To reserved:world; the invalid-source drop is not a policy drop.
	compare(t, reg, `# HELP hubble_flows_to_world_total Total number of flows to reserved:world
# TYPE hubble_flows_to_world_total counter
hubble_flows_to_world_total{protocol="TCP",verdict="FORWARDED"} 2
hubble_flows_to_world_total{protocol="ICMPv4",verdict="FORWARDED"} 1
`, "hubble_flows_to_world_total")
	// The datapath's lost events, and none between the reader and the metrics.
	compare(t, reg, `# HELP hubble_lost_events_total Number of lost events
# TYPE hubble_lost_events_total counter
hubble_lost_events_total{source="perf_event_ring_buffer"} 7
hubble_lost_events_total{source="observer_events_queue"} 0
`, "hubble_lost_events_total")
	m.LostEvents().Add(LostRingBuffer, 3)
	compare(t, reg, `# HELP hubble_lost_events_total Number of lost events
# TYPE hubble_lost_events_total counter
hubble_lost_events_total{source="perf_event_ring_buffer"} 7
hubble_lost_events_total{source="observer_events_queue"} 0
hubble_lost_events_total{source="hubble_ring_buffer"} 3
`, "hubble_lost_events_total")
}

// flows-to-world's options: any-drop counts every drop, port adds the destination
// port, syn-only keeps TCP SYNs only (and so no other protocol).
func TestFlowsToWorldOptions(t *testing.T) {
	m, reg := newRegistered(t, "flows-to-world:any-drop;port;syn-only", Config{})
	newScenario(t).run(t, m)
	compare(t, reg, `# HELP hubble_flows_to_world_total Total number of flows to reserved:world
# TYPE hubble_flows_to_world_total counter
hubble_flows_to_world_total{port="443",protocol="TCP",verdict="FORWARDED"} 1
`, "hubble_flows_to_world_total")

	m, reg = newRegistered(t, "flows-to-world:any-drop;port", Config{})
	newScenario(t).run(t, m)
	compare(t, reg, `# HELP hubble_flows_to_world_total Total number of flows to reserved:world
# TYPE hubble_flows_to_world_total counter
hubble_flows_to_world_total{port="443",protocol="TCP",verdict="FORWARDED"} 2
hubble_flows_to_world_total{port="",protocol="ICMPv4",verdict="FORWARDED"} 1
hubble_flows_to_world_total{port="53",protocol="UDP",verdict="DROPPED"} 1
`, "hubble_flows_to_world_total")
}

// Contexts on flatnet's own flows: namespace and pod of both sides, the world
// peer by its reserved identity.
func TestContextsOfFlatnetFlows(t *testing.T) {
	m, reg := newRegistered(t, "drop:sourceContext=pod;destinationContext=pod|reserved-identity", Config{})
	newScenario(t).run(t, m)
	compare(t, reg, `# HELP hubble_drop_total Number of drops
# TYPE hubble_drop_total counter
hubble_drop_total{destination="default/server",protocol="TCP",reason="POLICY_DENY",source="default/client"} 1
hubble_drop_total{destination="default/server",protocol="TCP",reason="POLICY_DENIED",source="default/client"} 2
hubble_drop_total{destination="reserved:world",protocol="UDP",reason="INVALID_SOURCE_IP",source="default/client"} 1
`, "hubble_drop_total")
}

// With no metric enabled nothing is registered, not even the lost events (as
// in Cilium), and flows cost nothing.
func TestNoMetrics(t *testing.T) {
	m, err := New(Config{Datapath: lostCount(7)})
	must(t, err)
	if cs := m.Collectors(); len(cs) != 0 {
		t.Errorf("collectors %v, want none", cs)
	}
	newScenario(t).run(t, m)
	m.LostEvents().Add(LostRingBuffer, 1) // no metric to count it in: ignored
	m.PodDeleted("default", "client")
}

// BenchmarkObserve is the per-flow cost of the metrics, the flows in Hubble's
// form already built (the observer and the exporter share that work): the
// default set, and the default set with pod contexts (what ACNS-style
// dashboards ask for).
func BenchmarkObserve(b *testing.B) {
	for name, spec := range map[string]string{
		"default": DefaultSpec,
		"contexts": "drop:labelsContext=source_namespace,source_pod,destination_namespace,destination_pod,traffic_direction " +
			"flow:sourceContext=pod;destinationContext=pod|reserved-identity tcp port-distribution",
	} {
		b.Run(name, func(b *testing.B) {
			specs, err := ParseSpecs(spec)
			must(b, err)
			m, err := New(Config{Specs: specs})
			must(b, err)
			rs := scenarioResponses(b)
			for _, r := range rs {
				r.Proto()
			}
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				m.Observe(rs[i%len(rs)])
			}
		})
	}
}

// BenchmarkObserveConverting adds building each flow's Hubble form, which the
// first consumer of a flow pays.
func BenchmarkObserveConverting(b *testing.B) {
	specs, err := ParseSpecs(DefaultSpec)
	must(b, err)
	m, err := New(Config{Specs: specs})
	must(b, err)
	rs := scenarioResponses(b)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		r := rs[i%len(rs)]
		m.Observe(&flows.Response{Flow: r.Flow, NodeName: r.NodeName, Time: r.Time})
	}
}

func scenarioResponses(b *testing.B) []*flows.Response {
	s := newScenario(b)
	var rs []*flows.Response
	for _, ev := range s.events {
		ev.Monotonic = time.Second
		f := s.en.Flow(ev)
		rs = append(rs, &flows.Response{Flow: f, NodeName: f.NodeName, Time: f.Time})
	}
	return rs
}
