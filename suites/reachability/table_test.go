package reachability

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/flatnet/flatnet/fixtures/oracle"
	"github.com/flatnet/flatnet/fixtures/policies"
	"github.com/flatnet/flatnet/fixtures/topology"
)

// planned is the default model on a planned two-node cluster, as the policy
// suites lay it out.
func planned(tb testing.TB) (topology.Model, oracle.Cluster, policies.Env) {
	tb.Helper()
	m := topology.Default("", false)
	subnet := netip.MustParsePrefix("10.224.0.0/16")
	cluster, err := m.PlannedCluster(subnet, 2)
	if err != nil {
		tb.Fatal(err)
	}
	return m, cluster, policies.Env{Model: m, Cluster: cluster, NodeSubnet: subnet, WorldCIDR: netip.MustParsePrefix("192.0.2.0/24")}
}

func TestTableRejectsBadShapes(t *testing.T) {
	ports := []PortProtocol{{Port: 80, Protocol: oracle.TCP}}
	if _, err := NewTable("t", []string{"a", "a"}, []string{"b"}, ports); err == nil {
		t.Error("duplicate row labels accepted")
	}
	if _, err := NewTable("t", []string{"a"}, nil, ports); err == nil {
		t.Error("no columns accepted")
	}
	tb, err := NewTable("t", []string{"a"}, []string{"b"}, ports)
	if err != nil {
		t.Fatal(err)
	}
	if err := tb.Set(Key{From: "a", To: "c", PortProtocol: ports[0]}, Cell{}); err == nil {
		t.Error("a cell outside the table accepted")
	}
	other, _ := NewTable("t", []string{"a"}, []string{"b", "c"}, ports)
	if _, err := Compare("c", tb, other); err == nil {
		t.Error("tables of different shapes compared")
	}
}

// The oracle's tables of real fixture cases against a datapath that ignores
// policy on 80/TCP (every block expected there is observed open): Compare
// finds exactly the opened cells, each with the oracle's reason.
func TestCompareFindsMismatchesAndMissing(t *testing.T) {
	m, cluster, env := planned(t)
	cases, err := policies.All(env)
	if err != nil {
		t.Fatal(err)
	}
	broken := PortProtocol{Port: 80, Protocol: oracle.TCP}
	var comparisons []*Comparison
	opened := 0
	for _, c := range cases {
		if c.Name != "np-pod-selector" && c.Name != "np-deny-all-ingress" {
			continue
		}
		for _, st := range c.Steps {
			o, err := oracle.New(cluster, st.Policies)
			if err != nil {
				t.Fatal(err)
			}
			for _, via := range []bool{false, true} {
				exp, err := Expected(o, c.Name, append(ModelEndpoints(m, false), NodeEndpoints(cluster)...), ModelEndpoints(m, via), ModelPorts(m))
				if err != nil {
					t.Fatal(err)
				}
				obs, err := NewTable(exp.Title, exp.From, exp.To, exp.Ports)
				if err != nil {
					t.Fatal(err)
				}
				for _, k := range exp.Keys() {
					want, _ := exp.Get(k)
					got := Cell{Reachable: want.Reachable || k.PortProtocol == broken, Detail: "TIMEOUT"}
					if got.Reachable != want.Reachable {
						opened++
					}
					if err := obs.Set(k, got); err != nil {
						t.Fatal(err)
					}
				}
				cmp, err := Compare(exp.Title, exp, obs)
				if err != nil {
					t.Fatal(err)
				}
				comparisons = append(comparisons, cmp)
			}
		}
	}
	if len(comparisons) == 0 {
		t.Fatal("fixtures/policies has neither np-pod-selector nor np-deny-all-ingress")
	}
	var mismatches, missing int
	for _, cmp := range comparisons {
		mismatches += len(cmp.Mismatches)
		missing += len(cmp.Missing)
		for _, mm := range cmp.Mismatches {
			// The broken datapath only ever opens what should be blocked.
			if mm.Expected.Reachable || !mm.Observed.Reachable {
				t.Errorf("%s: expected %v observed %v", mm.Key, mm.Expected.Reachable, mm.Observed.Reachable)
			}
			if len(mm.Expected.Policies) == 0 || !strings.Contains(mm.Expected.Detail, "denied") {
				t.Errorf("%s: mismatch lacks the oracle's reason or policies: %+v", mm.Key, mm.Expected)
			}
		}
	}
	if mismatches != opened || mismatches == 0 || missing != 0 {
		t.Errorf("found %d mismatches and %d missing; %d were made", mismatches, missing, opened)
	}
	// A cell never observed is reported as missing.
	cmp := comparisons[0]
	obs, _ := NewTable(cmp.Observed.Title, cmp.Observed.From, cmp.Observed.To, cmp.Observed.Ports)
	again, err := Compare("partial", cmp.Expected, obs)
	if err != nil {
		t.Fatal(err)
	}
	if len(again.Missing) != len(cmp.Expected.Keys()) || again.OK() {
		t.Errorf("empty observed table: %d missing of %d, OK=%v", len(again.Missing), len(cmp.Expected.Keys()), again.OK())
	}
}

// BenchmarkExpectedTable measures the oracle filling one conformance table:
// 9 pods and 2 nodes to 9 pods, 4 ports, through Services.
func BenchmarkExpectedTable(b *testing.B) {
	m, cluster, env := planned(b)
	c, err := policies.RandomCase(env, 1, 0)
	if err != nil {
		b.Fatal(err)
	}
	o, err := oracle.New(cluster, c.Steps[0].Policies)
	if err != nil {
		b.Fatal(err)
	}
	from := append(ModelEndpoints(m, false), NodeEndpoints(cluster)...)
	for b.Loop() {
		if _, err := Expected(o, "bench", from, ModelEndpoints(m, true), ModelPorts(m)); err != nil {
			b.Fatal(err)
		}
	}
}
