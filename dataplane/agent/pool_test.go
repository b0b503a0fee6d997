package agent

import (
	"context"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/vishvananda/netlink"

	"github.com/flatnet/flatnet/dataplane/bpf"
	"github.com/flatnet/flatnet/dataplane/podnet"
	"github.com/flatnet/flatnet/dataplane/podnet/podnettest"
	"github.com/flatnet/flatnet/internal/testenv"
)

// poolNode is a node netns with an uplink, the policy datapath loaded on a
// private bpffs, and a warm pool of size over it.
type poolNode struct {
	t    *testing.T
	node *podnettest.Node
	pin  string
	d    *bpf.Datapath
	dir  string
	pool *Pool
}

func newPoolNode(t *testing.T, size int) *poolNode {
	testenv.RequireRoot(t)
	pn := &poolNode{t: t, node: podnettest.NewNode(t, "10.224.0.2/16"), pin: filepath.Join(testenv.BPFFS(t), "flatnet"),
		dir: podnet.PoolDir(t.TempDir())}
	pn.load(size)
	return pn
}

// load starts an agent: the datapath loaded from the pins, a new pool.
func (pn *poolNode) load(size int) {
	pn.node.Do(func() (err error) {
		pn.d, err = bpf.Load(context.Background(), pn.pin)
		return err
	})
	d := pn.d
	pn.t.Cleanup(func() { d.Close() })
	pn.pool = NewPool(pn.dir, size, 1400, pn.d, slog.New(slog.DiscardHandler), NewMetrics())
	if err := os.MkdirAll(pn.dir, 0o700); err != nil {
		pn.t.Fatal(err)
	}
}

func (pn *poolNode) do(fn func(ctx context.Context) error) {
	pn.t.Helper()
	pn.node.Do(func() error { return fn(context.Background()) })
}

// pairs lists the pool interfaces of the node (id -> host index, 0: peer only).
func (pn *poolNode) pairs() map[string]int {
	pn.t.Helper()
	var l map[string]int
	pn.node.Do(func() (err error) { l, err = poolLinks(); return err })
	return l
}

// pinned lists the interface indexes with pinned datapath links.
func (pn *poolNode) pinned() []int {
	pn.t.Helper()
	ents, err := os.ReadDir(filepath.Join(pn.pin, "links"))
	if err != nil {
		pn.t.Fatal(err)
	}
	var out []int
	for _, e := range ents {
		if s, ok := strings.CutSuffix(e.Name(), "-ingress"); ok {
			i, _ := strconv.Atoi(s)
			out = append(out, i)
		}
	}
	slices.Sort(out)
	return out
}

func (pn *poolNode) free() []string {
	pn.t.Helper()
	ids, err := podnet.FreePoolPairs(pn.dir)
	if err != nil {
		pn.t.Fatal(err)
	}
	return ids
}

