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
	w := &Watcher{cancel: cancel, done: make(chan struct{})}
	start := time.Now()
	go func() {
		defer close(w.done)
		for ctx.Err() == nil {
			tables, err := Observe(ctx, r, p, snap)
			if ctx.Err() != nil {
				return // a round cut short by Stop says nothing about the path
			}
			w.mu.Lock()
			if err != nil {
				w.err = err
				w.mu.Unlock()
				return
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

// Stop ends the watch (waiting for the round in flight) and returns the gaps
// seen, how many full rounds ran, and the first error that ended it early.
func (w *Watcher) Stop() ([]Gap, int, error) {
	w.cancel()
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
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
