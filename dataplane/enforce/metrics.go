package enforce

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the enforcer's latency histograms and rejected-policy gauge.
type Metrics struct {
	Compile, Sync prometheus.Histogram
	// Batch is how many changes of the policy state each write carried.
	Batch prometheus.Histogram
	// EnforceDelay is, per change, the time from its arrival to the end of the
	// write that put it in force.
	EnforceDelay prometheus.Histogram
	// Rejected counts the policy objects not (fully) in force, by kind and reason.
	Rejected *prometheus.GaugeVec
	// OnFilters is how many endpoints have a direction on a filter, waiting to move
	// to tcx links; HookMoves counts the moves (RunHookMover).
	OnFilters prometheus.Gauge
	HookMoves prometheus.Counter
}

// NewMetrics makes the (unregistered) histograms.
func NewMetrics() *Metrics {
	// 100 µs .. ~3 s: a node's incremental update is well under a millisecond,
	// a full rewrite of a large cluster's state seconds.
	b := prometheus.ExponentialBuckets(0.0001, 2, 16)
	return &Metrics{
		Compile: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "flatnet_policy_compile_duration_seconds",
			Help:    "Time to compute the datapath update for a change (compile.Compiler.Flush).",
			Buckets: b,
		}),
		Sync: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "flatnet_policy_map_sync_duration_seconds",
			Help:    "Time to write a compiled update into the datapath maps (bpf.Datapath.Apply), failed writes included.",
			Buckets: b,
		}),
		Batch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "flatnet_policy_changes_per_write",
			Help: "Changes of the policy state (informer events, attaches, detaches) written together in one datapath write; " +
				"a burst folds into few writes.",
			Buckets: prometheus.ExponentialBuckets(1, 4, 9),
		}),
		EnforceDelay: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "flatnet_policy_enforce_delay_seconds",
			Help: "Time from a change of the policy state reaching the agent (an informer event, an attach, a detach) " +
				"to the end of the datapath write that put it in force: the agent's share of apply -> enforced.",
			Buckets: b,
		}),
		Rejected: newRejectedGauge(),
		OnFilters: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flatnet_endpoints_on_filters",
			Help: "Endpoints whose programs still run as clsact filters (as attached), waiting for a quiet moment " +
				"to move to tcx links, which no tc command can delete.",
		}),
		HookMoves: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flatnet_endpoint_hook_moves_total",
			Help: "Endpoints moved from clsact filters to tcx links.",
		}),
	}
}

// Collectors lists the histograms for a registry.
func (m *Metrics) Collectors() []prometheus.Collector {
	return []prometheus.Collector{m.Compile, m.Sync, m.Batch, m.EnforceDelay, m.Rejected, m.OnFilters, m.HookMoves}
}