// TestPoolRestartLeaksNothing fills a pool, has one pair claimed by a pod and one
// claimed by an ADD that died before touching it, restarts the agent and stops it:
// no pool interface, file or pinned link is left but the pod's, which keeps its
// host veth, and the abandoned pair goes once its claim timed out.
func TestPoolRestartLeaksNothing(t *testing.T) {
	pn := newPoolNode(t, 5)
	pn.do(pn.pool.Refill)
	free, pairs := pn.free(), pn.pairs()
	if len(free) != 5 || len(pairs) != 5 {
		t.Fatalf("after a refill of 5: %d published, %d pairs", len(free), len(pairs))
	}
	var hosts []int
	for _, id := range free {
		pn.node.Do(func() error {
			l, err := netlink.LinkByIndex(pairs[id])
			if err == nil && l.Attrs().MTU != 1400 {
				t.Errorf("pool pair %s has MTU %d, the pool's is 1400", id, l.Attrs().MTU)
			}
			return err
		})
		if !pn.d.Prepared(pairs[id]) {
			t.Errorf("published pair %s (host %d) is not prepared", id, pairs[id])
		}
		hosts = append(hosts, pairs[id])
	}
	slices.Sort(hosts)
	if got := pn.pinned(); !slices.Equal(got, hosts) {
		t.Errorf("pinned links of %v, want the pool's %v", got, hosts)
	}

	// A pod claims a pair and is plumbed; another ADD claims one and dies.
	pod := podnettest.NewNS(t)
	var podIdx int
	var abandoned string
	pn.do(func(context.Context) error {
		up, err := podnet.FindUplink("eth0", netip.MustParsePrefix("10.224.0.0/16"))
		if err != nil {
			return err
		}
		id, err := podnet.ClaimPoolPair(pn.dir, "c-pod")
		if err != nil {
			return err
		}
		v, err := podnet.SetupPooled(pod, id, "c-pod", "eth0", netip.MustParseAddr("10.224.0.40"), 1400, up)
		if err != nil {
			return err
		}
		podIdx = v.HostIf.Index
		abandoned, err = podnet.ClaimPoolPair(pn.dir, "c-dead")
		return err
	})

	// The agent restarts: the new one drains what it can take back.
	pn.d.Close()
	pn.load(5)
	pn.do(pn.pool.Drain)
	pn.pool.size = 0 // sweeps only
	pn.do(pn.pool.Refill)
	if got := pn.free(); len(got) != 0 {
		t.Errorf("after the restart's drain, published pairs %v", got)
	}
	if got := pn.pairs(); len(got) != 1 || got[abandoned] == 0 {
		t.Errorf("after the restart's drain, pool pairs %v: want only the abandoned claim %s, inside its claim time", got, abandoned)
	}
	pn.pool.claimTimeout = time.Millisecond
	time.Sleep(2 * time.Millisecond)
	pn.do(pn.pool.Refill)
	if got := pn.pairs(); len(got) != 0 {
		t.Errorf("after the claim timed out, pool pairs %v", got)
	}
	if got := pn.pinned(); !slices.Equal(got, []int{podIdx}) {
		t.Errorf("pinned links of %v, want only the pod's %d", got, podIdx)
	}

	// Refilled, then stopped: emptied, the pod untouched.
	pn.pool.size = 3
	pn.do(pn.pool.Refill)
	if got := pn.free(); len(got) != 3 {
		t.Errorf("refilled to %d, want 3", len(got))
	}
	pn.do(pn.pool.Drain)
	if got, pairs := pn.free(), pn.pairs(); len(got)+len(pairs) != 0 {
		t.Errorf("after the stop, published %v, pairs %v", got, pairs)
	}
	if got := pn.pinned(); !slices.Equal(got, []int{podIdx}) {
		t.Errorf("after the stop, pinned links of %v, want only the pod's %d", got, podIdx)
	}
	if links := podnettest.Links(t, pn.node.NS); !slices.Contains(links, podnet.HostVethName("c-pod", "eth0")) {
		t.Errorf("the pod's host veth is gone: %v", links)
	}
}

// TestPoolRunFillsCountsAndEmpties runs the pool as the agent does: it fills up,
// counts an ADD on one of its pairs as a claim and one on another interface as a
// miss, and leaves nothing when it stops.
func TestPoolRunFillsCountsAndEmpties(t *testing.T) {
	pn := newPoolNode(t, 4)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- pn.node.NS.Do(func(ns.NetNS) error { return pn.pool.Run(ctx) }) }()
	for deadline := time.Now().Add(30 * time.Second); len(pn.free()) < 4; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("the pool never filled: %d of 4 published", len(pn.free()))
		}
	}
	pairs := pn.pairs()
	pn.pool.ObserveAdd(pairs[pn.free()[0]])
	pn.pool.ObserveAdd(1) // the node's lo: not prepared
	if c, m := testutil.ToFloat64(pn.pool.claims), testutil.ToFloat64(pn.pool.misses); c != 1 || m != 1 {
		t.Errorf("claims %v, misses %v: want 1 and 1", c, m)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if free, pairs, pins := pn.free(), pn.pairs(), pn.pinned(); len(free)+len(pairs)+len(pins) > 0 {
		t.Errorf("after the pool stopped: published %v, pairs %v, pinned links %v", free, pairs, pins)
	}
}
