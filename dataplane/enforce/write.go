package enforce

import (
	"context"
	"maps"
	"time"

	"github.com/flatnet/flatnet/dataplane/compile"
	"github.com/flatnet/flatnet/dataplane/endpointapi"
)

// Datapath writes are coalesced the way Cilium folds endpoint regenerations into
// one trigger run (pkg/trigger): a change of the policy state only updates the
// compiler and counts as pending; a write takes every pending change at once into
// one bpf.Apply (one fill per changed endpoint map, one grace period). Each write
// rewrites every endpoint a change touched, so N informer events written one by
// one cost N rewrites of maps that grow with N, and N grace periods; folded, a
// burst costs a write per grace period or so, each carrying whatever arrived while
// the previous one ran. Nothing waits to fold more: an event on an idle agent is
// written as soon as the writer wakes.
//
// Locks: e.wmu orders the writes (and attaches and detaches, which write too) and
// is taken before e.mu, which guards the state. The writer (writePending) holds
// e.mu only to take the changes and to settle the result, not during the kernel's
// writes, so the informers keep feeding the next write meanwhile.

// changedLocked counts a change of the policy state to be written, arrived now
// (flatnet_policy_enforce_delay_seconds starts here). Call with e.mu held.
func (e *Enforcer) changedLocked() {
	e.pending++
	if len(e.arrivals) < maxArrivals {
		e.arrivals = append(e.arrivals, time.Now())
	}
}

// maxArrivals bounds the arrival instants kept while writes keep failing; the
// oldest, which the delay is about, are kept.
const maxArrivals = 1 << 16

// takeArrivalsLocked takes the arrival instants of the changes a write is about
// to carry. Call with e.mu held.
func (e *Enforcer) takeArrivalsLocked() []time.Time {
	a := e.arrivals
	e.arrivals = nil
	return a
}

// enforcedLocked records, for each change a write carried (arrivals), the delay
// from its arrival to done, the end of the write that put it in force (the
// kernel swaps each policy map in up to one RCU grace period before that). The
// changes of a write that failed as a whole (to be rewritten in full) wait for
// the write that succeeds. Call with e.mu held, after appliedLocked.
func (e *Enforcer) enforcedLocked(arrivals []time.Time, done time.Time) {
	if e.resync {
		e.requeueArrivalsLocked(arrivals)
		return
	}
	for _, a := range arrivals {
		e.metrics.EnforceDelay.Observe(done.Sub(a).Seconds())
	}
}

// requeueArrivalsLocked hands the arrivals of changes a write did not put in
// force to the next write.
func (e *Enforcer) requeueArrivalsLocked(arrivals []time.Time) {
	e.arrivals = append(arrivals, e.arrivals...)[:min(len(arrivals)+len(e.arrivals), maxArrivals)]
}

// queue has the writer (Run) write a change made by one of the informers' handlers;
// err is the change's own (an invalid object), returned as is.
func (e *Enforcer) queue(err error) error {
	select {
	case e.kick <- struct{}{}:
	default: // a write is due already; it takes this change too
	}
	return err
}

// commit writes a change made by an exported method before returning, with every
// other change pending (a caller that finds its change written by another's write
// returns at once). err is the change's own: a change that failed is not written.
func (e *Enforcer) commit(ctx context.Context, err error) error {
	if err != nil {
		return err
	}
	return e.writePending(ctx, false)
}

// writePending writes the pending changes; retry also rewrites what failed last
// time. Before the first sync it writes nothing (Synced writes everything at once).
func (e *Enforcer) writePending(ctx context.Context, retry bool) error {
	e.wmu.Lock()
	defer e.wmu.Unlock()
	return e.writePendingLocked(ctx, retry)
}

// writePendingLocked is writePending with e.wmu held.
func (e *Enforcer) writePendingLocked(ctx context.Context, retry bool) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.synced || (e.pending == 0 && !e.resync && !(retry && len(e.epFail) > 0)) {
		return nil
	}
	for {
		arrivals := e.takeArrivalsLocked()
		up := e.compileLocked()
		// Attaches and detaches hold e.wmu: the endpoints cannot change until the
		// result is settled.
		attached := maps.Clone(e.attached)
		e.mu.Unlock()

		err := e.apply(ctx, up, attached)
		done := time.Now()

		e.mu.Lock()
		if again, err := e.settleLocked(ctx, up, err, arrivals, done); !again {
			return err
		}
	}
}

// settleLocked settles a write of up that ended at done (appliedLocked,
// enforcedLocked). An unsettled update (see compile.Update) is then passed to the
// compiler as written: the identities it kept in the policies for the addresses it
// moved off them retire, and the policy changes held for the prefixes it staged
// apply; again says a write must follow. Not after a failed write: its rewrite
// comes first. The changes such a write carried are in force only after the
// write that follows (their delays are taken then). Call with e.wmu and e.mu held.
func (e *Enforcer) settleLocked(ctx context.Context, up compile.Update, err error, arrivals []time.Time, done time.Time) (again bool, _ error) {
	err = e.appliedLocked(ctx, up, err)
	if up.Held > 0 && err == nil && !e.resync {
		e.requeueArrivalsLocked(arrivals)
	} else {
		e.enforcedLocked(arrivals, done)
	}
	if e.wrote != nil {
		e.wrote(up)
	}
	if err != nil || e.resync || !up.Unsettled() {
		return false, err
	}
	e.c.Written(up)
	e.pending++
	return true, nil
}

// apply writes up into the datapath, the endpoints' interfaces looked up in
// attached, and records how long it took.
func (e *Enforcer) apply(ctx context.Context, up compile.Update, attached map[string]endpointapi.Endpoint) error {
	t0 := time.Now()
	err := e.d.Apply(ctx, up, func(ns, name string) (int, bool) {
		ep, ok := attached[ns+"/"+name]
		return ep.HostIfIndex, ok
	})
	e.metrics.Sync.Observe(time.Since(t0).Seconds())
	return err
}
