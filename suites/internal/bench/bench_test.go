package bench

import (
	"bytes"
	"encoding/json"
	"math"
	"strings"
	"testing"
	"time"
)

// A histogram as the kubelet exposes one, scraped twice.
const before = `# TYPE kubelet_runtime_operations_duration_seconds histogram
kubelet_runtime_operations_duration_seconds_bucket{operation_type="run_podsandbox",le="0.1"} 1
kubelet_runtime_operations_duration_seconds_bucket{operation_type="run_podsandbox",le="1"} 2
kubelet_runtime_operations_duration_seconds_bucket{operation_type="run_podsandbox",le="+Inf"} 2
kubelet_runtime_operations_duration_seconds_sum{operation_type="run_podsandbox"} 0.6
kubelet_runtime_operations_duration_seconds_count{operation_type="run_podsandbox"} 2
kubelet_runtime_operations_duration_seconds_bucket{operation_type="stop_podsandbox",le="0.1"} 7
kubelet_runtime_operations_duration_seconds_bucket{operation_type="stop_podsandbox",le="1"} 7
kubelet_runtime_operations_duration_seconds_bucket{operation_type="stop_podsandbox",le="+Inf"} 7
kubelet_runtime_operations_duration_seconds_sum{operation_type="stop_podsandbox"} 0.1
kubelet_runtime_operations_duration_seconds_count{operation_type="stop_podsandbox"} 7
`

func TestHistogramDeltaQuantileAndMean(t *testing.T) {
	// Ten more sandboxes: 0 under 100 ms, 10 between 100 ms and 1 s, summing 5 s.
	after := strings.NewReplacer(
		`run_podsandbox",le="1"} 2`, `run_podsandbox",le="1"} 12`,
		`run_podsandbox",le="+Inf"} 2`, `run_podsandbox",le="+Inf"} 12`,
		`_sum{operation_type="run_podsandbox"} 0.6`, `_sum{operation_type="run_podsandbox"} 5.6`,
		`_count{operation_type="run_podsandbox"} 2`, `_count{operation_type="run_podsandbox"} 12`,
	).Replace(before)
	s0, s1 := Scrape{}, Scrape{}
	if err := s0.merge([]byte(before), "before"); err != nil {
		t.Fatal(err)
	}
	if err := s1.merge([]byte(after), "after"); err != nil {
		t.Fatal(err)
	}
	sel := map[string]string{"operation_type": "run_podsandbox"}
	d := s1.Histogram("kubelet_runtime_operations_duration_seconds", sel).Sub(s0.Histogram("kubelet_runtime_operations_duration_seconds", sel))
	if d.Count != 10 || math.Abs(d.Mean()-0.5) > 1e-9 {
		t.Fatalf("delta: count %v mean %v, want 10 and 0.5 s", d.Count, d.Mean())
	}
	// p50: the 5th of 10 observations spread over (0.1, 1]: 0.1 + 0.9*5/10.
	if got := d.Quantile(0.5); math.Abs(got-0.55) > 1e-9 {
		t.Errorf("p50 = %v, want 0.55 (linear within the bucket)", got)
	}
	if got := d.Quantile(0.99); math.Abs(got-(0.1+0.9*0.99)) > 1e-9 {
		t.Errorf("p99 = %v", got)
	}
	if !math.IsNaN((Histogram{}).Quantile(0.5)) {
		t.Error("an empty histogram has no quantile: want NaN")
	}
}

func TestQuantileNearestRank(t *testing.T) {
	var ds []time.Duration
	for i := 1; i <= 30; i++ {
		ds = append(ds, time.Duration(i)*time.Second)
	}
	for q, want := range map[float64]time.Duration{0.5: 15 * time.Second, 0.9: 27 * time.Second, 1: 30 * time.Second} {
		if got := Quantile(ds, q); got != want {
			t.Errorf("Quantile(1..30 s, %v) = %s, want %s", q, got, want)
		}
	}
}

func TestPeersRatiosAndVerdicts(t *testing.T) {
	a := Result{CNI: "flatnet", Cluster: "a"}
	b := Result{CNI: "cilium", Cluster: "b"}
	a.Add(Figure{Name: "start-up", Unit: "ms", Value: 50, Better: Lower})
	b.Add(Figure{Name: "start-up", Unit: "ms", Value: 100, Better: Lower})
	a.Add(Figure{Name: "events/s", Unit: "1/s", Value: 50, Better: Higher})
	b.Add(Figure{Name: "events/s", Unit: "1/s", Value: 100, Better: Higher})
	a.Add(Figure{Name: "memory", Unit: "MiB", Value: 101, Better: Lower})
	b.Add(Figure{Name: "memory", Unit: "MiB", Value: 100, Better: Lower})
	b.Add(Figure{Name: "only cilium", Unit: "ms", Value: 1, Better: Lower})
	a.Add(Figure{Name: "not computed", Value: math.NaN()})
	tab := Peers(a, b)
	want := map[string]string{"start-up": "ahead", "events/s": "behind", "memory": "even", "only cilium": ""}
	if len(tab.Rows) != len(want) {
		t.Fatalf("rows %+v, want %d (a NaN figure is left out)", tab.Rows, len(want))
	}
	for _, r := range tab.Rows {
		if r.Verdict != want[r.Figure] {
			t.Errorf("%s: ratio %v verdict %q, want %q", r.Figure, r.Ratio, r.Verdict, want[r.Figure])
		}
	}
	var out bytes.Buffer
	if err := tab.Print(&out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "0.500") || !strings.Contains(out.String(), "load") {
		t.Errorf("table:\n%s", out.String())
	}
	js, err := json.Marshal(tab)
	if err != nil {
		t.Fatalf("a table with a missing side must still be JSON: %v", err)
	}
	if !strings.Contains(string(js), `"figure":"only cilium","unit":"ms","a":null`) && !strings.Contains(string(js), `"a":null`) {
		t.Errorf("a missing value is written as null: %s", js)
	}
}
