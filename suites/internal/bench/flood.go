package bench

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/flatnet/flatnet/probes/batch"
	"github.com/flatnet/flatnet/probes/connect"
	"github.com/flatnet/flatnet/probes/podexec"
)

// SeenFlows sums Hubble's ServerStatus seen_flows (every flow event the
// agent's observer took in since it started) over the agents, asked on each
// agent's local socket, socket being its path inside the agent's container
// (/run/flatnet/hubble.sock, /run/cilium/hubble.sock: no symlinks, they would
// resolve against this machine's root) reached through
// /proc/PID/root: the same call and the same counter on either CNI, no TLS.
func SeenFlows(ctx context.Context, agents []Agent, socket string) (uint64, error) {
	var sum uint64
	for _, a := range agents {
		conn, err := dialHubble(a, socket)
		if err != nil {
			return 0, err
		}
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		st, err := observerpb.NewObserverClient(conn).ServerStatus(cctx, &observerpb.ServerStatusRequest{})
		cancel()
		conn.Close()
		if err != nil {
			return 0, fmt.Errorf("hubble ServerStatus of the agent on %s: %w", a.Node, err)
		}
		sum += st.GetSeenFlows()
	}
	return sum, nil
}

func dialHubble(a Agent, socket string) (*grpc.ClientConn, error) {
	path := fmt.Sprintf("/proc/%d/root%s", a.PID, socket)
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("hubble socket of the agent on %s (%s): %w", a.Node, path, err)
	}
	return conn, nil
}

// monitorDrop is the drop notification's event type (Cilium's
// MessageTypeDrop): Cilium also reports a denied connection's first packet as
// a policy-verdict event (type 5) with verdict DROPPED, which would count the
// same SYN twice.
const monitorDrop = 1

// DropCount counts, as they happen, the drop events to dstIP that the agents'
// observers hand a following GetFlows client (hubble observe -f --type drop
// --to-ip), and the events they report lost.
type DropCount struct {
	mu          sync.Mutex
	drops, lost int
	errs        []error
	wg          sync.WaitGroup
}

// WatchDrops starts one following GetFlows per agent; Stop ends them.
func WatchDrops(ctx context.Context, agents []Agent, socket, dstIP string) (*DropCount, error) {
	dc := &DropCount{}
	req := &observerpb.GetFlowsRequest{Follow: true, Since: timestamppb.Now(), Whitelist: []*flowpb.FlowFilter{{
		DestinationIp: []string{dstIP}, Verdict: []flowpb.Verdict{flowpb.Verdict_DROPPED},
		EventType: []*flowpb.EventTypeFilter{{Type: monitorDrop}}}}}
	for _, a := range agents {
		conn, err := dialHubble(a, socket)
		if err != nil {
			return nil, err
		}
		stream, err := observerpb.NewObserverClient(conn).GetFlows(ctx, req)
		if err != nil {
			conn.Close()
			return nil, fmt.Errorf("hubble GetFlows of the agent on %s: %w", a.Node, err)
		}
		dc.wg.Add(1)
		go func() {
			defer dc.wg.Done()
			defer conn.Close()
			for {
				resp, err := stream.Recv()
				if err != nil {
					if ctx.Err() == nil {
						dc.mu.Lock()
						dc.errs = append(dc.errs, fmt.Errorf("hubble GetFlows of the agent on %s: %w", a.Node, err))
						dc.mu.Unlock()
					}
					return
				}
				dc.mu.Lock()
				switch {
				case resp.GetFlow() != nil:
					dc.drops++
				case resp.GetLostEvents() != nil:
					dc.lost += int(resp.GetLostEvents().GetNumEventsLost())
				}
				dc.mu.Unlock()
			}
		}()
	}
	return dc, nil
}

// Wait waits for the streams to end (cancel their context first) and returns
// the counts.
func (dc *DropCount) Wait() (drops, lost int, err error) {
	dc.wg.Wait()
	return dc.drops, dc.lost, errors.Join(dc.errs...)
}

// Flood is a denied-SYN flood: `probe batch` in the client pod connecting
// SYNs times to target (a default-denied server), Parallel at a time, each
// attempt given up after Timeout (before the kernel's first SYN retry at 1 s,
// so every attempt is one SYN from a new source port: one new flow).
type Flood struct {
	Client   podexec.Pod
	Target   string // ip:port
	SYNs     int
	Parallel int
	Timeout  time.Duration
}

// FloodResult is what one flood did.
type FloodResult struct {
	Verdicts map[batch.Verdict]int
}

// Run runs the flood to its end: one `probe batch` exec (podexec.Runner, no
// retries) with the target SYNs times.
func (f Flood) Run(ctx context.Context, ex podexec.Executor) (FloodResult, error) {
	targets := make([]batch.Target, f.SYNs)
	for i := range targets {
		targets[i] = batch.Target{Target: f.Target}
	}
	r := podexec.Runner{Exec: ex, Options: batch.Options{Timeout: f.Timeout, Parallel: f.Parallel, Protocol: connect.TCP}}
	cells, err := r.Probe(ctx, f.Client, targets)
	if err != nil {
		return FloodResult{}, fmt.Errorf("flood from %s to %s: %w", f.Client, f.Target, err)
	}
	res := FloodResult{Verdicts: map[batch.Verdict]int{}}
	for _, c := range cells {
		res.Verdicts[c.Verdict]++
	}
	return res, nil
}
