// Package paths probes north-south and node paths (cilium-cli's pod-to-world,
// pod-to-cidr, host and NodePort tests) as truth tables judged by the oracle: a
// group is some sources (pods, hostNetwork pods standing for their nodes, an
// outside container) and destinations that each say how they are dialled and
// how the oracle decides them. A cell the oracle finds not enforceable with
// kube-proxy (oracle.ErrNotEnforceable) is probed and shown with its quoted
// reason, never compared and never counted as passing.
package paths

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/flatnet/flatnet/fixtures/oracle"
	"github.com/flatnet/flatnet/probes/batch"
	"github.com/flatnet/flatnet/probes/connect"
	"github.com/flatnet/flatnet/probes/podexec"
	"github.com/flatnet/flatnet/suites/reachability"
	"github.com/flatnet/flatnet/suites/report"
)

// Source is a row: where the probe runs and who the oracle sees sending.
type Source struct {
	Label string
	Peer  oracle.Peer
	Exec  podexec.Pod
	// Runner runs the probes (an API server exec for pods, docker exec for
	// the outside client).
	Runner *podexec.Runner
}

// Decision is how the oracle judges one destination for one source.
type Decision func(o *oracle.Oracle, src oracle.Peer) (oracle.Verdict, error)

// Dest is a column: the address dialled and how the oracle decides it.
type Dest struct {
	Label  string
	Target string // host:port (host:0 for ICMP)
	Decide Decision
}

// Group is one table: every source probes every destination on Port.
type Group struct {
	Title string
	From  []Source
	To    []Dest
	Port  reachability.PortProtocol
}

// Cell positions are reachability keys; undefined cells carry their reason.
type expectation struct {
	table     *reachability.Table
	undefined map[reachability.Key]string
}

// Result is one group's last poll.
type Result struct {
	Comparison *reachability.Comparison
	// NotEnforceable are the cells the oracle has no verdict for, with what
	// was observed and the reason quoted from the specifications.
	NotEnforceable []string
}

// OK: every defined cell as the oracle says.
func (r Result) OK() bool { return r.Comparison != nil && r.Comparison.OK() }

func (g Group) labels() (from, to []string) {
	for _, s := range g.From {
		from = append(from, s.Label)
	}
	for _, d := range g.To {
		to = append(to, d.Label)
	}
	return from, to
}

func (g Group) expect(o *oracle.Oracle) (expectation, error) {
	from, to := g.labels()
	t, err := reachability.NewTable(g.Title, from, to, []reachability.PortProtocol{g.Port})
	if err != nil {
		return expectation{}, err
	}
	e := expectation{table: t, undefined: map[reachability.Key]string{}}
	for _, s := range g.From {
		for _, d := range g.To {
			k := reachability.Key{From: s.Label, To: d.Label, PortProtocol: g.Port}
			v, err := d.Decide(o, s.Peer)
			if errors.Is(err, oracle.ErrNotEnforceable) {
				e.undefined[k] = err.Error()
				continue
			}
			if err != nil {
				return expectation{}, fmt.Errorf("%s: %s: %w", g.Title, k, err)
			}
			var pols []string
			for _, r := range v.Policies() {
				pols = append(pols, r.String())
			}
			if err := t.Set(k, reachability.Cell{Reachable: v.Allowed, Detail: v.String(), Policies: pols}); err != nil {
				return expectation{}, err
			}
		}
	}
	return e, nil
}

