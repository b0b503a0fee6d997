package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/flatnet/flatnet/dataplane/podnet"
)

// DefaultPoolSize is the warm pool's default size per node: a 30-pod burst spread
// on kind's two workers claims about 15 on each.
const DefaultPoolSize = 16

// IndexPreparer readies host interface indexes before any interface has them (the
// policy datapath: per-interface maps installed) and forgets them again;
// bpf.Datapath is one.
type IndexPreparer interface {
	PrepareIndexes(ctx context.Context, ifindexes []int) []error
	Prepared(ifindex int) bool
	UnprepareIndexes(ctx context.Context, ifindexes []int) error
	PreparedIndexes(lo, hi int) ([]int, error)
}

const (
	// poolBatch bounds the indexes prepared in one round: the datapath's lock is
	// held through the round's grace periods, and attaches need it too.
	poolBatch = 8
	// poolQuiet is how long no ADD must have reached the agent before a refill:
	// the pool refills between bursts, not against them.
	poolQuiet = 300 * time.Millisecond
	// poolClaimTimeout is how long a claimed index may stay unattached: past the
	// plugin's own bound on an ADD, the claimer is gone and its maps are dropped.
	poolClaimTimeout = 45 * time.Second
	// poolSweep is how often the pool is swept with no ADD to kick it.
	poolSweep = 10 * time.Second
)

// Pool keeps the node's warm pool (podnet's pool) full: Size interface indexes
// with their maps prepared, published for the plugin to claim. It forgets what
// earlier agents left and what claimers abandoned, and empties the pool when it
// stops.
type Pool struct {
	dir  string
	size int
	prep IndexPreparer
	log  *slog.Logger

	free    prometheus.Gauge
	claims  prometheus.Counter
	misses  prometheus.Counter
	created prometheus.Counter

	lastAdd atomic.Int64 // unix nanoseconds of the last ADD's attach
	kick    chan struct{}
	// mine holds the indexes this pool published, with when their claim was
	// first seen (zero: not claimed yet).
	mine map[int]time.Time
	next int // the next index of the range to try
	// claimTimeout is poolClaimTimeout (tests shorten it).
	claimTimeout time.Duration
}

// NewPool returns the pool of dir (podnet.PoolDir of the plugin's data dir),
// registering its metrics on m.
func NewPool(dir string, size int, prep IndexPreparer, log *slog.Logger, m *Metrics) *Pool {
	p := &Pool{dir: dir, size: size, prep: prep, log: log, kick: make(chan struct{}, 1), mine: map[int]time.Time{},
		claimTimeout: poolClaimTimeout,
		free:         gauge("flatnet_pool_free", "Warm-pool interface indexes ready for a pod (its maps prepared)."),
		claims: counter("flatnet_pool_claims_total",
			"CNI ADDs whose host veth got a warm-pool index (its attach only wrote map entries)."),
		misses: counter("flatnet_pool_misses_total",
			"CNI ADDs whose host veth got no warm-pool index (pool empty or disabled): its maps installed on attach."),
		created: counter("flatnet_pool_created_total", "Warm-pool interface indexes prepared."),
	}
	m.MustRegister(p.free, p.claims, p.misses, p.created)
	return p
}

// ObserveAdd counts an ADD's endpoint on host interface ifindex as a claim or a
// miss (call before attaching it) and holds the next refill back.
func (p *Pool) ObserveAdd(ifindex int) {
	if p == nil {
		return
	}
	p.lastAdd.Store(time.Now().UnixNano())
	if p.prep.Prepared(ifindex) {
		p.claims.Inc()
	} else {
		p.misses.Inc()
	}
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// Run keeps the pool full until ctx ends, then empties it. Call it in the host
// network namespace.
func (p *Pool) Run(ctx context.Context) error {
	// Indexes an earlier agent left: its datapath state is not this one's to reuse.
	if err := p.Drain(context.WithoutCancel(ctx)); err != nil {
		p.log.Warn("forget the warm pool an earlier agent left", "err", err)
	}
	defer func() {
		if err := p.Drain(context.WithoutCancel(ctx)); err != nil {
			p.log.Warn("empty the warm pool", "err", err)
		}
	}()
	// The ticker only sweeps abandoned claims and retries failed refills: claims
	// kick a refill at once, and a refill short of the size goes on without
	// waiting.
	t := time.NewTicker(poolSweep)
	defer t.Stop()
	for {
		if quiet := time.Since(time.Unix(0, p.lastAdd.Load())); quiet < poolQuiet {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(poolQuiet - quiet):
			}
			continue
		}
		short, err := p.refill(ctx)
		if err != nil {
			p.log.Warn("refill the warm pool", "err", err)
		} else if short {
			continue
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-p.kick:
		}
	}
}

// Refill sweeps the pool (claims abandoned, files of indexes it does not know)
// and prepares and publishes indexes up to its size, at most poolBatch.
func (p *Pool) Refill(ctx context.Context) error {
	_, err := p.refill(ctx)
	return err
}

