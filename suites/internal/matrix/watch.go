package matrix

import (
	"context"
	"sync"
	"time"

	"github.com/flatnet/flatnet/probes/podexec"
	"github.com/flatnet/flatnet/suites/internal/workload"
	"github.com/flatnet/flatnet/suites/report"
)

// Gap is a cell that should have stayed reachable but was seen blocked.
type Gap struct {
	Table  string
	Key    report.Key
	At     time.Duration // since the watch started
	Detail string
}

// Watcher keeps probing a plan in the background, so a policy change is
// applied while traffic flows, and records every blocked answer on the cells
// it guards.
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
func Watch(ctx context.Context, r *podexec.Runner, p Plan, snap workload.Snapshot, guard func(view int, k report.Key) bool) *Watcher {
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
				continue
			}
			w.rounds++
			at := time.Since(start)
			for vi, t := range tables {
				for _, k := range t.Keys() {
					c, ok := t.Get(k)
					if ok && !c.Reachable && guard(vi, k) {
						w.gaps = append(w.gaps, Gap{Table: t.Title, Key: k, At: at, Detail: c.Detail})
					}
				}
			}
			w.mu.Unlock()
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
func StillReachable(before, after []*report.Table) func(view int, k report.Key) bool {
	return func(view int, k report.Key) bool {
		if view >= len(before) || view >= len(after) {
			return false
		}
		b, ok1 := before[view].Get(k)
		a, ok2 := after[view].Get(k)
		return ok1 && ok2 && b.Reachable && a.Reachable
	}
}
