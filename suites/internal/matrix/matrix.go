// Package matrix fills truth tables from the cluster: every source pod probes
// every destination (by pod IP and through Services) on every port with one
// `probe batch` exec per source, all sources at once, and the observed tables
// are compared with the oracle's until they agree or a deadline passes.
package matrix

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/flatnet/flatnet/fixtures/oracle"
	"github.com/flatnet/flatnet/probes/batch"
	"github.com/flatnet/flatnet/probes/connect"
	"github.com/flatnet/flatnet/probes/podexec"
	"github.com/flatnet/flatnet/suites/internal/workload"
	"github.com/flatnet/flatnet/suites/reachability"
)

// View is one way of reaching the destinations: their pod IPs, or their
// Services (endpoints with Service set).
type View struct {
	Name string
	To   []reachability.Endpoint
}

// Plan is one matrix: every source probes every destination of every view
// on every port.
type Plan struct {
	Title string
	From  []reachability.Endpoint // pods
	Views []View
	Ports []reachability.PortProtocol
}

// cellRef says which cell a target fills.
type cellRef struct {
	view int
	to   string
	port reachability.PortProtocol
}

// Validate checks the plan before anything is probed.
func (p Plan) Validate() error {
	if len(p.From) == 0 || len(p.Views) == 0 || len(p.Ports) == 0 {
		return fmt.Errorf("matrix %q: needs sources, views and ports (got %d, %d, %d)", p.Title, len(p.From), len(p.Views), len(p.Ports))
	}
	for i, f := range p.From {
		if f.Peer.Kind != oracle.PeerPod || f.Service != nil {
			return fmt.Errorf("matrix %q: From[%d] %s: sources must be pods (probes run in them)", p.Title, i, f.Label)
		}
	}
	for _, v := range p.Views {
		if len(v.To) == 0 {
			return fmt.Errorf("matrix %q: view %q has no destinations", p.Title, v.Name)
		}
	}
	for _, pp := range p.Ports {
		// ICMP has no port to put in a matrix column: the north-south family
		// (suites/internal/paths) probes it.
		if proto, err := connect.ParseProtocol(strings.ToLower(string(pp.Protocol))); err != nil || proto == connect.ICMP {
			return fmt.Errorf("matrix %q: port %s: protocol must be TCP, UDP or SCTP", p.Title, pp)
		}
	}
	return nil
}

// TableTitle is the title of view i's tables.
func (p Plan) TableTitle(i int) string { return p.Title + " [" + p.Views[i].Name + "]" }

// targets lists what every source probes (the same for all) and the cell
// each target fills, with addresses from snap.
func (p Plan) targets(snap workload.Snapshot) ([]batch.Target, []cellRef, error) {
	var ts []batch.Target
	var refs []cellRef
	for vi, v := range p.Views {
		for _, to := range v.To {
			addr, err := address(snap, to)
			if err != nil {
				return nil, nil, fmt.Errorf("matrix %q: %w", p.Title, err)
			}
			for _, pp := range p.Ports {
				ts = append(ts, batch.Target{
					Target:   net.JoinHostPort(addr, strconv.Itoa(pp.Port)),
					Protocol: connect.Protocol(strings.ToLower(string(pp.Protocol))),
				})
				refs = append(refs, cellRef{view: vi, to: to.Label, port: pp})
			}
		}
	}
	return ts, refs, nil
}

func address(snap workload.Snapshot, e reachability.Endpoint) (string, error) {
	if e.Service != nil {
		ref := e.Service.Namespace + "/" + e.Service.Name
		ip, ok := snap.ClusterIPs[ref]
		if !ok {
			return "", fmt.Errorf("destination %s: Service %s has no ClusterIP in the snapshot", e.Label, ref)
		}
		return ip.String(), nil
	}
	if e.Peer.Kind != oracle.PeerPod {
		return "", fmt.Errorf("destination %s: only pods and Services are probed", e.Label)
	}
	ip, ok := snap.PodIPs[e.Peer.String()]
	if !ok {
		return "", fmt.Errorf("destination %s: pod %s has no IP in the snapshot", e.Label, e.Peer)
	}
	return ip.String(), nil
}

// sources are the pods the probes run in.
func (p Plan) sources(snap workload.Snapshot) ([]podexec.Pod, error) {
	var out []podexec.Pod
	for _, f := range p.From {
		if _, ok := snap.PodIPs[f.Peer.String()]; !ok {
			return nil, fmt.Errorf("matrix %q: source %s is not a running pod of the snapshot", p.Title, f.Label)
		}
		out = append(out, podexec.Pod{Namespace: f.Peer.Namespace, Name: f.Peer.Name, Container: snap.ExecContainers[f.Peer.String()]})
	}
	return out, nil
}

