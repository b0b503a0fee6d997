package enforce

import (
	"context"
	"time"
)

// DefaultHookMoveQuiet is how long no endpoint may have been attached before the
// hook mover starts moving endpoints from their filters to tcx links.
const DefaultHookMoveQuiet = time.Second

// RunHookMover moves endpoints from the filters they are attached with to tcx links
// (bpf.Datapath.MoveToTCX: the same programs, on hooks no tc command can delete) until ctx ends,
// only while the node is quiet: no Attach in flight and none for HookMoveQuiet.
// Each direction's move holds the kernel's rtnl lock through a grace period (~12 ms
// here), which a pod being set up meanwhile would wait for, so the mover gives way
// as soon as an Attach arrives and goes on at the next quiet spell.
func (e *Enforcer) RunHookMover(ctx context.Context) error {
	quiet := e.cfg.HookMoveQuiet
	if quiet <= 0 {
		quiet = DefaultHookMoveQuiet
	}
	tick(ctx, quiet/4, func() {
		todo := e.d.FilteredEndpoints()
		e.metrics.OnFilters.Set(float64(len(todo)))
		for _, ifindex := range todo {
			if ctx.Err() != nil || !e.attachQuiet(quiet) {
				break
			}
			moved, err := e.d.MoveToTCX(ctx, ifindex)
			if err != nil && ctx.Err() == nil {
				e.log.Warn("moving an endpoint to tcx links failed; it stays on its filters (same verdicts)",
					"ifindex", ifindex, "error", err)
				continue
			}
			if moved {
				e.metrics.HookMoves.Inc()
			}
		}
	})
	return nil
}

// attachQuiet says whether no Attach is in flight and none began within d.
func (e *Enforcer) attachQuiet(d time.Duration) bool {
	return e.attaching.Load() == 0 && time.Since(time.Unix(0, e.lastAttach.Load())) >= d
}

// attachBegins marks an Attach in flight (for the hook mover); call the function
// it returns when it ends.
func (e *Enforcer) attachBegins() func() {
	e.lastAttach.Store(time.Now().UnixNano())
	e.attaching.Add(1)
	return func() {
		e.lastAttach.Store(time.Now().UnixNano())
		e.attaching.Add(-1)
	}
}
