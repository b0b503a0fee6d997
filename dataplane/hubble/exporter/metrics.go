package exporter

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the exporters' Prometheus series: flatnet's own per exporter, and
// Cilium's hubble_dynamic_exporter_* names for the configuration, so a Cilium
// dashboard of the dynamic exporter reads them unchanged.
type metrics struct {
	written, dropped, writeErrors *prometheus.CounterVec
	reconfigurations              *prometheus.CounterVec
	lastApplied                   prometheus.Gauge
	state                         stateCollector
}

// exporterMetrics are one exporter's counters.
type exporterMetrics struct {
	written, dropped, writeErrors prometheus.Counter
}

func newMetrics(running func() []*fileExporter) *metrics {
	perExporter := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, []string{"exporter"})
	}
	return &metrics{
		written: perExporter("flatnet_flow_export_flows_total",
			"Flows written to the file of a flow log exporter."),
		dropped: perExporter("flatnet_flow_export_dropped_total",
			"Flows a flow log exporter dropped because its writer did not keep up (its queue was full)."),
		writeErrors: perExporter("flatnet_flow_export_write_errors_total",
			"Flows a flow log exporter lost to a failed write (a full disk, a removed directory); the first error is logged."),
		reconfigurations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hubble_dynamic_exporter_reconfigurations_total",
			Help: "Changes of the flow log exporters by op: add, update, remove, or failure (a config refused).",
		}, []string{"op"}),
		lastApplied: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hubble_dynamic_exporter_config_last_applied",
			Help: "When the flow log config in force was applied (Unix seconds).",
		}),
		state: stateCollector{running: running},
	}
}

func (m *metrics) forExporter(name string) *exporterMetrics {
	return &exporterMetrics{
		written:     m.written.WithLabelValues(name),
		dropped:     m.dropped.WithLabelValues(name),
		writeErrors: m.writeErrors.WithLabelValues(name),
	}
}

func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.written, m.dropped, m.writeErrors, m.reconfigurations, m.lastApplied, m.state}
}

var (
	exportersDesc = prometheus.NewDesc("hubble_dynamic_exporter_exporters_total",
		"Flow log exporters configured, by status: active, or inactive (past their end).", []string{"status"}, nil)
	upDesc = prometheus.NewDesc("hubble_dynamic_exporter_up",
		"1 for a flow log exporter that writes, 0 for one past its end.", []string{"name"}, nil)
)

// stateCollector reports the running exporters at scrape time.
type stateCollector struct {
	running func() []*fileExporter
}

func (c stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- exportersDesc
	ch <- upDesc
}

func (c stateCollector) Collect(ch chan<- prometheus.Metric) {
	now := time.Now()
	var active, inactive float64
	for _, e := range c.running() {
		up := 0.0
		if e.view.Load().active(now) {
			up = 1
			active++
		} else {
			inactive++
		}
		ch <- prometheus.MustNewConstMetric(upDesc, prometheus.GaugeValue, up, e.name)
	}
	ch <- prometheus.MustNewConstMetric(exportersDesc, prometheus.GaugeValue, active, "active")
	ch <- prometheus.MustNewConstMetric(exportersDesc, prometheus.GaugeValue, inactive, "inactive")
}
