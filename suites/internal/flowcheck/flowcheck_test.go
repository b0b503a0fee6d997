package flowcheck

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flatnet/flatnet/dataplane/flows"
	"github.com/flatnet/flatnet/dataplane/hubble/observer"
	"github.com/flatnet/flatnet/dataplane/hubble/observer/observertest"
	"github.com/flatnet/flatnet/fixtures/oracle"
	"github.com/flatnet/flatnet/suites/internal/workload"
	"github.com/flatnet/flatnet/suites/reachability"
)

// The cluster of these tests: pods x/a (node one) and x/b (node two), each
// serving TCP 80, with NetworkPolicy x/deny-b isolating b for ingress.
var (
	ipA, ipB   = netip.MustParseAddr("10.224.1.10"), netip.MustParseAddr("10.224.2.11")
	ipOne      = netip.MustParseAddr("10.224.0.2")
	ipTwo      = netip.MustParseAddr("10.224.0.3")
	port80     = reachability.PortProtocol{Port: 80, Protocol: oracle.TCP}
	denyB      = oracle.PolicyRef{Kind: oracle.KindNetworkPolicy, Namespace: "x", Name: "deny-b"}
	otherRef   = oracle.PolicyRef{Kind: oracle.KindNetworkPolicy, Namespace: "x", Name: "other"}
	tcp80Ports = []oracle.ContainerPort{{Name: "serve-80-tcp", Port: 80, Protocol: oracle.TCP}}
)

func testOracle(t *testing.T) *oracle.Oracle {
	t.Helper()
	c := oracle.Cluster{
		Namespaces: []oracle.Namespace{{Name: "x"}},
		Nodes:      []oracle.Node{{Name: "one", IP: ipOne}, {Name: "two", IP: ipTwo}},
		Pods: []oracle.Pod{
			{Namespace: "x", Name: "a", Labels: map[string]string{"pod": "a"}, IP: ipA, Node: "one", Ports: tcp80Ports},
			{Namespace: "x", Name: "b", Labels: map[string]string{"pod": "b"}, IP: ipB, Node: "two", Ports: tcp80Ports},
		},
	}
	np := networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "deny-b"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"pod": "b"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
		},
	}
	o, err := oracle.New(c, oracle.PolicySet{NetworkPolicies: []networkingv1.NetworkPolicy{np}})
	if err != nil {
		t.Fatal(err)
	}
	return o
}

// comparison is the oracle's table for a -> b and b -> a on 80/TCP, observed
// as given (true: reachable).
func comparison(t *testing.T, o *oracle.Oracle, aToB, bToA bool) *reachability.Comparison {
	t.Helper()
	eps := []reachability.Endpoint{{Label: "x/a", Peer: oracle.PodPeer("x", "a")}, {Label: "x/b", Peer: oracle.PodPeer("x", "b")}}
	exp, err := reachability.Expected(o, "t", eps, eps, []reachability.PortProtocol{port80})
	if err != nil {
		t.Fatal(err)
	}
	obs, _ := reachability.NewTable("t", exp.From, exp.To, exp.Ports)
	for _, k := range exp.Keys() {
		c, _ := exp.Get(k)
		switch {
		case k.From == "x/a" && k.To == "x/b":
			c.Reachable = aToB
		case k.From == "x/b" && k.To == "x/a":
			c.Reachable = bToA
		}
		if err := obs.Set(k, reachability.Cell{Reachable: c.Reachable, Detail: "probe"}); err != nil {
			t.Fatal(err)
		}
	}
	cmp, err := reachability.Compare("t", exp, obs)
	if err != nil {
		t.Fatal(err)
	}
	return cmp
}

// flow is a datapath record as flatnet's enricher writes it.
type flow struct {
	at       time.Time
	node     string
	dir      string // flows.Ingress or flows.Egress
	src, dst netip.Addr
	sport    uint16
	verdict  string
	reason   string // drop_reason_desc
	syn, ack bool
	deniedBy []oracle.PolicyRef
}

func (f flow) response() *flows.Response {
	fl := &flows.Flow{
		Time: f.at, Verdict: f.verdict, DropReasonDesc: f.reason, NodeName: f.node, TrafficDirection: f.dir, Type: "L3_L4",
		IP: &flows.IP{Source: f.src.String(), Destination: f.dst.String(), IPVersion: "IPv4"},
		L4: &flows.Layer4{TCP: &flows.TCP{SourcePort: f.sport, DestinationPort: 80, Flags: &flows.TCPFlags{SYN: f.syn, ACK: f.ack}}},
	}
	if f.verdict == flows.VerdictDropped {
		fl.DropReason = 133
	}
	for _, r := range f.deniedBy {
		p := &flows.Policy{Name: r.Name, Namespace: r.Namespace, Kind: string(r.Kind)}
		if f.dir == flows.Egress {
			fl.EgressDeniedBy = append(fl.EgressDeniedBy, p)
		} else {
			fl.IngressDeniedBy = append(fl.IngressDeniedBy, p)
		}
	}
	return &flows.Response{Flow: fl, NodeName: f.node, Time: f.at}
}

