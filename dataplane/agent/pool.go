package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/flatnet/flatnet/dataplane/podnet"
)

// DefaultPoolSize is the warm pool's default size per node: a 30-pod burst spread
// on kind's two workers claims about 15 on each.
const DefaultPoolSize = 16

// InterfacePreparer readies host interfaces before any pod has them (the policy
// datapath: programs attached, per-interface maps installed) and takes an
// interface's state away again; bpf.Datapath is one.
type InterfacePreparer interface {
	PrepareInterfaces(ctx context.Context, ifindexes []int) []error
	Prepared(ifindex int) bool
	DetachEndpoint(ctx context.Context, ifindex int) error
}

const (
	// poolBatch bounds the pairs prepared in one round: the tcx attaches hold the
	// kernel's rtnl lock, which every ADD's netlink work needs too.
	poolBatch = 8
	// poolQuiet is how long no ADD must have reached the agent before a refill:
	// the pool refills between bursts, not against them.
	poolQuiet = 300 * time.Millisecond
	// poolClaimTimeout is how long a claimed pair may keep its pool names (the
	// ADD renames and moves it at once): past the plugin's own bound on an ADD,
	// the claimer is gone and the pair is deleted.
	poolClaimTimeout = 45 * time.Second
	// poolSweep is how often the pool is swept with no ADD to kick it.
	poolSweep = 10 * time.Second
)

// Pool keeps the node's warm pool of veth pairs (podnet's pool) full: Size
// pairs with their programs and maps prepared, published for the plugin to
// claim. It deletes what earlier agents left and what claimers abandoned, and
// empties the pool when it stops.
type Pool struct {
	dir  string
	size int
	mtu  int
	prep InterfacePreparer
	log  *slog.Logger

	free    prometheus.Gauge
	claims  prometheus.Counter
	misses  prometheus.Counter
	created prometheus.Counter

	lastAdd atomic.Int64 // unix nanoseconds of the last ADD's attach
	kick    chan struct{}
	claimed map[string]time.Time // pairs seen without their file, since
	// claimTimeout is poolClaimTimeout (tests shorten it).
	claimTimeout time.Duration
}

