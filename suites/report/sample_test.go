package report

import (
	"net/netip"
	"testing"
	"time"

	"github.com/flatnet/flatnet/fixtures/oracle"
	"github.com/flatnet/flatnet/fixtures/policies"
	"github.com/flatnet/flatnet/fixtures/topology"
	"github.com/flatnet/flatnet/suites/reachability"
)

// sample builds a report the way a suite does, from real fixtures and the
// oracle; only the observed tables are made up here (a suite gets them from
// probes): one case passes, one has a datapath that lets everything through,
// one skipped, one broken in setup.
// (The broken one ignores policy on 80/TCP.)
type sample struct {
	report *Report
	// mismatches is how many cells were flipped in total.
	mismatches int
	model      topology.Model
}

// observe copies the expected table, flipping the cells flip selects.
func observe(t *testing.T, exp *reachability.Table, flip func(reachability.Key, reachability.Cell) bool) (*reachability.Table, int) {
	t.Helper()
	obs, err := reachability.NewTable(exp.Title, exp.From, exp.To, exp.Ports)
	if err != nil {
		t.Fatal(err)
	}
	flipped := 0
	for _, k := range exp.Keys() {
		c, _ := exp.Get(k)
		got := reachability.Cell{Reachable: c.Reachable}
		if flip(k, c) {
			got.Reachable = !got.Reachable
			flipped++
		}
		if !got.Reachable {
			got.Detail = "TIMEOUT"
		}
		if err := obs.Set(k, got); err != nil {
			t.Fatal(err)
		}
	}
	return obs, flipped
}

func buildSample(t *testing.T) sample {
	t.Helper()
	m := topology.Default("", false)
	subnet := netip.MustParsePrefix("10.224.0.0/16")
	cluster, err := m.PlannedCluster(subnet, 2)
	if err != nil {
		t.Fatal(err)
	}
	env := policies.Env{Model: m, Cluster: cluster, NodeSubnet: subnet, WorldCIDR: netip.MustParsePrefix("192.0.2.0/24")}
	cases, err := policies.All(env)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]policies.Case{}
	for _, c := range cases {
		byName[c.Name] = c
	}
	s := sample{model: m, report: &Report{
		Title:   "flatnet policy conformance (sample)",
		Started: time.Date(2026, 11, 26, 6, 0, 0, 0, time.UTC),
		Notes:   []string{"random seed 20261126 (replay: FLATNET_POLICY_SEED=20261126)", "image flatnet/probe:dev"},
	}}
	run := func(c policies.Case, flip func(reachability.Key, reachability.Cell) bool, withFlows bool) CaseResult {
		res := CaseResult{Name: c.Name, Family: c.Family, Description: c.Description}
		for i, st := range c.Steps {
			o, err := oracle.New(cluster, st.Policies)
			if err != nil {
				t.Fatal(err)
			}
			manifest, err := policies.Manifests(st.Policies)
			if err != nil {
				t.Fatal(err)
			}
			sr := StepResult{Name: st.Name, Duration: time.Duration(1500+250*i) * time.Millisecond, Manifest: string(manifest)}
			for _, r := range policies.Refs(st.Policies) {
				sr.Policies = append(sr.Policies, r.String())
			}
			for _, via := range []bool{false, true} {
				title := "by pod IP"
				if via {
					title = "through Services"
				}
				exp, err := reachability.Expected(o, title, append(reachability.ModelEndpoints(m, false), reachability.NodeEndpoints(cluster)...), reachability.ModelEndpoints(m, via), reachability.ModelPorts(m))
				if err != nil {
					t.Fatal(err)
				}
				obs, n := observe(t, exp, flip)
				cmp, err := reachability.Compare(title, exp, obs)
				if err != nil {
					t.Fatal(err)
				}
				if withFlows {
					for _, mm := range cmp.Mismatches {
						cmp.SetFlows(mm.Key, []string{
							"Nov 26 06:00:01.123: " + mm.From + " -> " + mm.To + " " + mm.PortProtocol.String() + " FORWARDED (no policy verdict)",
						})
					}
				}
				s.mismatches += n
				sr.Comparisons = append(sr.Comparisons, cmp)
			}
			res.Steps = append(res.Steps, sr)
		}
		return res
	}
	never := func(reachability.Key, reachability.Cell) bool { return false }
	// A datapath that ignores policy on 80/TCP: every block expected there
	// is observed open; other ports behave.
	enforcesNothing := func(k reachability.Key, c reachability.Cell) bool {
		return !c.Reachable && k.PortProtocol == reachability.PortProtocol{Port: 80, Protocol: oracle.TCP}
	}
	s.report.Cases = append(s.report.Cases,
		run(byName["np-pod-selector"], never, false),
		run(byName["np-deny-all-ingress"], enforcesNothing, true),
		CaseResult{Name: "np-sctp", Family: policies.FamilyNetworkPolicy, Skipped: "no SCTP in this kernel (CONFIG_IP_SCTP is not set)"},
		CaseResult{Name: "cnp-broken-setup", Family: policies.FamilyCilium, Error: "create CiliumNetworkPolicy x/a-from-b: the server could not find the requested resource"},
	)
	return s
}
