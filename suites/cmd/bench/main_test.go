package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/flatnet/flatnet/suites/internal/bench"
	"github.com/flatnet/flatnet/suites/internal/perf"
)

func run(t *testing.T, args ...string) error {
	t.Helper()
	c := command()
	c.SetArgs(args)
	return c.Execute()
}

func TestAddEnforceAndDatapath(t *testing.T) {
	dir := t.TempDir()
	res := filepath.Join(dir, "r.json")
	if err := bench.WriteResult(res, bench.Result{CNI: "flatnet", Cluster: "c"}); err != nil {
		t.Fatal(err)
	}
	log := filepath.Join(dir, "enforce.log")
	os.WriteFile(log, []byte(`some ginkgo output
  apply -> enforced on 2 node(s), 20 applies with 1000 background policies: p50 61ms, p90 80ms, p99 95.5ms, max 1.2s
  delete -> lifted on 2 node(s), 20 deletes with 1000 background policies: p50 40ms, p90 50ms, p99 70ms, max 70ms
  apply -> enforced on 2 node(s), 4 applies: p50 1s, p90 1s, p99 1s, max 1s
  apply -> enforced on 2 node(s), 20 applies with 1000 background policies and 500 more pods: p50 12ms, p90 20ms, p99 31ms, max 31ms
`), 0o644)
	if err := run(t, "add-enforce", res, log); err != nil {
		t.Fatal(err)
	}
	summary := filepath.Join(dir, "summary.txt")
	os.WriteFile(summary, []byte(`== bare node netns: no netfilter rules (the lean path: IP forwarding only) ==
test dp                                ns/op    ops/s     wall ratio vs none   cpu-ns/op      cpu ratio vs none
CRR  none                              50000    20000  1.000 [1.000..1.000]       80000  1.000 [1.000..1.000]
CRR  prog+1000rules                    52000    19231  0.924 [0.910..0.950]       82000  0.976 [0.960..0.990]
CRR  prog                              52000    19000  0.924 [0.910..0.950]       82000  0.976 [0.960..0.990]
test dp                           prog-ns/op ns/prog-run  runs/op est. ratio events/op lost/op
CRR  prog+1000rules                     2000         500      4.0      0.960      0.00    0.00

== node netns with kube-proxy's NAT rules (as every Kubernetes node): netfilter conntrack on forwarded packets ==
CRR  none                              60000    16667  1.000 [1.000..1.000]       80000  1.000 [1.000..1.000]
CRR  prog+1000rules                    58000    17241  1.034 [1.010..1.050]       82000  0.976 [0.960..0.990]
`), 0o644)
	if err := run(t, "add-datapath", res, summary); err != nil {
		t.Fatal(err)
	}
	r, err := bench.ReadResult(res)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]float64{
		"policy apply -> enforced p50 (1000 policies present)":                  61,
		"policy apply -> enforced p99 (1000 policies present)":                  95.5,
		"policy delete -> lifted p99 (1000 policies present)":                   70,
		"policy apply -> enforced p99 (few policies present)":                   1000,
		"policy apply -> enforced p99 (1000 policies, 500 more pods present)":   31,
		"netns TCP_CRR ops/s, 1,000 rules (bare node netns)":                    19231,
		"netns TCP_CRR ops/s, 1,000 rules (node netns with kube-proxy's rules)": 17241,
	}
	for name, v := range want {
		f, ok := r.Figure(name)
		if !ok || f.Value != v {
			t.Errorf("%s: %+v (found %v), want %v", name, f, ok, v)
		}
	}
	if f, _ := r.Figure("netns TCP_CRR ops/s, 1,000 rules (bare node netns)"); f.Baseline == nil || *f.Baseline != 20000 {
		t.Errorf("the netns figure's baseline is dp=none's ops/s: %+v", f)
	}
	if err := run(t, "add-enforce", res, summary); err == nil {
		t.Error("a log without the benchmark's line must be an error")
	}
}

func TestMeasureRejectsBadFlagsBeforeTouchingAnything(t *testing.T) {
	t.Setenv("KUBECONFIG", "/nonexistent")
	for _, args := range [][]string{
		{"measure", "--cni", "calico", "--cluster", "c", "--out", "x", "--probe-image", "p"},
		{"measure", "--cni", "flatnet", "--cluster", "", "--out", "x", "--probe-image", "p"},
		{"measure", "--cni", "flatnet", "--cluster", "c", "--out", "x", "--probe-image", "p", "--pods", "0"},
	} {
		if err := run(t, args...); err == nil {
			t.Errorf("%v: want an error", args)
		}
	}
}

func TestAddPerf(t *testing.T) {
	dir := t.TempDir()
	res := filepath.Join(dir, "r.json")
	if err := bench.WriteResult(res, bench.Result{CNI: "cilium", Cluster: "c"}); err != nil {
		t.Fatal(err)
	}
	item := func(test string, path perf.Path, policies string, v float64) perf.DataItem {
		return perf.DataItem{Unit: "1/s", Data: map[string]float64{"Value": v}, Labels: map[string]string{
			"Metric": perf.MetricTransactions, "Test": test, "Path": path.Slug(), "Policies": policies}}
	}
	d := perf.PerfData{Version: perf.PerfdashVersion, DataItems: []perf.DataItem{
		item("TCP_CRR", perf.SameNode, "0", 5000), item("TCP_CRR", perf.SameNode, "1000", 4000),
		item("TCP_CRR", perf.HostToHost, "0", 6000), item("TCP_RR", perf.CrossNode, "1000", 9000),
		{Unit: "count", Data: map[string]float64{"Value": 1}, Labels: map[string]string{"Metric": perf.MetricFailed, "Test": "TCP_RR", "Path": perf.SameNode.Slug(), "Policies": "0", "Error": "boom"}},
	}}
	b, _ := json.Marshal(d)
	pj := filepath.Join(dir, "perf.json")
	os.WriteFile(pj, b, 0o644)
	if err := run(t, "add-perf", res, pj); err != nil {
		t.Fatal(err)
	}
	r, _ := bench.ReadResult(res)
	f, ok := r.Figure("TCP_CRR " + perf.SameNode.Slug() + ", 0 policies")
	if !ok || f.Value != 5000 || f.Baseline == nil || *f.Baseline != 6000 {
		t.Errorf("same-node CRR with 0 policies: %+v (found %v), want 5000 against host->host 6000", f, ok)
	}
	if f, ok := r.Figure("TCP_CRR " + perf.SameNode.Slug() + ", 1000 policies"); !ok || f.Value != 4000 || f.Baseline != nil {
		t.Errorf("with 1000 policies: %+v (found %v), want 4000 and no host->host of that count", f, ok)
	}
	if _, ok := r.Figure("TCP_RR " + perf.CrossNode.Slug() + ", 1000 policies"); !ok {
		t.Error("cross-node RR with 1000 policies is missing")
	}
}
