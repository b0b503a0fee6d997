package agent

import (
	"encoding/json"
	"net/http"
	"regexp"
	"slices"
	"sort"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/flatnet/flatnet/dataplane/endpointapi"
)

// Metrics are the agent's Prometheus collectors, on a registry of its own.
type Metrics struct {
	reg        *prometheus.Registry
	collectors []prometheus.Collector // every one registered, for Names

	cniDuration *prometheus.HistogramVec
	addPhase    *prometheus.HistogramVec
	addSched    *prometheus.HistogramVec
	cniOps      *prometheus.CounterVec
	register    *prometheus.HistogramVec
	allocations prometheus.Counter
	leaks       prometheus.Counter
	endpoints   prometheus.Gauge
	blockSize   prometheus.Gauge
	blockUsed   prometheus.Gauge
	maxPods     prometheus.Gauge
	mismatch    prometheus.Gauge
}

// NewMetrics registers the collectors.
func NewMetrics() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		cniDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "flatnet_cni_operation_duration_seconds",
			Help: "Duration of CNI plugin operations on this node from the plugin's start (op=ADD: until the agent registered the endpoint, its last step; op=DEL: as measured by the plugin).",
			// 1 ms .. ~16 s: an ADD is tens of milliseconds, a stalled one seconds.
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 15),
		}, []string{"op"}),
		addPhase: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "flatnet_cni_add_phase_seconds",
			Help:    "Where a CNI ADD's time goes, by phase: prepare (config, uplink, netns), ipam (the node's allocation), setup (veth and routes), portmap (hostPorts only), as the plugin measured them, then agent (the PUT, from its arrival to the answer).",
			Buckets: prometheus.ExponentialBuckets(0.00025, 2, 17),
		}, []string{"phase"}),
		addSched: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "flatnet_cni_add_sched_seconds",
			Help: "How a CNI ADD's plugin process was scheduled until its PUT, from the kernel's schedstat of its threads: " +
				"oncpu (running), runqueue (runnable, waiting for a CPU). The phases' wall times include the runqueue wait.",
			Buckets: prometheus.ExponentialBuckets(0.00025, 2, 17),
		}, []string{"state"}),
		cniOps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flatnet_cni_operations_total",
			Help: "CNI plugin operations on this node by result.",
		}, []string{"op", "result"}),
		register: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "flatnet_endpoint_register_duration_seconds",
			Help:    "The agent's share of a CNI ADD, by phase: queued behind other endpoint operations, attach (policy and datapath), record (written to disk).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"phase"}),
		allocations: counter("flatnet_ipam_allocations_total",
			"Pod addresses handed out on this node (endpoints registered by the plugin)."),
		leaks: counter("flatnet_ipam_leaks_released_total",
			"Addresses released by the agent's reconciler because no pod held them."),
		endpoints: gauge("flatnet_endpoints", "Pod endpoints the agent knows on this node."),
		blockSize: gauge("flatnet_ipam_block_size", "Addresses in this node's block."),
		blockUsed: gauge("flatnet_ipam_block_used", "Addresses of this node's block held by pods."),
		maxPods:   gauge("flatnet_node_max_pods", "The Node's status.capacity.pods (the kubelet's maxPods)."),
		mismatch: gauge("flatnet_block_maxpods_mismatch",
			"1 when the kubelet's maxPods differs from the block size (above it, the scheduler may place pods the block cannot address)."),
	}
	m.MustRegister(m.cniDuration, m.addPhase, m.addSched, m.cniOps, m.register, m.allocations, m.leaks, m.endpoints,
		m.blockSize, m.blockUsed, m.maxPods, m.mismatch,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func counter(name, help string) prometheus.Counter {
	return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
}

func gauge(name, help string) prometheus.Gauge {
	return prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: help})
}

// MustRegister adds collectors (the datapath's) to the agent's registry.
func (m *Metrics) MustRegister(cs ...prometheus.Collector) {
	m.reg.MustRegister(cs...)
	m.collectors = append(m.collectors, cs...)
}

var fqName = regexp.MustCompile(`^Desc\{fqName: "([^"]+)"`)

// Names lists the metric families the agent can export (every registered collector
// described), sorted: what a dashboard may query.
func (m *Metrics) Names() []string {
	ch := make(chan *prometheus.Desc)
	go func() {
		for _, c := range m.collectors {
			c.Describe(ch)
		}
		close(ch)
	}()
	seen := map[string]bool{}
	for d := range ch {
		if s := fqName.FindStringSubmatch(d.String()); s != nil {
			seen[s[1]] = true
		}
	}
	out := make([]string, 0, len(seen))
	for n := range seen {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Handler serves the metrics.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// Registry exposes the registry so the datapath can add its own collectors.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// observationHandler receives the plugin's endpointapi.Observation posts.
func (m *Metrics) observationHandler(w http.ResponseWriter, r *http.Request) {
	var o endpointapi.Observation
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096)).Decode(&o); err != nil || (o.Op != "ADD" && o.Op != "DEL") || o.Seconds < 0 {
		http.Error(w, "body: want {\"op\":\"ADD\"|\"DEL\",\"seconds\":N,\"ok\":bool}", http.StatusBadRequest)
		return
	}
	m.observeCNI(o)
	w.WriteHeader(http.StatusNoContent)
}

func (m *Metrics) observeCNI(o endpointapi.Observation) {
	result := "ok"
	if !o.OK {
		result = "error"
	}
	m.cniOps.WithLabelValues(o.Op, result).Inc()
	if o.OK {
		m.cniDuration.WithLabelValues(o.Op).Observe(o.Seconds)
	}
}

// addPhases are the plugin's phases the agent publishes (endpointapi.AddPhasesHeader).
var addPhases = []string{"prepare", "ipam", "setup", "portmap"}

// addSchedStates are the scheduler states the agent publishes (endpointapi.AddSchedHeader).
var addSchedStates = []string{"oncpu", "runqueue"}

// observeAdds observes the ADD whose last step is a PUT carrying
// endpointapi.AddStartedHeader once next has answered it: the plugin posts no
// Observation for such an ADD.
func (m *Metrics) observeAdds(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		started, err := time.Parse(time.RFC3339Nano, r.Header.Get(endpointapi.AddStartedHeader))
		if r.Method != http.MethodPut || err != nil {
			next.ServeHTTP(w, r)
			return
		}
		arrived := time.Now()
		sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(sw, r)
		ok := sw.status/100 == 2
		m.observeCNI(endpointapi.Observation{Op: "ADD", Seconds: max(0, time.Since(started).Seconds()), OK: ok})
		// A malformed header costs the ADD nothing: its phases are not counted.
		if phases, err := endpointapi.ParseAddPhases(r.Header.Get(endpointapi.AddPhasesHeader)); ok && err == nil && len(phases) > 0 {
			for _, p := range phases {
				if slices.Contains(addPhases, p.Name) { // a bounded set of series
					m.addPhase.WithLabelValues(p.Name).Observe(p.Took.Seconds())
				}
			}
			m.addPhase.WithLabelValues("agent").Observe(time.Since(arrived).Seconds())
		}
		if sched, err := endpointapi.ParseAddPhases(r.Header.Get(endpointapi.AddSchedHeader)); ok && err == nil {
			for _, s := range sched {
				if slices.Contains(addSchedStates, s.Name) {
					m.addSched.WithLabelValues(s.Name).Observe(s.Took.Seconds())
				}
			}
		}
	})
}

// statusWriter remembers the status a handler answered with.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(status int) {
	w.status = status
	w.ResponseWriter.WriteHeader(status)
}