// serve runs flatnet's Observer over a store holding fs, on a real gRPC
// server, and returns a strict Checker reading it.
func serve(t *testing.T, fs ...flow) *Checker {
	t.Helper()
	store := flows.NewStore(0)
	for _, f := range fs {
		store.Add(f.response())
	}
	srv := observertest.Serve(t, observer.New(store, observer.Config{NodeName: "one", Version: "flatnet test"}))
	return &Checker{Client: srv.Client, Mode: Strict, Nodes: []netip.Addr{ipOne, ipTwo}, Settle: time.Millisecond, Retries: -1}
}

func probes(t *testing.T, cmp *reachability.Comparison) []Probe {
	t.Helper()
	var out []Probe
	for _, k := range cmp.Expected.Keys() {
		if k.From == k.To {
			continue
		}
		src, dst := ipA, ipB
		if k.From == "x/b" {
			src, dst = ipB, ipA
		}
		to := reachability.Endpoint{Label: k.To, Peer: oracle.PodPeer("x", strings.TrimPrefix(k.To, "x/"))}
		p, err := ProbeOf(snapshot(), cmp, k, src, to)
		if err != nil {
			t.Fatal(err)
		}
		if p.Addr != dst {
			t.Fatalf("%s: probe aims at %s, want %s", k, p.Addr, dst)
		}
		out = append(out, p)
	}
	return out
}

func find(fs []Finding, from string) Finding {
	for _, f := range fs {
		if f.Probe.Key.From == from {
			return f
		}
	}
	return Finding{}
}

// A window that started a second ago and ended now; flows inside it are
// stamped at mid.
func window() (Window, time.Time) {
	end := time.Now()
	return Window{Start: end.Add(-time.Second), End: end}, end.Add(-500 * time.Millisecond)
}

func TestDeniedProvenByPolicyDropAtTheOraclesEnd(t *testing.T) {
	o := testOracle(t)
	w, mid := window()
	allowedFlows := []flow{
		{at: mid, node: "two", dir: flows.Egress, src: ipB, dst: ipA, sport: 40000, verdict: flows.VerdictForwarded, syn: true},
		{at: mid, node: "one", dir: flows.Ingress, src: ipB, dst: ipA, sport: 40000, verdict: flows.VerdictForwarded, syn: true},
	}
	drop := flow{at: mid, node: "two", dir: flows.Ingress, src: ipA, dst: ipB, sport: 41000, verdict: flows.VerdictDropped, reason: "POLICY_DENIED", syn: true, deniedBy: []oracle.PolicyRef{denyB}}
	// A drop before the window: an earlier poll's, never this one's proof.
	stale := drop
	stale.at = w.Start.Add(-10 * time.Second)
	// Another source's flows are left out by the query's filter.
	stranger := drop
	stranger.src = netip.MustParseAddr("10.224.9.9")

	for _, tc := range []struct {
		name  string
		flows []flow
		class Class
		why   string
	}{
		{"policy drop at ingress of x/b naming deny-b", []flow{drop}, Proven, "dropped (POLICY_DENIED) at the ingress of x/b"},
		{"policy drop naming no policy", []flow{func() flow { d := drop; d.deniedBy = nil; return d }()}, Proven, "dropped"},
		{"no flow at all: a broken route or a lost packet", nil, WrongReason, "blocked for the wrong reason: no policy drop recorded at the ingress of x/b"},
		{"only a drop before the window", []flow{stale}, WrongReason, "blocked for the wrong reason"},
		{"only another source's drop", []flow{stranger}, WrongReason, "blocked for the wrong reason"},
		{"dropped by a policy the oracle does not name", []flow{func() flow { d := drop; d.deniedBy = []oracle.PolicyRef{otherRef}; return d }()}, WrongReason, "by NetworkPolicy x/other; the oracle names NetworkPolicy x/deny-b"},
		{"dropped at the other end", []flow{func() flow { d := drop; d.dir, d.node = flows.Egress, "one"; return d }()}, WrongReason, "dropped by policy at the egress; the oracle denies at the ingress of x/b"},
		{"dropped, not by policy", []flow{func() flow { d := drop; d.reason, d.deniedBy = "INVALID_SOURCE_IP", nil; return d }()}, WrongReason, "dropped for INVALID_SOURCE_IP, not by policy"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := serve(t, append(tc.flows, allowedFlows...)...)
			cmp := comparison(t, o, false, true)
			findings, _, err := c.Check(context.Background(), w, probes(t, cmp))
			if err != nil {
				t.Fatal(err)
			}
			got := find(findings, "x/a")
			if got.Class != tc.class || !strings.Contains(got.Why, tc.why) {
				t.Errorf("a -> b: %s (%s), want %s containing %q", got.Class, got.Why, tc.class, tc.why)
			}
			if back := find(findings, "x/b"); back.Class != Proven {
				t.Errorf("b -> a: %s (%s), want proven by its forwarded SYNs", back.Class, back.Why)
			}
			wrong := Apply(Strict, findings, []*reachability.Comparison{cmp})
			if (tc.class == WrongReason) != (len(cmp.WrongReason) == 1) || cmp.OK() != (tc.class == Proven) || len(wrong) != len(cmp.WrongReason) {
				t.Errorf("strict: %d wrong-reason cells recorded, OK=%v, for a %s cell", len(cmp.WrongReason), cmp.OK(), tc.class)
			}
		})
	}
}

