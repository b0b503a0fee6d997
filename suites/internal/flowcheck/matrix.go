package flowcheck

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"time"

	"github.com/flatnet/flatnet/suites/internal/matrix"
	"github.com/flatnet/flatnet/suites/internal/workload"
	"github.com/flatnet/flatnet/suites/reachability"
)

// ProbesOf lists the probed cells of a matrix poll, with their addresses
// from the poll's snapshot.
func ProbesOf(w matrix.PollWindow) ([]Probe, error) {
	var out []Probe
	for vi, view := range w.Plan.Views {
		if vi >= len(w.Comparisons) {
			break
		}
		cmp := w.Comparisons[vi]
		for _, from := range w.Plan.From {
			src, ok := w.Snapshot.PodIPs[from.Peer.String()]
			if !ok {
				return nil, fmt.Errorf("source %s: no pod IP in the snapshot", from.Label)
			}
			for _, to := range view.To {
				for _, pp := range w.Plan.Ports {
					k := reachability.Key{From: from.Label, To: to.Label, PortProtocol: pp}
					p, err := ProbeOf(w.Snapshot, cmp, k, src, to)
					if err != nil {
						return nil, err
					}
					out = append(out, p)
				}
			}
		}
	}
	return out, nil
}

// ProbeOf is the cell k of cmp: src probing to (a pod or a Service).
func ProbeOf(snap workload.Snapshot, cmp *reachability.Comparison, k reachability.Key, src netip.Addr, to reachability.Endpoint) (Probe, error) {
	exp, ok := cmp.Expected.Get(k)
	if !ok {
		return Probe{}, fmt.Errorf("%s: %s has no expected cell", cmp.Title, k)
	}
	obs, judged := cmp.Observed.Get(k)
	p := Probe{Table: cmp.Title, Key: k, Source: src, Port: k.Port, Protocol: k.Protocol, Expected: exp, Observed: obs, Judged: judged}
	if to.Service != nil {
		ip, ok := snap.ClusterIPs[to.Service.Namespace+"/"+to.Service.Name]
		if !ok {
			return Probe{}, fmt.Errorf("%s: Service %s/%s has no ClusterIP in the snapshot", k, to.Service.Namespace, to.Service.Name)
		}
		p.Addr = ip
		if exp.Backend == nil {
			return Probe{}, fmt.Errorf("%s: the expected cell names no backend of the Service", k)
		}
		if p.Backend, ok = snap.PodIPs[exp.Backend.Pod.String()]; !ok {
			return Probe{}, fmt.Errorf("%s: backend %s has no pod IP in the snapshot", k, exp.Backend.Pod)
		}
		p.BackendPort = exp.Backend.Port
		return p, nil
	}
	ip, ok := snap.PodIPs[to.Peer.String()]
	if !ok {
		return Probe{}, fmt.Errorf("%s: destination %s has no pod IP in the snapshot", k, to.Label)
	}
	p.Addr, p.Backend, p.BackendPort = ip, ip, k.Port
	return p, nil
}

// NodeAddrs are the snapshot's node addresses.
func NodeAddrs(snap workload.Snapshot) []netip.Addr {
	var out []netip.Addr
	for _, n := range snap.Cluster.Nodes {
		out = append(out, n.IP)
	}
	return out
}

// Verify is matrix.Options.Verify for c (nil when the mode is off): it
// judges every cell of the poll by its flows, records what it found in the
// poll's comparisons, and prints the cells for the wrong reason to log.
func (c *Checker) Verify(log io.Writer) func(context.Context, matrix.PollWindow) error {
	if c == nil || c.Mode == Off || c.Mode == "" {
		return nil
	}
	return func(ctx context.Context, w matrix.PollWindow) error {
		probes, err := ProbesOf(w)
		if err != nil {
			return fmt.Errorf("flow validation: %w", err)
		}
		checker := *c
		checker.Nodes = append(checker.Nodes, NodeAddrs(w.Snapshot)...)
		t0 := time.Now()
		findings, st, err := checker.Check(ctx, Window{Start: w.Start, End: w.End}, probes)
		if err != nil {
			return fmt.Errorf("flow validation: %w", err)
		}
		Summarize(log, findings, st, time.Since(t0))
		Report(log, c.Mode, Apply(c.Mode, findings, w.Comparisons))
		return nil
	}
}

// Summarize prints one line: how many cells each class has, the flows read
// (and reported lost) and how long the check took.
func Summarize(log io.Writer, findings []Finding, st Stats, took time.Duration) {
	if log == nil {
		return
	}
	n := map[Class]int{}
	flows := 0
	for _, f := range findings {
		n[f.Class]++
		flows += len(f.Flows)
	}
	fmt.Fprintf(log, "  flows: %d cells proven, %d for the wrong reason, %d mismatched, %d unchecked; %d flows read (%d cell matches), %d reported lost; %d read(s), %s\n",
		n[Proven], n[WrongReason], n[Mismatched], n[Unchecked], st.Flows, flows, st.Lost, st.Reads, took.Round(10*time.Millisecond))
}

// Report prints the cells whose flows do not prove their verdict (at most
// 10, then a count).
func Report(log io.Writer, mode Mode, wrong []Finding) {
	if log == nil || len(wrong) == 0 {
		return
	}
	fmt.Fprintf(log, "  flow validation (%s): %d cell(s) not proven by their flows\n", mode, len(wrong))
	for i, f := range wrong {
		if i == 10 {
			fmt.Fprintf(log, "    ... and %d more\n", len(wrong)-i)
			break
		}
		fmt.Fprintf(log, "    %s %s: %s\n", f.Probe.Table, f.Probe.Key, f.Why)
	}
}

// Judge checks the cells of cmp that one source (label from, address src)
// probed to tos during w, and records the findings in cmp (Apply): for
// suites that probe without a matrix (seed). A nil Checker judges nothing.
func (c *Checker) Judge(ctx context.Context, log io.Writer, snap workload.Snapshot, w Window, cmp *reachability.Comparison, from string, src netip.Addr, tos []reachability.Endpoint) error {
	if c == nil || c.Mode == Off || c.Mode == "" {
		return nil
	}
	var probes []Probe
	for _, to := range tos {
		for _, pp := range cmp.Expected.Ports {
			p, err := ProbeOf(snap, cmp, reachability.Key{From: from, To: to.Label, PortProtocol: pp}, src, to)
			if err != nil {
				return fmt.Errorf("flow validation: %w", err)
			}
			probes = append(probes, p)
		}
	}
	checker := *c
	checker.Nodes = append(checker.Nodes, NodeAddrs(snap)...)
	t0 := time.Now()
	findings, st, err := checker.Check(ctx, w, probes)
	if err != nil {
		return fmt.Errorf("flow validation: %w", err)
	}
	Summarize(log, findings, st, time.Since(t0))
	Report(log, c.Mode, Apply(c.Mode, findings, []*reachability.Comparison{cmp}))
	return nil
}
