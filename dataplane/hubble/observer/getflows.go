package observer

import (
	"context"
	"errors"
	"math"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/flatnet/flatnet/dataplane/flows"
)

// readBatch is how many flows a stream copies out of the store per lock: the
// agent's Add waits for at most this many pointer copies.
const readBatch = 256

// GetFlows streams the flows req selects, with Hubble's semantics: the newest
// number flows (all with 0), or the oldest with first, or those from since on;
// then, with follow, every new flow until the client leaves or until passes.
// Flows the store overwrote before this stream read them are reported as one
// LostEvent (source HUBBLE_RING_BUFFER) per LostEventSendInterval at most, and
// so are flow events the datapath lost before the flows the stream reads
// (PERF_EVENT_RING_BUFFER, one per CPU), whether or not its filters select them.
func (o *Observer) GetFlows(req *observerpb.GetFlowsRequest, stream grpc.ServerStreamingServer[observerpb.GetFlowsResponse]) error {
	q, err := parseRequest(req)
	if err != nil {
		return err
	}
	if q.follow {
		select {
		case o.followers <- struct{}{}:
			defer func() { <-o.followers }()
		default:
			return status.Errorf(codes.ResourceExhausted, "GetFlows: %d clients already follow this agent's flows, its limit; "+
				"try again when one has ended", cap(o.followers))
		}
	}
	ctx := stream.Context()
	s := &flowStream{o: o, q: q, out: startSender(stream, o.cfg.StallTimeout, &o.senders)}
	defer s.out.abort()
	if !q.follow {
		s.limit = q.number
	}
	if err := s.run(ctx); err != nil {
		return err
	}
	return s.out.finish(ctx)
}

// flowStream is one GetFlows call's state.
type flowStream struct {
	o     *Observer
	q     *query
	out   *sender
	lost  lostCounts
	limit uint64 // flows to send in all; 0 = no limit
	sent  uint64
	buf   [readBatch]*flows.Response
}

func (s *flowStream) run(ctx context.Context) error {
	oldest, end := s.o.store.Bounds()
	from := end
	switch {
	case !s.q.since.IsZero(): // since wins over number and first, as in Hubble
		from = s.seekSince(end)
	case s.q.first:
		from = oldest
	case s.q.follow && s.q.number == 0:
		// only what comes next
	default:
		if err := s.sendNewest(ctx, end); err != nil {
			return err
		}
		s.limit = 0 // number was applied
	}
	stop := end
	if s.q.follow {
		stop = math.MaxUint64
	}
	return s.forward(ctx, from, stop)
}

// sendNewest sends the newest q.number matching flows that were in the store
// before sequence end, oldest first. It walks the store backwards a batch at a
// time and keeps pointers to what matched: at most the store's capacity.
func (s *flowStream) sendNewest(ctx context.Context, end uint64) error {
	var picked []*flows.Response
	before := end
scan:
	for {
		n, first := s.o.store.ReadBefore(before, s.buf[:])
		if n == 0 {
			break
		}
		for i := n - 1; i >= 0; i-- {
			r := s.buf[i]
			if _, after := s.q.inTime(r.Time); after || !s.q.match(r.Proto()) {
				continue
			}
			picked = append(picked, r)
			if s.q.number > 0 && uint64(len(picked)) == s.q.number {
				break scan
			}
		}
		before = first
	}
	clear(s.buf[:])
	for i := len(picked) - 1; i >= 0; i-- {
		if err := s.out.put(ctx, s.flowResponse(picked[i].Proto())); err != nil {
			return err
		}
	}
	return nil
}

// seekSince is the sequence number of the first flow at or after q.since:
// walking back from end, the flow after the newest one older than since.
func (s *flowStream) seekSince(end uint64) uint64 {
	before := end
	for {
		n, first := s.o.store.ReadBefore(before, s.buf[:])
		if n == 0 {
			clear(s.buf[:])
			return before
		}
		for i := n - 1; i >= 0; i-- {
			if s.buf[i].Time.Before(s.q.since) {
				clear(s.buf[:])
				return first + uint64(i) + 1
			}
		}
		before = first
	}
}

