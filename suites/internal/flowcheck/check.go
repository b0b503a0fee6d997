package flowcheck

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/flatnet/flatnet/suites/reachability"
)

// Checker reads the flows of a time window and judges probes by them.
type Checker struct {
	Client observerpb.ObserverClient
	Mode   Mode
	// Nodes are the nodes' addresses (a Service's masquerade gives them as
	// the source at the backend's ingress).
	Nodes []netip.Addr
	// Settle is how long after a window's end the flows are first read: the
	// agents read their rings every 50 ms and the relay asks them at query time (default 300ms).
	Settle time.Duration
	// Retries are further reads, Settle apart, while some cell still lacks
	// its proof: a flow may reach the relay late (0: 2, negative: none).
	Retries int
	// Now is the clock (tests); time.Now when nil.
	Now func() time.Time
}

// Window is the time the probes ran in.
type Window struct{ Start, End time.Time }

// slack widens a window for clock skew between this machine and the nodes'
// flow timestamps (the same kernel clock on kind, so small).
const slack = 250 * time.Millisecond

// Stats say what the reads of one check saw.
type Stats struct {
	Reads int // GetFlows streams
	Flows int // flows read by the last one
	// Lost is the flow events the agents reported lost (LostEvents: the
	// datapath's per-CPU budget, a full ring) during the last read: a cell
	// without its proof may be one of them.
	Lost uint64
}

// Check reads the window's flows (one GetFlows stream per read) and judges
// every probe. It reads again, up to Retries times, while some cell whose
// answer is the oracle's lacks its proof.
func (c *Checker) Check(ctx context.Context, w Window, probes []Probe) ([]Finding, Stats, error) {
	var st Stats
	settle := c.Settle
	if settle <= 0 {
		settle = 300 * time.Millisecond
	}
	retries := c.Retries
	switch {
	case retries == 0:
		retries = 2
	case retries < 0: // none
		retries = 0
	}
	now := c.Now
	if now == nil {
		now = time.Now
	}
	if wait := w.End.Add(settle).Sub(now()); wait > 0 {
		select {
		case <-ctx.Done():
			return nil, st, ctx.Err()
		case <-time.After(wait):
		}
	}
	for attempt := 0; ; attempt++ {
		flows, lost, err := c.Fetch(ctx, w, probes)
		if err != nil {
			return nil, st, err
		}
		st.Reads++
		st.Flows, st.Lost = len(flows), lost
		findings := make([]Finding, len(probes))
		unproven := 0
		for i, p := range probes {
			findings[i] = Classify(p, flows, c.Nodes)
			if findings[i].Class == WrongReason {
				unproven++
			}
		}
		if unproven == 0 || attempt >= retries {
			return findings, st, nil
		}
		select {
		case <-ctx.Done():
			return nil, st, ctx.Err()
		case <-time.After(settle):
		}
	}
}

// Fetch reads the flows of the window whose source is one of the probes'
// sources or whose destination one of their backends, in one stream, and
// counts the flow events the agents say were lost.
func (c *Checker) Fetch(ctx context.Context, w Window, probes []Probe) ([]*flowpb.Flow, uint64, error) {
	var srcs, dsts []string
	for _, p := range probes {
		if !slices.Contains(srcs, p.Source.String()) {
			srcs = append(srcs, p.Source.String())
		}
		if !slices.Contains(dsts, p.Backend.String()) {
			dsts = append(dsts, p.Backend.String())
		}
	}
	if len(srcs) == 0 {
		return nil, 0, nil
	}
	req := &observerpb.GetFlowsRequest{
		// Every flow of the window: Hubble's CLI asks ^0 for --all.
		Number:    ^uint64(0),
		Since:     timestamppb.New(w.Start.Add(-slack)),
		Until:     timestamppb.New(w.End.Add(slack)),
		Whitelist: []*flowpb.FlowFilter{{SourceIp: srcs}, {DestinationIp: dsts}},
	}
	// The relay may be moving (its node restarted, as the resilience suite does):
	// the port-forward reconnects to the new pod on the same local port, so an
	// unavailable relay is asked again for a while before the check fails.
	deadline := time.Now().Add(relayMoveTimeout)
	for {
		out, lost, err := c.read(ctx, req, w)
		if status.Code(err) != codes.Unavailable || time.Now().After(deadline) {
			return out, lost, err
		}
		select {
		case <-ctx.Done():
			return nil, 0, err
		case <-time.After(2 * time.Second):
		}
	}
}

// relayMoveTimeout is how long an unavailable relay is waited for: a
// rescheduled relay pod is Ready within about a minute on kind.
const relayMoveTimeout = 2 * time.Minute

// read is one GetFlows stream of req.
func (c *Checker) read(ctx context.Context, req *observerpb.GetFlowsRequest, w Window) ([]*flowpb.Flow, uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	st, err := c.Client.GetFlows(ctx, req)
	if err != nil {
		return nil, 0, fmt.Errorf("reading the flows of %s..%s (GetFlows): %w", w.Start.Format(time.RFC3339Nano), w.End.Format(time.RFC3339Nano), err)
	}
	var out []*flowpb.Flow
	var lost uint64
	for {
		resp, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return out, lost, nil
		}
		if err != nil {
			return nil, 0, fmt.Errorf("reading the flows of %s..%s (GetFlows, after %d flows): %w", w.Start.Format(time.RFC3339Nano), w.End.Format(time.RFC3339Nano), len(out), err)
		}
		if f := resp.GetFlow(); f != nil {
			out = append(out, f)
		}
		lost += resp.GetLostEvents().GetNumEventsLost()
	}
}

// Apply records findings in their comparisons (by table title): cells for
// the wrong reason become WrongReason entries (strict mode only; warn leaves
// the comparison passing), mismatched cells get their flows. It returns the
// wrong-reason findings, for the caller to print in either mode.
func Apply(mode Mode, findings []Finding, cmps []*reachability.Comparison) []Finding {
	byTitle := map[string]*reachability.Comparison{}
	for _, c := range cmps {
		byTitle[c.Title] = c
	}
	var wrong []Finding
	for _, f := range findings {
		c := byTitle[f.Probe.Table]
		if c == nil {
			continue
		}
		switch f.Class {
		case Mismatched:
			c.SetFlows(f.Probe.Key, lines(f))
		case WrongReason:
			wrong = append(wrong, f)
			if mode == Strict {
				if _, ok := c.Wrong(f.Probe.Key); !ok {
					c.WrongReason = append(c.WrongReason, reachability.Mismatch{
						Key: f.Probe.Key, Expected: f.Probe.Expected, Observed: f.Probe.Observed, Flows: lines(f), Why: f.Why,
					})
				}
			}
		}
	}
	return wrong
}

// lines are a finding's flows for the report; none recorded says so.
func lines(f Finding) []string {
	if len(f.Flows) == 0 {
		return []string{"no flow of this connection recorded in its poll's window"}
	}
	out := make([]string, len(f.Flows))
	for i, fl := range f.Flows {
		out[i] = Line(fl)
	}
	return out
}
