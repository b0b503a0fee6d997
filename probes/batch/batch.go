// Package batch probes many targets from one process, every attempt overlapping,
// and reports one structured result per target. Its Target and Result types are the
// contract between `probe batch` (in a pod) and the suites that read its output:
// JSON lines, one per target, in input order.
package batch

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/flatnet/flatnet/probes/connect"
)

// Verdict is the outcome class of one target.
type Verdict string

const (
	Connected Verdict = "connected"
	Refused   Verdict = "refused"
	Timeout   Verdict = "timeout"
	DNS       Verdict = "dns"
	Other     Verdict = "other"
	Unknown   Verdict = "unknown"
	// Flaky is never printed by `probe batch`: it is what a caller reports when
	// attempts at the same target disagreed (see probes/podexec).
	Flaky Verdict = "flaky"
)

// Target is one line of a batch request.
type Target struct {
	// Target is host:port (IPv6 hosts in brackets).
	Target string `json:"target"`
	// Protocol is tcp, udp, sctp or icmp (host:0); empty means the batch's default.
	Protocol connect.Protocol `json:"protocol,omitempty"`
	// Payload is sent over UDP and SCTP; empty means the batch's default.
	Payload string `json:"payload,omitempty"`
}

// Result is one line of a batch answer.
type Result struct {
	Target    string  `json:"target"`
	Host      string  `json:"host"`
	Port      int     `json:"port"`
	Protocol  string  `json:"protocol"`
	Verdict   Verdict `json:"verdict"`
	Detail    string  `json:"detail"`
	LatencyMS float64 `json:"latency_ms"`
	// Reply is what a UDP or SCTP server answered (serve-hostname: its hostname).
	Reply string `json:"reply,omitempty"`
}

// Key identifies the probed endpoint: target and protocol.
func (r Result) Key() string { return r.Protocol + "/" + r.Target }

// Key identifies the endpoint t probes, with def standing for an empty protocol.
func (t Target) Key(def connect.Protocol) string {
	p := t.Protocol
	if p == "" {
		p = def
	}
	return string(p) + "/" + t.Target
}

// Options applies to every target of a batch.
type Options struct {
	// Timeout bounds each attempt; it must be positive.
	Timeout time.Duration
	// Parallel caps the attempts in flight; it must be positive. The default (256)
	// covers a whole matrix row at once while keeping a burst of SYNs well under
	// the kernel's per-CPU backlog (netdev_max_backlog, 1000), where a lost SYN
	// would read as a drop (BenchmarkBatchParallel measures this).
	Parallel int
	// Protocol is used for targets that name none (default tcp).
	Protocol connect.Protocol
	// UDPPayload and SCTPPayload are sent to targets that name no payload.
	UDPPayload, SCTPPayload string
}

// DefaultOptions are what `probe batch` uses unless told otherwise.
func DefaultOptions() Options {
	return Options{Timeout: 3 * time.Second, Parallel: 256, Protocol: connect.TCP,
		UDPPayload: connect.DefaultPayload, SCTPPayload: connect.DefaultPayload}
}

// Validate reports options that would make the batch meaningless, naming the flag.
func (o Options) Validate() error {
	if o.Timeout <= 0 {
		return fmt.Errorf("--timeout=%v: must be positive, e.g. --timeout=3s (every target needs a deadline)", o.Timeout)
	}
	if o.Parallel <= 0 {
		return fmt.Errorf("--parallel=%d: must be at least 1", o.Parallel)
	}
	if _, err := connect.ParseProtocol(string(o.Protocol)); err != nil {
		return fmt.Errorf("--protocol=%s: must be tcp, udp, sctp or icmp", o.Protocol)
	}
	return nil
}

// Run probes every target with at most opts.Parallel attempts in flight and calls
// emit with each result in input order, as soon as it and all before it are done.
// Targets are expected to be valid (see ParseTargets); an invalid one still gets a
// result (unknown or dns), never a panic. An emit error stops the batch.
func Run(ctx context.Context, targets []Target, opts Options, emit func(Result) error) error {
	if err := opts.Validate(); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	results := make([]Result, len(targets))
	done := make([]chan struct{}, len(targets))
	for i := range done {
		done[i] = make(chan struct{})
	}
	sem := make(chan struct{}, opts.Parallel)
	var wg sync.WaitGroup
	launched := make(chan struct{})
	// On return, stop launching, then wait for the attempts in flight: none
	// outlives Run.
	defer func() {
		cancel()
		<-launched
		wg.Wait()
	}()
	go func() {
		defer close(launched)
		for i, t := range targets {
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				// Mark the rest done so the emitter below never waits forever.
				for j := i; j < len(targets); j++ {
					results[j] = failed(targets[j], opts, ctx.Err())
					close(done[j])
				}
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				results[i] = probeOne(ctx, t, opts)
				close(done[i])
			}()
		}
	}()
	for i := range targets {
		<-done[i]
		if err := emit(results[i]); err != nil {
			return fmt.Errorf("writing result %d (%s): %w", i+1, targets[i].Target, err)
		}
	}
	return ctx.Err()
}

func probeOne(ctx context.Context, t Target, opts Options) Result {
	req := connect.Request{Dest: t.Target, Protocol: t.Protocol, Timeout: opts.Timeout, Payload: t.Payload}
	if req.Protocol == "" {
		req.Protocol = opts.Protocol
	}
	if req.Payload == "" {
		req.Payload = opts.UDPPayload
		if req.Protocol == connect.SCTP {
			req.Payload = opts.SCTPPayload
		}
	}
	out := connect.Probe(ctx, req)
	r := base(t, req.Protocol)
	r.Verdict = Verdict(out.Verdict)
	r.Detail = out.Detail
	if out.Hint != "" {
		r.Detail += " (" + out.Hint + ")"
	}
	r.Reply = out.Reply
	r.LatencyMS = float64(out.Latency.Microseconds()) / 1000
	return r
}

func failed(t Target, opts Options, err error) Result {
	p := t.Protocol
	if p == "" {
		p = opts.Protocol
	}
	r := base(t, p)
	r.Verdict = Unknown
	r.Detail = fmt.Sprintf("not probed: %v", err)
	return r
}

func base(t Target, p connect.Protocol) Result {
	r := Result{Target: t.Target, Protocol: string(p)}
	if host, port, err := net.SplitHostPort(t.Target); err == nil {
		r.Host = host
		r.Port, _ = strconv.Atoi(port)
	}
	return r
}