// refill is Refill, also saying whether the pool is still short of its size.
func (p *Pool) refill(ctx context.Context) (short bool, err error) {
	if err := os.MkdirAll(p.dir, 0o700); err != nil {
		return false, fmt.Errorf("create the warm pool dir %s: %w", p.dir, err)
	}
	free, aside, err := podnet.FreePoolIndexes(p.dir)
	if err != nil {
		return false, err
	}
	var forget []int
	var errList []error
	n := 0
	published := map[int]bool{}
	for _, i := range free {
		if _, ok := p.mine[i]; ok && p.prep.Prepared(i) {
			published[i] = true
			n++
			continue
		}
		// Not this pool's, or its maps are gone: take it back before anyone claims it.
		if ok, err := podnet.TakePoolIndex(p.dir, i); err != nil {
			errList = append(errList, err)
		} else if ok {
			forget = append(forget, i)
			delete(p.mine, i)
		}
	}
	for _, i := range aside {
		_ = os.Remove(filepath.Join(p.dir, "."+strconv.Itoa(i)))
	}
	now := time.Now()
	for i, since := range p.mine {
		switch {
		case published[i]:
		case !p.prep.Prepared(i):
			delete(p.mine, i) // attached: a pod's now
		case since.IsZero():
			p.mine[i] = now
		case now.Sub(since) > p.claimTimeout:
			forget = append(forget, i) // its claimer died
			delete(p.mine, i)
		}
	}
	if len(forget) > 0 {
		errList = append(errList, p.prep.UnprepareIndexes(ctx, forget))
	}
	p.free.Set(float64(n))
	if want := min(p.size-n, poolBatch); want > 0 {
		made, err := p.add(ctx, want)
		errList = append(errList, err)
		n += made
		p.free.Set(float64(n))
	}
	return n < p.size, errors.Join(errList...)
}

// add prepares (as one group) and publishes k indexes no link has and the pool
// does not hold, and returns how many it published.
func (p *Pool) add(ctx context.Context, k int) (int, error) {
	var idx []int
	for tries := 0; len(idx) < k && tries < 4*k+len(p.mine); tries++ {
		i := podnet.PoolIndexBase + p.next
		p.next = (p.next + 1) % podnet.PoolIndexRange
		if _, ok := p.mine[i]; ok || p.prep.Prepared(i) {
			continue
		}
		if _, err := netlink.LinkByIndex(i); err == nil {
			continue // a pod's host veth has it
		}
		idx = append(idx, i)
	}
	var errs, undo []error
	var failed []int
	made := 0
	for j, err := range p.prep.PrepareIndexes(ctx, idx) {
		if err == nil {
			p.mine[idx[j]] = time.Time{}
			if err = podnet.PublishPoolIndex(p.dir, idx[j]); err != nil {
				delete(p.mine, idx[j])
				failed = append(failed, idx[j])
			}
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		made++
		p.created.Inc()
	}
	if len(failed) > 0 {
		undo = append(undo, p.prep.UnprepareIndexes(ctx, failed))
	}
	return made, errors.Join(append(errs, undo...)...)
}

// Drain takes back every index it can (those whose file it removes itself:
// unlinking is the claim, so no ADD has them) and forgets the maps of every
// prepared index no endpoint has, this agent's or an earlier one's. An index
// claimed just before is attached the ordinary way when its ADD reaches the agent.
func (p *Pool) Drain(ctx context.Context) error {
	free, aside, err := podnet.FreePoolIndexes(p.dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, i := range free {
		if _, err := podnet.TakePoolIndex(p.dir, i); err != nil {
			errs = append(errs, err)
		}
	}
	for _, i := range aside {
		_ = os.Remove(filepath.Join(p.dir, "."+strconv.Itoa(i)))
	}
	p.free.Set(0)
	prepared, err := p.prep.PreparedIndexes(podnet.PoolIndexBase, podnet.PoolIndexBase+podnet.PoolIndexRange)
	if err == nil {
		err = p.prep.UnprepareIndexes(ctx, prepared)
	}
	clear(p.mine)
	return errors.Join(append(errs, err, p.drainPairs(ctx))...)
}

// drainPairs removes what the pool of earlier versions left: veth pairs named
// fp<id> (host side) and fq<id> (its peer), id 12 hex digits, published as
// files named <id>, with the host side's maps prepared. A pair a pod claimed was
// renamed to the pod's own name and is the pod's.
func (p *Pool) drainPairs(ctx context.Context) error {
	links, err := netlink.LinkList()
	if err != nil {
		return fmt.Errorf("list links for the earlier pool's veth pairs: %w", err)
	}
	var errs []error
	var hosts []int
	for _, l := range links {
		name := l.Attrs().Name
		if len(name) != 14 || (name[:2] != "fp" && name[:2] != "fq") || !isHex(name[2:]) {
			continue
		}
		if name[:2] == "fp" {
			hosts = append(hosts, l.Attrs().Index)
		}
		if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) && !errors.As(err, new(netlink.LinkNotFoundError)) {
			errs = append(errs, fmt.Errorf("delete the earlier pool's %s: %w", name, err))
		}
		_ = os.Remove(filepath.Join(p.dir, name[2:]))
	}
	if len(hosts) > 0 {
		errs = append(errs, p.prep.UnprepareIndexes(ctx, hosts))
	}
	return errors.Join(errs...)
}

func isHex(s string) bool {
	return strings.Trim(s, "0123456789abcdef") == ""
}
