package observer

import (
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// lostCounts is what a stream has yet to tell its client it missed, as Hubble
// tells it: flows the store overwrote before the stream read them
// (HUBBLE_RING_BUFFER), and flow events the datapath could not hand over, by
// CPU (PERF_EVENT_RING_BUFFER, with the CPU, as Hubble's parser reports a
// monitor's lost perf records). Each is summed over LostEventSendInterval at
// most, so that a flood of losses costs a client one response per interval.
type lostCounts struct {
	ring lostCount
	perf []lostCount // by CPU
}

func (l *lostCounts) addRing(n uint64, now time.Time) { l.ring.add(n, now) }

func (l *lostCounts) addPerf(cpu uint32, n uint64, now time.Time) {
	if int(cpu) >= len(l.perf) {
		l.perf = append(l.perf, make([]lostCount, int(cpu)+1-len(l.perf))...)
	}
	l.perf[cpu].add(n, now)
}

// oldest is when the longest-waiting unreported loss was noticed; false when
// none waits. Called for every batch a stream reads: it allocates nothing.
func (l *lostCounts) oldest() (time.Time, bool) {
	first := l.ring.first
	if l.ring.count == 0 {
		first = time.Time{}
	}
	for i := range l.perf {
		if c := &l.perf[i]; c.count > 0 && (first.IsZero() || c.first.Before(first)) {
			first = c.first
		}
	}
	return first, !first.IsZero()
}

func (l *lostCounts) due(now time.Time, every time.Duration) bool {
	first, ok := l.oldest()
	return ok && now.Sub(first) >= every
}

// take returns the LostEvents due by now (every one waiting, with flush) and
// forgets what they report.
func (l *lostCounts) take(o *Observer, now time.Time, flush bool) []*observerpb.GetFlowsResponse {
	var out []*observerpb.GetFlowsResponse
	every := o.cfg.LostEventSendInterval
	if l.ring.count > 0 && (flush || l.ring.due(now, every)) {
		out = append(out, o.lostEvent(flowpb.LostEventSource_HUBBLE_RING_BUFFER, nil, l.ring, now))
		l.ring = lostCount{}
	}
	for cpu := range l.perf {
		c := &l.perf[cpu]
		if c.count > 0 && (flush || c.due(now, every)) {
			out = append(out, o.lostEvent(flowpb.LostEventSource_PERF_EVENT_RING_BUFFER, wrapperspb.Int32(int32(cpu)), *c, now))
			*c = lostCount{}
		}
	}
	return out
}

// lostCount sums the events a stream missed between two LostEvents, with when
// it noticed the first and the last, as Hubble's IntervalRangeCounter does.
type lostCount struct {
	count       uint64
	first, last time.Time
}

func (c *lostCount) add(n uint64, now time.Time) {
	if c.count == 0 {
		c.first = now
	}
	c.count += n
	c.last = now
}

func (c lostCount) due(now time.Time, every time.Duration) bool {
	return c.count > 0 && now.Sub(c.first) >= every
}

// lostEvent is the response that tells a client it missed c's events at
// source (on cpu, for the datapath's).
func (o *Observer) lostEvent(source flowpb.LostEventSource, cpu *wrapperspb.Int32Value, c lostCount, now time.Time) *observerpb.GetFlowsResponse {
	return &observerpb.GetFlowsResponse{
		Time:     timestamp(now),
		NodeName: o.cfg.NodeName,
		ResponseTypes: &observerpb.GetFlowsResponse_LostEvents{LostEvents: &flowpb.LostEvent{
			Source:        source,
			NumEventsLost: c.count,
			Cpu:           cpu,
			First:         timestamp(c.first),
			Last:          timestamp(c.last),
		}},
	}
}