// observe probes the group once: one exec per source, all at once.
func (g Group) observe(ctx context.Context) (*reachability.Table, error) {
	from, to := g.labels()
	t, err := reachability.NewTable(g.Title, from, to, []reachability.PortProtocol{g.Port})
	if err != nil {
		return nil, err
	}
	proto := connect.Protocol(strings.ToLower(string(g.Port.Protocol)))
	var targets []batch.Target
	for _, d := range g.To {
		targets = append(targets, batch.Target{Target: d.Target, Protocol: proto})
	}
	rows := make([][]podexec.Cell, len(g.From))
	errs := make([]error, len(g.From))
	done := make(chan int)
	for i, s := range g.From {
		go func() {
			rows[i], errs[i] = s.Runner.Probe(ctx, s.Exec, targets)
			done <- i
		}()
	}
	for range g.From {
		<-done
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("%s: %w", g.Title, err)
	}
	for i, s := range g.From {
		for j, c := range rows[i] {
			if c.Verdict == batch.Unknown || c.Verdict == batch.Flaky {
				continue
			}
			detail := string(c.Verdict) + " " + g.To[j].Target + "/" + string(proto)
			if n := len(c.Attempts); n > 0 && c.Verdict != batch.Connected && c.Attempts[n-1].Detail != "" {
				detail += ": " + c.Attempts[n-1].Detail
			}
			k := reachability.Key{From: s.Label, To: g.To[j].Label, PortProtocol: g.Port}
			if err := t.Set(k, reachability.Cell{Reachable: c.Verdict == batch.Connected, Detail: detail}); err != nil {
				return nil, err
			}
		}
	}
	return t, nil
}

// judge compares one poll with the expectation, showing each undefined cell
// as observed (so the grid never marks it) and listing it apart.
func (e expectation) judge(title string, observed *reachability.Table) (Result, error) {
	expected, err := reachability.NewTable(title, e.table.From, e.table.To, e.table.Ports)
	if err != nil {
		return Result{}, err
	}
	var res Result
	for _, k := range e.table.Keys() {
		if reason, ok := e.undefined[k]; ok {
			got, seen := observed.Get(k)
			word := "not probed"
			if seen {
				word = reach(got.Reachable) + " (" + got.Detail + ")"
				if err := expected.Set(k, reachability.Cell{Reachable: got.Reachable, Detail: "not enforceable with kube-proxy: " + reason}); err != nil {
					return Result{}, err
				}
			}
			res.NotEnforceable = append(res.NotEnforceable, fmt.Sprintf("%s: observed %s; oracle: %s", k, word, reason))
			continue
		}
		c, _ := e.table.Get(k)
		if err := expected.Set(k, c); err != nil {
			return Result{}, err
		}
	}
	res.Comparison, err = reachability.Compare(title, expected, observed)
	return res, err
}

func reach(ok bool) string {
	if ok {
		return "reachable"
	}
	return "blocked"
}

// Converge probes every group until each defined cell is the oracle's or
// timeout passes, and returns the last poll of each group. progress hears
// one line per poll.
func Converge(ctx context.Context, o *oracle.Oracle, groups []Group, timeout, pause time.Duration, progress func(string)) ([]Result, error) {
	var exps []expectation
	for _, g := range groups {
		e, err := g.expect(o)
		if err != nil {
			return nil, err
		}
		exps = append(exps, e)
	}
	start := time.Now()
	for poll := 1; ; poll++ {
		results := make([]Result, len(groups))
		allOK := true
		var summary []string
		for i, g := range groups {
			obs, err := g.observe(ctx)
			if err != nil {
				return nil, err
			}
			if results[i], err = exps[i].judge(g.Title, obs); err != nil {
				return nil, err
			}
			allOK = allOK && results[i].OK()
			line := results[i].Comparison.Summary()
			if n := len(results[i].NotEnforceable); n > 0 {
				line += fmt.Sprintf(" (%d of them not judged: no verdict with kube-proxy)", n)
			}
			summary = append(summary, line)
		}
		if progress != nil {
			progress(fmt.Sprintf("poll %d (%s): %s", poll, time.Since(start).Round(10*time.Millisecond), strings.Join(summary, "; ")))
		}
		if allOK || time.Since(start)+pause >= timeout {
			return results, nil
		}
		select {
		case <-ctx.Done():
			return results, ctx.Err()
		case <-time.After(pause):
		}
	}
}

// Write prints a result: the grid with its mismatches, then the cells not
// judged and why.
func Write(w io.Writer, r Result) error {
	if err := report.WriteComparison(w, r.Comparison); err != nil {
		return err
	}
	if len(r.NotEnforceable) == 0 {
		return nil
	}
	var b strings.Builder
	fmt.Fprintf(&b, "not judged: %d cell(s) the oracle has no verdict for (shown as observed above and in the count, never compared):\n", len(r.NotEnforceable))
	for _, s := range r.NotEnforceable {
		b.WriteString("  " + s + "\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}
