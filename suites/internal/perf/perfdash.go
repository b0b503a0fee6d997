package perf

import (
	"encoding/json"
	"io"
	"strconv"

	probeperf "github.com/flatnet/flatnet/probes/perf"
)

// PerfdashVersion is the version perf-tests' perfdash reads.
const PerfdashVersion = "v1"

// DataItem and PerfData are Kubernetes perf-tests' perfdash format
// (perf-tests clusterloader2 pkg/measurement/util: PerfData, DataItem): the
// contract of perf.json, which `make bench-peers` reads.
type DataItem struct {
	// Data maps a bucket ("Perc50", "Value", ...) to its figure; items with the
	// same labels have the same buckets.
	Data   map[string]float64 `json:"data"`
	Unit   string             `json:"unit"`
	Labels map[string]string  `json:"labels,omitempty"`
}

type PerfData struct {
	Version   string     `json:"version"`
	DataItems []DataItem `json:"dataItems"`
}

// Metric label values of perf.json's items.
const (
	MetricLatency      = "latency"           // us: Min, Perc50, Perc90, Perc99, Max (RR tests)
	MetricTransactions = "transactions"      // 1/s: Value (RR tests)
	MetricThroughput   = "throughput"        // Gbit/s: Value (TCP_STREAM)
	MetricRatio        = "ratio-to-baseline" // ratio: Value, the headline over host→host's
	MetricLoss         = "errors"            // count: Lost, Errors (only when not both zero)
	MetricFailed       = "failed"            // count: Value 1; labels.Error says why
	MetricLoad         = "loadavg"           // Load1, Load5, Load15; labels.When
)

// Perfdash is the report in perfdash's format. Every cell item is labelled
// Cluster, Metric, Test, Path (a Path's Slug) and Policies.
func (r *Report) Perfdash() PerfData {
	d := PerfData{Version: PerfdashVersion, DataItems: []DataItem{}}
	add := func(c Cell, metric, unit string, data map[string]float64) {
		d.DataItems = append(d.DataItems, DataItem{Data: data, Unit: unit, Labels: map[string]string{
			"Cluster": r.Cluster, "Metric": metric, "Test": string(c.Test),
			"Path": c.Path.Slug(), "Policies": strconv.Itoa(c.Policies),
		}})
	}
	for _, c := range r.Cells {
		if c.Err != nil {
			add(c, MetricFailed, "count", map[string]float64{"Value": 1})
			d.DataItems[len(d.DataItems)-1].Labels["Error"] = c.Err.Error()
			continue
		}
		res := c.Result
		if l := res.LatencyUS; l != nil {
			add(c, MetricLatency, "us", map[string]float64{"Min": l.Min, "Perc50": l.P50, "Perc90": l.P90, "Perc99": l.P99, "Max": l.Max})
			add(c, MetricTransactions, "1/s", map[string]float64{"Value": res.TransactionsPerS})
		}
		if c.Test == probeperf.TCPStream {
			add(c, MetricThroughput, "Gbit/s", map[string]float64{"Value": res.GbitPerS})
		}
		if x := r.Ratio(c); x > 0 {
			add(c, MetricRatio, "ratio", map[string]float64{"Value": x})
		}
		if res.Lost > 0 || res.Errors > 0 {
			add(c, MetricLoss, "count", map[string]float64{"Lost": float64(res.Lost), "Errors": float64(res.Errors)})
		}
	}
	for _, l := range r.Load {
		d.DataItems = append(d.DataItems, DataItem{
			Data:   map[string]float64{"Load1": l.One, "Load5": l.Five, "Load15": l.Fifteen},
			Labels: map[string]string{"Cluster": r.Cluster, "Metric": MetricLoad, "When": l.When},
		})
	}
	return d
}

// WritePerfdash writes Perfdash as indented JSON.
func (r *Report) WritePerfdash(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(r.Perfdash())
}