// Expect asks the oracle for the plan's expected tables, one per view.
func Expect(o *oracle.Oracle, p Plan) ([]*reachability.Table, error) {
	var out []*reachability.Table
	for i, v := range p.Views {
		t, err := reachability.Expected(o, p.TableTitle(i), p.From, v.To, p.Ports)
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, nil
}

// Observe probes the whole plan once: one exec per source, every source at
// once, every target of a source in parallel in its pod.
func Observe(ctx context.Context, r *podexec.Runner, p Plan, snap workload.Snapshot) ([]*reachability.Table, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	targets, refs, err := p.targets(snap)
	if err != nil {
		return nil, err
	}
	pods, err := p.sources(snap)
	if err != nil {
		return nil, err
	}
	rows, err := r.Matrix(ctx, pods, targets, 0)
	if err != nil {
		return nil, fmt.Errorf("matrix %q: %w", p.Title, err)
	}
	return fill(p, refs, rows)
}

// fill turns one row of cells per source into one table per view. A
// connected probe is reachable; a refusal, timeout or error is not. A cell
// that was not probed (unknown) or whose attempts disagreed (flaky) is left
// empty: the comparison reports it, it is never guessed.
func fill(p Plan, refs []cellRef, rows [][]podexec.Cell) ([]*reachability.Table, error) {
	var tables []*reachability.Table
	for i, v := range p.Views {
		t, err := reachability.NewTable(p.TableTitle(i), labels(p.From), labels(v.To), p.Ports)
		if err != nil {
			return nil, err
		}
		tables = append(tables, t)
	}
	if len(rows) != len(p.From) {
		return nil, fmt.Errorf("matrix %q: %d rows of results for %d sources", p.Title, len(rows), len(p.From))
	}
	for si, row := range rows {
		if len(row) != len(refs) {
			return nil, fmt.Errorf("matrix %q: source %s: %d results for %d targets", p.Title, p.From[si].Label, len(row), len(refs))
		}
		for ti, c := range row {
			if c.Verdict == batch.Unknown || c.Verdict == batch.Flaky {
				continue
			}
			ref := refs[ti]
			cell := reachability.Cell{Reachable: c.Verdict == batch.Connected, Detail: describe(c)}
			if err := tables[ref.view].Set(reachability.Key{From: p.From[si].Label, To: ref.to, PortProtocol: ref.port}, cell); err != nil {
				return nil, err
			}
		}
	}
	return tables, nil
}

// describe is a probe's answer as agnhost connect would print it, with the
// address probed: "TIMEOUT 10.224.0.9:80" or "connected 10.96.0.12:81".
func describe(c podexec.Cell) string {
	if len(c.Attempts) == 0 {
		return string(c.Verdict)
	}
	last := c.Attempts[len(c.Attempts)-1]
	s := strings.ToUpper(string(c.Verdict))
	if c.Verdict == batch.Connected {
		s = "connected"
	}
	s += " " + last.Target + "/" + last.Protocol
	if last.Detail != "" && c.Verdict != batch.Connected {
		s += ": " + last.Detail
	}
	return s
}

func labels(es []reachability.Endpoint) []string {
	var out []string
	for _, e := range es {
		out = append(out, e.Label)
	}
	return out
}

// Options bound the wait for the cluster to agree with the oracle.
type Options struct {
	// Timeout is how long to keep probing while the tables disagree; a poll
	// is never started after it.
	Timeout time.Duration
	// Pause is the rest between polls.
	Pause time.Duration
	// Progress, when set, hears about every poll.
	Progress func(Poll)
	// Verify, when set, judges a poll by more than its answers (flowcheck:
	// the datapath's own flows). It is called on a poll whose answers all
	// agree with the oracle, and on the last poll before the deadline; it may
	// add WrongReason cells to the comparisons (which keep the step polling)
	// and attach flows to mismatches.
	Verify func(context.Context, PollWindow) error
}

// PollWindow is one poll as Options.Verify sees it: what was probed, from
// which snapshot, between when, and how its answers compared.
type PollWindow struct {
	Plan        Plan
	Snapshot    workload.Snapshot
	Start, End  time.Time
	Comparisons []*reachability.Comparison
}

// Poll is one round of probes.
type Poll struct {
	N        int
	Took     time.Duration
	Elapsed  time.Duration
	Matched  int
	Total    int
	Detailed []string // each view's summary
	// Err is an exec that failed (the API server or kubelet dropped the
	// stream): no cell was judged by this poll, and the next one retries.
	Err error
}

func (p Poll) String() string {
	if p.Err != nil {
		return fmt.Sprintf("poll %d: no verdict, retrying (%v)", p.N, p.Err)
	}
	return fmt.Sprintf("poll %d: %d/%d cells as expected (%s; %s elapsed)", p.N, p.Matched, p.Total, p.Took.Round(10*time.Millisecond), p.Elapsed.Round(10*time.Millisecond))
}

// Outcome is the last poll's comparisons and how long agreement took.
type Outcome struct {
	Comparisons []*reachability.Comparison
	Polls       int
	// Converged is the time from the first poll's start to the end of the
	// first poll that agreed in full; zero when none did.
	Converged time.Duration
}

// OK says the last poll agreed with the oracle in every cell.
func (o Outcome) OK() bool {
	for _, c := range o.Comparisons {
		if !c.OK() {
			return false
		}
	}
	return len(o.Comparisons) > 0
}

// Converge probes until the observed tables equal expected (one per view)
// or opts.Timeout passes, and returns the final comparison. Cells that
// changed between polls say so in their detail ("reachable in 2 of 5
// polls"), so a flapping path is visible in the report.
func Converge(ctx context.Context, r *podexec.Runner, p Plan, snap workload.Snapshot, expected []*reachability.Table, opts Options) (Outcome, error) {
	if len(expected) != len(p.Views) {
		return Outcome{}, fmt.Errorf("matrix %q: %d expected tables for %d views", p.Title, len(expected), len(p.Views))
	}
	start := time.Now()
	hist := history{}
	var out Outcome
	failed := 0
	for {
		t0 := time.Now()
		observed, err := Observe(ctx, r, p, snap)
		if err != nil {
			// A broken exec says nothing about the network: try again, but
			// never past the deadline nor more than maxExecFailures in a row.
			failed++
			if opts.Progress != nil {
				opts.Progress(Poll{N: out.Polls + failed, Took: time.Since(t0), Elapsed: time.Since(start), Err: err})
			}
			if failed >= maxExecFailures || time.Since(start) >= opts.Timeout || ctx.Err() != nil {
				return out, err
			}
			continue
		}
		failed = 0
		out.Polls++
		hist.add(observed)
		out.Comparisons = out.Comparisons[:0]
		poll := Poll{N: out.Polls, Took: time.Since(t0), Elapsed: time.Since(start)}
		for i, obs := range observed {
			c, err := reachability.Compare(obs.Title, expected[i], obs)
			if err != nil {
				return out, err
			}
			out.Comparisons = append(out.Comparisons, c)
		}
		last := time.Since(start)+opts.Pause >= opts.Timeout
		if opts.Verify != nil && (out.OK() || last) {
			w := PollWindow{Plan: p, Snapshot: snap, Start: t0, End: t0.Add(poll.Took), Comparisons: out.Comparisons}
			if err := opts.Verify(ctx, w); err != nil {
				return out, fmt.Errorf("matrix %q: verifying poll %d: %w", p.Title, out.Polls, err)
			}
		}
		for i, c := range out.Comparisons {
			total := len(expected[i].Keys())
			poll.Total += total
			poll.Matched += total - len(c.Mismatches) - len(c.Missing) - len(c.WrongReason)
			poll.Detailed = append(poll.Detailed, c.Summary())
		}
		if opts.Progress != nil {
			opts.Progress(poll)
		}
		if out.OK() {
			out.Converged = time.Since(start)
			return out, nil
		}
		if last {
			hist.annotate(out.Comparisons)
			return out, nil
		}
		select {
		case <-ctx.Done():
			hist.annotate(out.Comparisons)
			return out, ctx.Err()
		case <-time.After(opts.Pause):
		}
	}
}

// maxExecFailures is how many polls in a row may fail to exec before the
// step gives up.
const maxExecFailures = 3

// history counts, per table and cell, how often a probe got through.
type history map[string]map[reachability.Key][2]int // [reachable, polls]

func (h history) add(tables []*reachability.Table) {
	for _, t := range tables {
		m := h[t.Title]
		if m == nil {
			m = map[reachability.Key][2]int{}
			h[t.Title] = m
		}
		for _, k := range t.Keys() {
			c, ok := t.Get(k)
			if !ok {
				continue
			}
			n := m[k]
			if c.Reachable {
				n[0]++
			}
			n[1]++
			m[k] = n
		}
	}
}

// annotate adds the history of each mismatched cell that did not always
// answer the same.
func (h history) annotate(cs []*reachability.Comparison) {
	for _, c := range cs {
		for i := range c.Mismatches {
			m := &c.Mismatches[i]
			n := h[c.Observed.Title][m.Key]
			if n[0] != 0 && n[0] != n[1] {
				m.Observed.Detail += fmt.Sprintf(" (reachable in %d of %d polls)", n[0], n[1])
			}
		}
	}
}