// NewPool returns the pool of dir (podnet.PoolDir of the plugin's data dir),
// registering its metrics on m; mtu is the pods' (0: set before Run).
func NewPool(dir string, size, mtu int, prep InterfacePreparer, log *slog.Logger, m *Metrics) *Pool {
	p := &Pool{dir: dir, size: size, mtu: mtu, prep: prep, log: log, kick: make(chan struct{}, 1), claimed: map[string]time.Time{},
		claimTimeout: poolClaimTimeout,
		free:         gauge("flatnet_pool_free", "Warm-pool veth pairs ready for a pod (programs and maps prepared)."),
		claims: counter("flatnet_pool_claims_total",
			"CNI ADDs whose pod got a warm-pool pair (its attach only wrote map entries)."),
		misses: counter("flatnet_pool_misses_total",
			"CNI ADDs whose pod got no warm-pool pair (pool empty or disabled): created and attached the slow way."),
		created: counter("flatnet_pool_created_total", "Warm-pool veth pairs created and prepared."),
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
	// Pairs an earlier agent left: its datapath state is not this one's to reuse.
	if err := p.Drain(context.WithoutCancel(ctx)); err != nil {
		p.log.Warn("delete the warm pool an earlier agent left", "err", err)
	}
	defer func() {
		if err := p.Drain(context.WithoutCancel(ctx)); err != nil {
			p.log.Warn("empty the warm pool", "err", err)
		}
	}()
	// The ticker only sweeps abandoned claims and retries failed refills: claims
	// kick a refill at once, and a refill short of the size goes on without
	// waiting (each round lists every link of the node, too much for every second).
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

// poolLinks maps the pair id of every pool interface of the netns to its host
// side's index (0: only the peer is left).
func poolLinks() (map[string]int, error) {
	links, err := netlinksafe.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	out := map[string]int{}
	for _, l := range links {
		name := l.Attrs().Name
		if id, ok := podnet.PoolIDOf(name); ok {
			if strings.HasPrefix(name, podnet.PoolHostPrefix) {
				out[id] = l.Attrs().Index
			} else if _, seen := out[id]; !seen {
				out[id] = 0
			}
		}
	}
	return out, nil
}

// Refill sweeps the pool (pairs claimed and abandoned, files without pairs) and
// creates, prepares and publishes pairs up to its size, at most poolBatch.
func (p *Pool) Refill(ctx context.Context) error {
	_, err := p.refill(ctx)
	return err
}

// refill is Refill, also saying whether the pool is still short of its size.
func (p *Pool) refill(ctx context.Context) (short bool, err error) {
	if err := os.MkdirAll(p.dir, 0o700); err != nil {
		return false, fmt.Errorf("create the warm pool dir %s: %w", p.dir, err)
	}
	links, err := poolLinks()
	if err != nil {
		return false, err
	}
	free, err := podnet.FreePoolPairs(p.dir)
	if err != nil {
		return false, err
	}
	var errs []error
	n := 0
	published := map[string]bool{}
	for _, id := range free {
		if _, ok := links[id]; ok {
			published[id] = true
			n++
			continue
		}
		_ = os.Remove(filepath.Join(p.dir, id)) // its pair went away: nobody can claim it
	}
	now := time.Now()
	for id, hostIdx := range links {
		if published[id] {
			continue
		}
		since, ok := p.claimed[id]
		if !ok {
			p.claimed[id] = now
			continue
		}
		if now.Sub(since) > p.claimTimeout {
			errs = append(errs, p.deletePair(ctx, id, hostIdx))
		}
	}
	for id := range p.claimed {
		if _, ok := links[id]; !ok {
			delete(p.claimed, id) // renamed and moved: a pod's now
		}
	}
	p.free.Set(float64(n))
	if want := min(p.size-n, poolBatch); want > 0 {
		made, err := p.add(ctx, want)
		errs = append(errs, err)
		n += made
		p.free.Set(float64(n))
	}
	return n < p.size, errors.Join(errs...)
}

// add creates, prepares (as one group) and publishes k pairs, and returns how
// many it published. A pair that fails is deleted.
func (p *Pool) add(ctx context.Context, k int) (int, error) {
	var ids []string
	var idx []int
	var errs []error
	for range k {
		id, err := podnet.NewPoolID()
		if err == nil {
			var i int
			if i, err = podnet.CreatePoolPair(id, p.mtu); err == nil {
				ids, idx = append(ids, id), append(idx, i)
			}
		}
		errs = append(errs, err)
	}
	made := 0
	for j, err := range p.prep.PrepareInterfaces(ctx, idx) {
		if err == nil {
			err = podnet.PublishPoolPair(p.dir, ids[j])
		}
		if err != nil {
			errs = append(errs, err, p.deletePair(ctx, ids[j], idx[j]))
			continue
		}
		made++
		p.created.Inc()
	}
	return made, errors.Join(errs...)
}

// deletePair deletes pair id and the datapath state of its host side hostIdx (0:
// none left).
func (p *Pool) deletePair(ctx context.Context, id string, hostIdx int) error {
	delete(p.claimed, id)
	err := podnet.DeletePoolPair(id)
	if hostIdx > 0 {
		err = errors.Join(err, p.prep.DetachEndpoint(ctx, hostIdx))
	}
	if err != nil {
		return fmt.Errorf("delete warm-pool pair %s: %w", id, err)
	}
	return nil
}

// Drain deletes every pair it can take back: those whose file it removes itself
// (unlinking is the claim, so no ADD has them) and those no file names, which an
// earlier agent's claimers abandoned, once poolClaimTimeout has passed (Refill).
func (p *Pool) Drain(ctx context.Context) error {
	ents, err := os.ReadDir(p.dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("list the warm pool %s: %w", p.dir, err)
	}
	links, err := poolLinks()
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range ents {
		id, ok := strings.CutPrefix(e.Name(), ".") // a publish cut short
		if err := os.Remove(filepath.Join(p.dir, e.Name())); err != nil {
			continue // claimed meanwhile: the claimer's
		}
		if hostIdx, exists := links[id]; exists || ok {
			errs = append(errs, p.deletePair(ctx, id, hostIdx))
		}
	}
	p.free.Set(0)
	now := time.Now()
	if links, err = poolLinks(); err == nil {
		for id := range links {
			if _, ok := p.claimed[id]; !ok {
				p.claimed[id] = now
			}
		}
	}
	return errors.Join(append(errs, err)...)
}