// forward sends the matching flows from sequence number cursor up to stop,
// waiting for new ones when it catches up (stop is unbounded when following).
func (s *flowStream) forward(ctx context.Context, cursor, stop uint64) error {
	var untilC <-chan time.Time
	if s.q.follow && !s.q.until.IsZero() {
		t := time.NewTimer(time.Until(s.q.until))
		defer t.Stop()
		untilC = t.C
	}
	for cursor < stop {
		if err := ctx.Err(); err != nil { // a flood of flows the filter drops never waits
			return status.FromContextError(err).Err()
		}
		now := time.Now()
		if s.lost.due(now, s.o.cfg.LostEventSendInterval) {
			if err := s.sendLost(ctx, now, false); err != nil {
				return err
			}
		}
		n, lost := s.o.store.ReadFrom(cursor, s.buf[:min(readBatch, stop-cursor)])
		if lost >= stop-cursor { // all that was left to read was overwritten
			lost, n = stop-cursor, 0
		}
		cursor += lost + uint64(n)
		if lost > 0 {
			s.lost.addRing(lost, now)
		}
		for _, r := range s.buf[:n] {
			if r.DatapathLost > 0 { // whatever the request selects, as Hubble's lost events
				s.lost.addPerf(r.CPU, r.DatapathLost, now)
			}
			done, err := s.offer(ctx, r)
			if done || err != nil {
				clear(s.buf[:n])
				if err != nil {
					return err
				}
				return s.flushLost(ctx)
			}
		}
		clear(s.buf[:n])
		if n > 0 || lost > 0 || cursor >= stop {
			continue
		}
		if err := s.wait(ctx, cursor, now, untilC); err != nil {
			if err == errUntil {
				return s.flushLost(ctx)
			}
			return err
		}
	}
	return s.flushLost(ctx)
}

// errUntil ends a follow stream whose until has passed.
var errUntil = errors.New("until has passed")

// wait blocks until the store has the flow at cursor, or unreported losses are
// due, or the stream ends.
func (s *flowStream) wait(ctx context.Context, cursor uint64, now time.Time, untilC <-chan time.Time) error {
	var lostC <-chan time.Time
	if first, ok := s.lost.oldest(); ok {
		t := time.NewTimer(first.Add(s.o.cfg.LostEventSendInterval).Sub(now))
		defer t.Stop()
		lostC = t.C
	}
	var stallC <-chan time.Time
	stall, progress := s.out.stallCheck()
	if stall != nil {
		defer stall.Stop()
		stallC = stall.C
	}
	select {
	case <-s.o.store.Wait(cursor):
	case <-lostC:
	case <-untilC:
		return errUntil
	case <-stallC:
		if s.out.stuck(progress) {
			return s.out.stalled()
		}
	case <-s.out.done:
		return s.out.ended()
	case <-ctx.Done():
		return status.FromContextError(ctx.Err()).Err()
	}
	return nil
}

// offer sends r's flow if the request selects it; done says the request has
// all it asked for (its number, or a flow after until, as in Hubble).
func (s *flowStream) offer(ctx context.Context, r *flows.Response) (done bool, err error) {
	before, after := s.q.inTime(r.Time)
	if after {
		return true, nil
	}
	if before {
		return false, nil
	}
	f := r.Proto()
	if !s.q.match(f) {
		return false, nil
	}
	if err := s.out.put(ctx, s.flowResponse(f)); err != nil {
		return false, err
	}
	s.sent++
	return s.limit > 0 && s.sent >= s.limit, nil
}

// flowResponse wraps f, masked if the request asks. Like Hubble, the
// response's time and node name are the masked flow's.
func (s *flowStream) flowResponse(f *flowpb.Flow) *observerpb.GetFlowsResponse {
	if s.q.mask != nil {
		f = s.q.mask.apply(f)
	}
	return &observerpb.GetFlowsResponse{
		Time:          f.GetTime(),
		NodeName:      f.GetNodeName(),
		ResponseTypes: &observerpb.GetFlowsResponse_Flow{Flow: f},
	}
}

// sendLost sends the LostEvents due by now (all that wait, with flush).
func (s *flowStream) sendLost(ctx context.Context, now time.Time, flush bool) error {
	for _, resp := range s.lost.take(s.o, now, flush) {
		if err := s.out.put(ctx, resp); err != nil {
			return err
		}
	}
	return nil
}

// flushLost reports losses not yet reported when the stream ends, which
// Hubble's observer leaves untold.
func (s *flowStream) flushLost(ctx context.Context) error {
	return s.sendLost(ctx, time.Now(), true)
}

func timestamp(t time.Time) *timestamppb.Timestamp { return timestamppb.New(t) }