func TestAllowedNeedsTheOpeningForwardedAtBothEnds(t *testing.T) {
	o := testOracle(t)
	w, mid := window()
	egress := flow{at: mid, node: "two", dir: flows.Egress, src: ipB, dst: ipA, sport: 40000, verdict: flows.VerdictForwarded, syn: true}
	ingress := flow{at: mid, node: "one", dir: flows.Ingress, src: ipB, dst: ipA, sport: 40000, verdict: flows.VerdictForwarded, syn: true}
	drop := flow{at: mid, node: "two", dir: flows.Ingress, src: ipA, dst: ipB, sport: 41000, verdict: flows.VerdictDropped, reason: "POLICY_DENIED", syn: true}
	for _, tc := range []struct {
		name  string
		flows []flow
		class Class
	}{
		{"both ends", []flow{egress, ingress}, Proven},
		{"egress only", []flow{egress}, WrongReason},
		{"a SYN-ACK is no opening", []flow{egress, func() flow { f := ingress; f.ack = true; return f }()}, WrongReason},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := serve(t, append(tc.flows, drop)...)
			findings, _, err := c.Check(context.Background(), w, probes(t, comparison(t, o, false, true)))
			if err != nil {
				t.Fatal(err)
			}
			if got := find(findings, "x/b"); got.Class != tc.class {
				t.Errorf("b -> a: %s (%s), want %s", got.Class, got.Why, tc.class)
			}
		})
	}
}

// A cell whose answer differs from the oracle's carries its flows into the
// comparison; warn mode records no wrong-reason cell but still returns it.
func TestMismatchCarriesFlowsAndWarnFailsNothing(t *testing.T) {
	o := testOracle(t)
	w, mid := window()
	c := serve(t,
		flow{at: mid, node: "one", dir: flows.Egress, src: ipA, dst: ipB, sport: 41000, verdict: flows.VerdictForwarded, syn: true},
		flow{at: mid, node: "two", dir: flows.Egress, src: ipB, dst: ipA, sport: 40000, verdict: flows.VerdictForwarded, syn: true},
	)
	cmp := comparison(t, o, true, true) // a -> b seen reachable, the oracle denies it
	findings, _, err := c.Check(context.Background(), w, probes(t, cmp))
	if err != nil {
		t.Fatal(err)
	}
	if got := find(findings, "x/a"); got.Class != Mismatched || len(got.Flows) != 1 {
		t.Fatalf("a -> b: %s with %d flows, want mismatched with its one flow", got.Class, len(got.Flows))
	}
	wrong := Apply(Warn, findings, []*reachability.Comparison{cmp})
	if len(wrong) != 1 || wrong[0].Probe.Key.From != "x/b" || len(cmp.WrongReason) != 0 {
		t.Errorf("warn: %d returned, %d recorded; want b -> a (no ingress flow) returned and nothing recorded", len(wrong), len(cmp.WrongReason))
	}
	if len(cmp.Mismatches) != 1 || len(cmp.Mismatches[0].Flows) != 1 || !strings.Contains(cmp.Mismatches[0].Flows[0], "EGRESS FORWARDED") {
		t.Errorf("mismatch flows: %+v", cmp.Mismatches)
	}
}

func TestParseModeNamesTheBadValue(t *testing.T) {
	for in, want := range map[string]Mode{"strict": Strict, "WARN": Warn, "warning": Warn, "off": Off, "disabled": Off} {
		if m, err := ParseMode("x", in); err != nil || m != want {
			t.Errorf("ParseMode(%q) = %q, %v; want %q", in, m, err, want)
		}
	}
	_, err := Choose("sloppy", "off")
	if err == nil || !strings.Contains(err.Error(), `--flow-validation="sloppy"`) || !strings.Contains(err.Error(), "strict, warn or off") {
		t.Errorf("Choose(sloppy): %v; want an error naming --flow-validation and the values", err)
	}
	if _, err := Choose("", "maybe"); err == nil || !strings.Contains(err.Error(), EnvName) {
		t.Errorf("env maybe: %v; want an error naming %s", err, EnvName)
	}
	if m, err := Choose("", ""); m != "" || err != nil {
		t.Errorf("nothing given: %q, %v; want the cluster's default", m, err)
	}
}

func snapshot() workload.Snapshot {
	return workload.Snapshot{PodIPs: map[string]netip.Addr{"x/a": ipA, "x/b": ipB}}
}
