package enforce

import (
	"context"
	"time"
)

// DefaultCTGCInterval is how often expired established connections are deleted from
// the pods' tables. Those tables evict nothing to make room (that is what keeps a
// flood from pushing established connections out), so idle connections past their
// lifetime (6 h TCP, 60 s others) stay until collected: a table full of them keeps
// its pod's new established connections in the shared LRU table, where a flood can
// evict them. Once a minute is plenty for lifetimes of minutes to hours.
const DefaultCTGCInterval = time.Minute

// RunConntrackGC deletes expired established connections, and those detached
// endpoints left, every interval until ctx ends (bpf.Datapath.ExpireConnections).
func (e *Enforcer) RunConntrackGC(ctx context.Context) error {
	every := e.cfg.CTGCInterval
	if every <= 0 {
		every = DefaultCTGCInterval
	}
	tick(ctx, every, func() {
		st, err := e.d.ExpireConnections(ctx)
		if err != nil && ctx.Err() == nil {
			e.log.Error("expiring tracked connections", "error", err)
			return
		}
		if st.Expired > 0 || st.Orphaned > 0 {
			e.log.Debug("expired tracked connections", "expired", st.Expired, "left", st.Entries, "tables", st.Tables,
				"ofDetachedEndpoints", st.Orphaned)
		}
	})
	return nil
}

// tick calls fn every interval until ctx ends.
func tick(ctx context.Context, interval time.Duration, fn func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fn()
		}
	}
}
