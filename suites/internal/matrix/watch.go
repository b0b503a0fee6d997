package matrix

import (
	"context"
	"sync"
	"time"

	"github.com/flatnet/flatnet/probes/podexec"
	"github.com/flatnet/flatnet/suites/internal/workload"
	"github.com/flatnet/flatnet/suites/reachability"
)

// Gap is an answer the watch did not accept: a cell that should have stayed
// reachable seen blocked, or a cell seen in a state no expectation allowed.
type Gap struct {
	Table     string
	Key       reachability.Key
	At        time.Duration // since the watch started
	Reachable bool          // what was observed
	Detail    string
}

// Accept says whether an answer observed on cell k of view i is one the
// watch may see.
type Accept func(view int, k reachability.Key, reachable bool) bool

// Round is one round of a watch, for progress reports.
type Round struct {
	N       int           // rounds completed, this one included
	At      time.Duration // its end, since the watch started
	Cells   int           // answers judged
	Refused int           // answers not accepted
	// Err is a lost exec stream: this round judged nothing.
	Err error
}

// Watcher keeps probing a plan in the background, so a change (a policy
// update, an agent or a node going away) happens while traffic flows, and
// records every answer it does not accept.
type Watcher struct {
	cancel context.CancelFunc
	stop   chan struct{}
	done   chan struct{}
	mu     sync.Mutex
	gaps   []Gap
	rounds int
	err    error
}

// Watch starts probing p round after round until Stop; guard picks the
// cells (table index, key) that must never be seen blocked.
func Watch(ctx context.Context, r *podexec.Runner, p Plan, snap workload.Snapshot, guard func(view int, k reachability.Key) bool) *Watcher {
	return WatchAccepting(ctx, r, p, snap, func(view int, k reachability.Key, reachable bool) bool {
		return reachable || !guard(view, k)
	}, nil)
}

// WatchAccepting starts probing p round after round until Stop, recording
// every answer accept refuses; progress, when set, hears about each round
// (from the watch's goroutine).
func WatchAccepting(ctx context.Context, r *podexec.Runner, p Plan, snap workload.Snapshot, accept Accept, progress func(Round)) *Watcher {
	ctx, cancel := context.WithCancel(ctx)
	w := &Watcher{cancel: cancel, stop: make(chan struct{}), done: make(chan struct{})}
	start := time.Now()
	go func() {
		defer close(w.done)
		// The first round always runs: it is the one under way when the
		// change is applied.
		for first := true; ; first = false {
			if !first {
				select {
				case <-w.stop:
					return
				default:
				}
			}
			tables, err := Observe(ctx, r, p, snap)
			if ctx.Err() != nil {
				return
			}
			w.mu.Lock()
			if err != nil {
				// A dropped exec stream judges nothing; the next round does.
				w.err = err
				w.mu.Unlock()
				if progress != nil {
					progress(Round{At: time.Since(start), Err: err})
				}
				continue
			}
			w.rounds++
			round := Round{N: w.rounds, At: time.Since(start)}
			for vi, t := range tables {
				for _, k := range t.Keys() {
					c, ok := t.Get(k)
					if !ok {
						continue
					}
					round.Cells++
					if !accept(vi, k, c.Reachable) {
						round.Refused++
						w.gaps = append(w.gaps, Gap{Table: t.Title, Key: k, At: round.At, Reachable: c.Reachable, Detail: c.Detail})
					}
				}
			}
			w.mu.Unlock()
			if progress != nil {
				progress(round)
			}
		}
	}()
	return w
}

// Stop lets the round in flight finish (it spans the change, so it is the
// one that matters), ends the watch and returns the gaps seen and how many
// full rounds ran. The error is the last exec failure when no round
// completed at all: then the watch judged nothing.
func (w *Watcher) Stop() ([]Gap, int, error) {
	close(w.stop)
	<-w.done
	w.cancel()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.rounds > 0 {
		return w.gaps, w.rounds, nil
	}
	return w.gaps, w.rounds, w.err
}

// StillReachable guards the cells reachable both before and after a change:
// the ones traffic must keep flowing on while it is applied.
func StillReachable(before, after []*reachability.Table) func(view int, k reachability.Key) bool {
	return OpenThroughout(before, after)
}

// OpenThroughout guards the cells reachable in every moment a change may
// pass through (each one table per view): with several parts to a change
// (a policy and labels, seen by agents in any order), a path the oracle
// closes in some mix of them may be seen blocked; one open in all of them
// may not. A cell some moment lacks (a pod that comes or goes) is not
// guarded.
func OpenThroughout(moments ...[]*reachability.Table) func(view int, k reachability.Key) bool {
	return func(view int, k reachability.Key) bool {
		for _, tables := range moments {
			if view >= len(tables) {
				return false
			}
			if c, ok := tables[view].Get(k); !ok || !c.Reachable {
				return false
			}
		}
		return len(moments) > 0
	}
}

// OneOf accepts an answer equal to the cell of any of the expectations
// (each one table per view): the oracle's tables for the policy set before a
// change and after it, or a single one when nothing should change at all.
// A cell no expectation has is refused: nothing vouches for it.
func OneOf(expectations ...[]*reachability.Table) Accept {
	return func(view int, k reachability.Key, reachable bool) bool {
		for _, tables := range expectations {
			if view >= len(tables) {
				continue
			}
			if c, ok := tables[view].Get(k); ok && c.Reachable == reachable {
				return true
			}
		}
		return false
	}
}

// Window is what a continuous watch may see while changes follow one
// another: in each round, the answers of every expectation in force at any
// time since the round began (a change applied mid-round may show either
// side of it). Pass Accept and RoundEnd to WatchAccepting; call Begin before
// a change is applied and Settle once the cluster agrees with it.
type Window struct {
	mu      sync.Mutex
	settled []*reachability.Table
	pending [][]*reachability.Table // applied, not yet agreed with
	round   [][]*reachability.Table // what the round under way may see
}

// NewWindow starts with the cluster agreeing with settled.
func NewWindow(settled []*reachability.Table) *Window {
	return &Window{settled: settled, round: [][]*reachability.Table{settled}}
}

// Begin announces that next is about to be applied.
func (w *Window) Begin(next []*reachability.Table) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.pending = append(w.pending, next)
	w.round = append(w.round, next)
}

// Settle records that the cluster agrees with now, which Begin announced.
// The round under way still accepts what it could see before.
func (w *Window) Settle(now []*reachability.Table) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.settled = now
	for i, p := range w.pending {
		if sameTables(p, now) {
			w.pending = append(w.pending[:i:i], w.pending[i+1:]...)
			break
		}
	}
}

// Accept judges an answer of the round under way.
func (w *Window) Accept(view int, k reachability.Key, reachable bool) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return OneOf(w.round...)(view, k, reachable)
}

// RoundEnd closes a round (WatchAccepting's progress): the next one may see
// the settled expectation and those still being applied.
func (w *Window) RoundEnd(Round) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.round = append([][]*reachability.Table{w.settled}, w.pending...)
}

func sameTables(a, b []*reachability.Table) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
