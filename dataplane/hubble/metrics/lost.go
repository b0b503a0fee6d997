package metrics

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Sources of hubble_lost_events_total, as Hubble names them (flow.LostEventSource,
// lower case).
const (
	// LostPerfRing: events the datapath could not hand to user space. flatnet's
	// datapath counts those its per-CPU rate limit held back and those that found
	// its ring buffer full (flatnet_flow_events_lost_total, the same number).
	// GetFlows streams are told of the same events, with the CPU that lost them,
	// once a later event of that CPU carries them (flows.Response.DatapathLost).
	LostPerfRing = "perf_event_ring_buffer"
	// LostObserverQueue: events dropped between the reader and Hubble's observer.
	// flatnet hands every flow to its observers synchronously (flows.Run), so this
	// stays 0; it is exported, as Cilium does, so dashboards find it.
	LostObserverQueue = "observer_events_queue"
	// LostRingBuffer: flows a follower missed because the history ring moved past
	// them; the observer counts them with LostEvents.Add.
	LostRingBuffer = "hubble_ring_buffer"
)

// EventsLostReader reads the datapath's count of lost flow events (bpf.Datapath).
type EventsLostReader interface {
	EventsLost(ctx context.Context) (uint64, error)
}

// LostEvents is hubble_lost_events_total{source}: the datapath's own count, read
// at each scrape, and the ones counted in this process.
type LostEvents struct {
	desc     *prometheus.Desc
	datapath EventsLostReader // nil: none
	observer atomic.Uint64
	ring     atomic.Uint64
}

func newLostEvents(dp EventsLostReader) *LostEvents {
	return &LostEvents{
		desc:     prometheus.NewDesc("hubble_lost_events_total", "Number of lost events", []string{"source"}, nil),
		datapath: dp,
	}
}

// Add counts n events lost at source (LostObserverQueue or LostRingBuffer; the
// datapath's are read from the datapath, and any other source is ignored).
func (l *LostEvents) Add(source string, n uint64) {
	if l == nil {
		return
	}
	switch source {
	case LostObserverQueue:
		l.observer.Add(n)
	case LostRingBuffer:
		l.ring.Add(n)
	}
}

// Describe implements prometheus.Collector.
func (l *LostEvents) Describe(ch chan<- *prometheus.Desc) { ch <- l.desc }

// Collect implements prometheus.Collector. A failed read of the datapath leaves
// its series out of that scrape (flatnet_datapath_scrape_errors{map="events_lost"} says so) rather
// than failing the whole scrape.
func (l *LostEvents) Collect(ch chan<- prometheus.Metric) {
	if l.datapath != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		n, err := l.datapath.EventsLost(ctx)
		cancel()
		if err == nil {
			ch <- prometheus.MustNewConstMetric(l.desc, prometheus.CounterValue, float64(n), LostPerfRing)
		}
	}
	ch <- prometheus.MustNewConstMetric(l.desc, prometheus.CounterValue, float64(l.observer.Load()), LostObserverQueue)
	if n := l.ring.Load(); n > 0 {
		ch <- prometheus.MustNewConstMetric(l.desc, prometheus.CounterValue, float64(n), LostRingBuffer)
	}
}
