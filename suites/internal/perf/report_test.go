package perf

import (
	"bytes"
	"encoding/json"
	"errors"
	"image/png"
	"strings"
	"testing"

	probeperf "github.com/flatnet/flatnet/probes/perf"
)

func sampleReport() *Report {
	rr := func(tps, p50 float64) *probeperf.Result {
		return &probeperf.Result{TransactionsPerS: tps, LatencyUS: &probeperf.Latency{Min: p50 / 2, P50: p50, P90: p50 * 2, P99: p50 * 4, Max: p50 * 8}}
	}
	return &Report{
		Cluster: "kind-x", Nodes: []string{"a", "b"},
		Cells: []Cell{
			{Path: CrossNode, Test: probeperf.TCPRR, Policies: 0, Result: rr(10000, 80)},
			{Path: CrossNode, Test: probeperf.TCPStream, Policies: 0, Result: &probeperf.Result{GbitPerS: 3}},
			{Path: HostToHost, Test: probeperf.TCPRR, Policies: 0, Result: rr(20000, 40)},
			{Path: HostToHost, Test: probeperf.TCPStream, Policies: 0, Result: &probeperf.Result{GbitPerS: 4}},
			{Path: CrossNode, Test: probeperf.TCPRR, Policies: 1000, Err: errors.New("exec failed")},
			{Path: HostToHost, Test: probeperf.TCPRR, Policies: 1000, Result: rr(19000, 42)},
		},
		Load: []LoadSample{{When: "start", One: 1.5, Five: 1, Fifteen: 0.5}},
	}
}

// TestPerfdash reads perf.json back as bench-peers would: perfdash's v1 shape,
// each figure under its labels, ratios against host→host of the same phase, a
// failed cell marked failed with its error, the load averages.
func TestPerfdash(t *testing.T) {
	var buf bytes.Buffer
	if err := sampleReport().WritePerfdash(&buf); err != nil {
		t.Fatal(err)
	}
	var d PerfData
	if err := json.Unmarshal(buf.Bytes(), &d); err != nil {
		t.Fatal(err)
	}
	if d.Version != "v1" {
		t.Fatalf("version %q", d.Version)
	}
	find := func(metric, path, test, policies string) *DataItem {
		for i, it := range d.DataItems {
			l := it.Labels
			if l["Metric"] == metric && l["Path"] == path && l["Test"] == test && l["Policies"] == policies && l["Cluster"] == "kind-x" {
				return &d.DataItems[i]
			}
		}
		t.Fatalf("no %s item for %s %s %s in %s", metric, path, test, policies, buf.String())
		return nil
	}
	if it := find(MetricLatency, "pod-pod-2-nodes", "TCP_RR", "0"); it.Unit != "us" || it.Data["Perc50"] != 80 || it.Data["Perc99"] != 320 {
		t.Errorf("latency item %+v", it)
	}
	if it := find(MetricRatio, "pod-pod-2-nodes", "TCP_RR", "0"); it.Data["Value"] != 0.5 {
		t.Errorf("TCP_RR ratio %v; want 10000/20000 trans/s", it.Data)
	}
	if it := find(MetricRatio, "pod-pod-2-nodes", "TCP_STREAM", "0"); it.Data["Value"] != 0.75 {
		t.Errorf("TCP_STREAM ratio %v; want 3/4 Gbit/s", it.Data)
	}
	if it := find(MetricThroughput, "pod-pod-2-nodes", "TCP_STREAM", "0"); it.Unit != "Gbit/s" || it.Data["Value"] != 3 {
		t.Errorf("throughput item %+v", it)
	}
	if it := find(MetricFailed, "pod-pod-2-nodes", "TCP_RR", "1000"); it.Labels["Error"] != "exec failed" {
		t.Errorf("failed item %+v", it)
	}
	if it := find(MetricRatio, "host-host", "TCP_RR", "1000"); it.Data["Value"] != 1 {
		t.Errorf("the baseline's own ratio %v", it.Data)
	}
	var load bool
	for _, it := range d.DataItems {
		load = load || (it.Labels["Metric"] == MetricLoad && it.Data["Load1"] == 1.5)
	}
	if !load {
		t.Error("no load average item")
	}
}

func TestTableAndPlot(t *testing.T) {
	r := sampleReport()
	var buf bytes.Buffer
	if err := r.WriteTable(&buf); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(buf.String(), "\n")
	if !strings.HasPrefix(strings.TrimSpace(lines[1]), "path") || !strings.Contains(buf.String(), "FAILED pod→pod 2 nodes TCP_RR 1000 policies: exec failed") {
		t.Errorf("table:\n%s", buf.String())
	}
	// Every row is as wide as the header: the columns line up.
	for _, l := range lines[2 : 2+len(r.Cells)] {
		if len([]rune(l)) != len([]rune(lines[1])) {
			t.Errorf("row %q is not as wide as the header %q", l, lines[1])
		}
	}
	buf.Reset()
	if err := r.WritePNG(&buf); err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(&buf)
	if err != nil {
		t.Fatalf("perf.png is not a PNG: %v", err)
	}
	if b := img.Bounds(); b.Dx() < 400 || b.Dy() < 200 {
		t.Errorf("plot is %v", b)
	}
}
