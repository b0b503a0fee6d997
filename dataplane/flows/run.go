package flows

import (
	"context"

	"github.com/flatnet/flatnet/dataplane/bpf"
)

// EventReader is the datapath's flow event reader (bpf.FlowReader).
type EventReader interface {
	Read(ctx context.Context) (bpf.FlowEvent, error)
}

// Run reads events into store, handing each flow to observe first (every flow, in
// order; an observer must not block), until ctx ends; it returns the reader's error
// otherwise. Each flow carries the events its CPU lost before it (DatapathLost).
func Run(ctx context.Context, rd EventReader, en *Enricher, store *Store, observe ...func(*Response)) error {
	var lost lostPerCPU
	for {
		ev, err := rd.Read(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil // shutting down: the reader may be closed under us
			}
			return err
		}
		f := en.Flow(ev)
		r := &Response{Flow: f, NodeName: f.NodeName, Time: f.Time, CPU: ev.CPU, DatapathLost: lost.since(ev)}
		for _, o := range observe {
			o(r)
		}
		store.Add(r)
	}
}

// lostPerCPU turns the datapath's per-CPU cumulative loss count, which each event
// carries (bpf.FlowEvent.LostBefore), into what each CPU lost since its previous
// event. A CPU's events reach the ring in the order it wrote them, so the count
// only grows between two of them, unless the datapath's counters were created
// anew (a reload): then it counts from zero again.
//
// The first event of a CPU counts from zero, not from what it carries: losses
// before this reader started (an agent restart over pinned maps) are reported
// once, with it, so that what the flows carry sums to the datapath's own count
// (hubble_lost_events_total{source="perf_event_ring_buffer"}, read from it), less
// the losses no event of their CPU has followed yet.
type lostPerCPU struct {
	last []uint64 // by CPU
}

func (l *lostPerCPU) since(ev bpf.FlowEvent) uint64 {
	if int(ev.CPU) >= len(l.last) {
		l.last = append(l.last, make([]uint64, int(ev.CPU)+1-len(l.last))...)
	}
	prev := l.last[ev.CPU]
	l.last[ev.CPU] = ev.LostBefore
	if ev.LostBefore < prev { // counters created anew
		return ev.LostBefore
	}
	return ev.LostBefore - prev
}
