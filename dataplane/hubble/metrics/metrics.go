// Package metrics exports Hubble's flow metrics (hubble_flows_processed_total,
// hubble_drop_total, hubble_tcp_flags_total, hubble_policy_verdicts_total,
// hubble_port_distribution_total, hubble_flows_to_world_total and
// hubble_lost_events_total) beside flatnet's own, with Hubble's names, labels,
// help texts, context options and --hubble-metrics syntax, so that dashboards
// built on Hubble's metrics work on flatnet. Cilium's pkg/hubble/metrics is the
// model; its handlers are not imported (they would bring most of Cilium along).
//
// Every flow reaches Observe, synchronously, from the flow reader (flows.Run):
// counting is a few counter increments, nothing blocks.
//
// Cardinality is bounded as in Hubble: the metrics' own labels take a fixed set
// of values (verdicts, drop reasons, event types, TCP flags), except the
// destination port of port-distribution and flows-to-world's port option (at
// most 65536 per protocol, in practice the services' ports). What can grow with
// the cluster is opt-in: the context options (source and destination pods,
// workloads, addresses ...). Series naming a pod by namespace and name (context
// "pod", or labelsContext with both source_namespace and source_pod, or the
// destination's) are removed a minute after the pod is deleted, as Hubble does;
// the "ip", "identity" and "pod-name" contexts are not cleaned (Hubble does not
// either): use them on small clusters only.
package metrics

import (
	"fmt"
	"strings"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/flatnet/flatnet/dataplane/flows"
)

// DefaultPodDeleteGrace is how long a deleted pod's series stay (Hubble's
// graceful period): long enough for a last scrape to see their final values.
const DefaultPodDeleteGrace = time.Minute

// Config configures the metrics.
type Config struct {
	// Specs are the enabled metrics (ParseSpecs); none: no Hubble metrics at all,
	// not even hubble_lost_events_total (as in Cilium).
	Specs []Spec
	// Datapath reports the flow events the datapath lost; nil: not reported.
	Datapath EventsLostReader
	// PodDeleteGrace is how long after its deletion a pod's series are removed;
	// 0 means DefaultPodDeleteGrace.
	PodDeleteGrace time.Duration
}

// Metrics are the enabled Hubble metrics.
type Metrics struct {
	handlers  []handler
	lost      *LostEvents
	policy    bool // a handler reads policy verdicts
	namesPods bool // a handler's series name pods
	grace     time.Duration
}

// New makes the metrics cfg enables; register Collectors on the registry that
// serves them.
func New(cfg Config) (*Metrics, error) {
	m := &Metrics{grace: cfg.PodDeleteGrace}
	if m.grace <= 0 {
		m.grace = DefaultPodDeleteGrace
	}
	for _, s := range cfg.Specs {
		h, err := newHandler(s)
		if err != nil {
			return nil, err
		}
		m.handlers = append(m.handlers, h)
		m.namesPods = m.namesPods || h.contexts().namesPods()
		if _, ok := h.(policyHandler); ok {
			m.policy = true
		}
	}
	if len(m.handlers) > 0 {
		m.lost = newLostEvents(cfg.Datapath)
	}
	return m, nil
}

func newHandler(s Spec) (handler, error) {
	if _, ok := served[s.Name]; !ok {
		return nil, fmt.Errorf("unknown metric %q; flatnet serves %s", s.Name, servedNames())
	}
	ctx, err := parseContexts(s.Name, s.Options)
	if err != nil {
		return nil, err
	}
	switch s.Name {
	case "flow":
		return flowHandler{newCounter("flows_processed_total", "Total number of flows processed",
			[]string{"protocol", "type", "subtype", "verdict"}, ctx, false)}, nil
	case "drop":
		return dropHandler{newCounter("drop_total", "Number of drops",
			[]string{"reason", "protocol"}, ctx, true)}, nil
	case "tcp":
		return tcpHandler{newCounter("tcp_flags_total", "TCP flag occurrences",
			[]string{"flag", "family"}, ctx, false)}, nil
	case "policy":
		return policyHandler{newCounter("policy_verdicts_total", "Total number of Cilium network policy verdicts",
			[]string{"direction", "match", "action"}, ctx, false)}, nil
	case "port-distribution":
		return portDistributionHandler{newCounter("port_distribution_total", "Numbers of packets distributed by destination port",
			[]string{"protocol", "port"}, ctx, false)}, nil
	default: // flows-to-world
		h := flowsToWorldHandler{}
		for _, o := range s.Options {
			switch strings.ToLower(o.Name) {
			case "any-drop":
				h.anyDrop = true
			case "port":
				h.port = true
			case "syn-only":
				h.synOnly = true
			}
		}
		own := []string{"protocol", "verdict"}
		if h.port {
			own = append(own, "port")
		}
		h.counter = newCounter("flows_to_world_total", "Total number of flows to reserved:world", own, ctx, false)
		return h, nil
	}
}

// Collectors are the metrics to register (none when no metric is enabled).
func (m *Metrics) Collectors() []prometheus.Collector {
	var cs []prometheus.Collector
	for _, h := range m.handlers {
		cs = append(cs, h.collector())
	}
	if m.lost != nil {
		cs = append(cs, m.lost)
	}
	return cs
}

func (c *counter) collector() prometheus.Collector { return c.v }

// LostEvents counts lost events of other sources than the datapath (the observer's
// ring); nil when no metric is enabled (Add on nil does nothing).
func (m *Metrics) LostEvents() *LostEvents { return m.lost }

// Observe counts one flow in every enabled metric; it is a flows.Run observer.
func (m *Metrics) Observe(r *flows.Response) {
	if len(m.handlers) == 0 {
		return
	}
	m.process(r.Proto(), r.Flow)
}

// process counts f, whose flatnet form is native.
func (m *Metrics) process(f *flowpb.Flow, native *flows.Flow) {
	var pv policyVerdict
	if m.policy {
		pv = policyVerdictOf(f, native)
	}
	for _, h := range m.handlers {
		h.process(f, pv)
	}
}

// PodDeleted removes the series naming the pod namespace/name, after the grace
// period.
func (m *Metrics) PodDeleted(namespace, name string) {
	if !m.namesPods {
		return
	}
	time.AfterFunc(m.grace, func() { m.deletePod(namespace, name) })
}

func (m *Metrics) deletePod(namespace, name string) {
	for _, h := range m.handlers {
		h.contexts().deletePod(h.vec(), namespace, name)
	}
}

// PodEvents is the pod informer handler that calls PodDeleted.
func (m *Metrics) PodEvents() cache.ResourceEventHandler {
	return cache.ResourceEventHandlerFuncs{DeleteFunc: func(obj any) {
		if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = t.Obj
		}
		if p, ok := obj.(*corev1.Pod); ok {
			m.PodDeleted(p.Namespace, p.Name)
		}
	}}
}
