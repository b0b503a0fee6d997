package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
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
	pn.pool = NewPool(pn.dir, size, pn.d, slog.New(slog.DiscardHandler), NewMetrics())
	if err := os.MkdirAll(pn.dir, 0o700); err != nil {
		pn.t.Fatal(err)
	}
}

func (pn *poolNode) do(fn func(ctx context.Context) error) {
	pn.t.Helper()
	pn.node.Do(func() error { return fn(context.Background()) })
}

// prepared lists the indexes of the pool's range with maps but no endpoint.
func (pn *poolNode) prepared() []int {
	pn.t.Helper()
	got, err := pn.d.PreparedIndexes(podnet.PoolIndexBase, podnet.PoolIndexBase+podnet.PoolIndexRange)
	if err != nil {
		pn.t.Fatal(err)
	}
	return got
}

func (pn *poolNode) free() []int {
	pn.t.Helper()
	free, _, err := podnet.FreePoolIndexes(pn.dir)
	if err != nil {
		pn.t.Fatal(err)
	}
	return free
}

// TestPoolRestartLeaksNothing fills a pool, has one index claimed by a pod (its
// host veth created on it and attached) and one claimed by an ADD that died
// before using it, restarts the agent and stops it: no published index and no
// prepared maps are left but the pod's, which keeps its endpoint and its filters;
// within one agent, an abandoned claim goes once its claim time is up.
func TestPoolRestartLeaksNothing(t *testing.T) {
	pn := newPoolNode(t, 5)
	pn.do(pn.pool.Refill)
	free := pn.free()
	if len(free) != 5 || !slices.Equal(pn.prepared(), free) {
		t.Fatalf("after a refill of 5: published %v, prepared %v", free, pn.prepared())
	}
	for _, i := range free {
		if !podnet.IsPoolIndex(i) {
			t.Errorf("published index %d is outside the pool's range", i)
		}
		pn.node.Do(func() error {
			if _, err := netlink.LinkByIndex(i); err == nil {
				t.Errorf("published index %d already has a link", i)
			}
			return nil
		})
	}

	// A pod claims an index, is plumbed on it and attached; another ADD claims one
	// and dies.
	pod := podnettest.NewNS(t)
	var podIdx int
	pn.do(func(ctx context.Context) error {
		up, err := podnet.FindUplink("eth0", netip.MustParsePrefix("10.224.0.0/16"))
		if err != nil {
			return err
		}
		claimed, err := podnet.ClaimPoolIndex(pn.dir, "c-pod")
		if err != nil {
			return err
		}
		v, err := podnet.Setup(pod, "c-pod", "eth0", netip.MustParseAddr("10.224.0.40"), 1400, up, claimed)
		if err != nil {
			return err
		}
		if podIdx = v.HostIf.Index; podIdx != claimed {
			return fmt.Errorf("host veth on index %d, claimed %d", podIdx, claimed)
		}
		if err := pn.d.AttachEndpoint(ctx, bpf.Endpoint{IfIndex: podIdx, IP: netip.MustParseAddr("10.224.0.40"), Identity: 300}, bpf.DenyAll()); err != nil {
			return err
		}
		_, err = podnet.ClaimPoolIndex(pn.dir, "c-dead")
		return err
	})
	if slices.Contains(pn.prepared(), podIdx) || len(pn.prepared()) != 4 {
		t.Errorf("prepared after one attach and one dead claim: %v, want 4 without the pod's %d", pn.prepared(), podIdx)
	}

	// The agent restarts: the new one drains what it can take back.
	pn.d.Close()
	pn.load(5)
	pn.do(pn.pool.Drain)
	if got, prep := pn.free(), pn.prepared(); len(got)+len(prep) != 0 {
		t.Errorf("after the restart's drain, published %v, prepared %v", got, prep)
	}
	eps, err := pn.d.Endpoints(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := eps[podIdx]; !ok || len(eps) != 1 {
		t.Errorf("endpoints after the restart: %v, want the pod's %d", eps, podIdx)
	}

	// A claim abandoned within one agent goes once its claim time is up.
	pn.pool.size = 2
	pn.do(pn.pool.Refill)
	pn.node.Do(func() error {
		_, err := podnet.ClaimPoolIndex(pn.dir, "c-dead2")
		return err
	})
	pn.pool.size = 0 // sweeps only
	pn.do(pn.pool.Refill)
	if got := pn.prepared(); len(got) != 2 {
		t.Errorf("inside its claim time the abandoned index must stay prepared: %v", got)
	}
	pn.pool.claimTimeout = time.Millisecond
	time.Sleep(2 * time.Millisecond)
	pn.do(pn.pool.Refill)
	if got := pn.prepared(); len(got) != 1 || got[0] != pn.free()[0] {
		t.Errorf("after the claim timed out, prepared %v, published %v: want only the free one", got, pn.free())
	}

	// Refilled, then stopped: emptied, the pod untouched.
	pn.pool.size = 3
	pn.do(pn.pool.Refill)
	if got := pn.free(); len(got) != 3 {
		t.Errorf("refilled to %d, want 3", len(got))
	}
	pn.do(pn.pool.Drain)
	if got, prep := pn.free(), pn.prepared(); len(got)+len(prep) != 0 {
		t.Errorf("after the stop, published %v, prepared %v", got, prep)
	}
	if eps, err := pn.d.Endpoints(context.Background()); err != nil || len(eps) != 1 {
		t.Errorf("after the stop, endpoints %v (%v), want the pod's %d", eps, err, podIdx)
	}
	if links := podnettest.Links(t, pn.node.NS); !slices.Contains(links, podnet.HostVethName("c-pod", "eth0")) {
		t.Errorf("the pod's host veth is gone: %v", links)
	}
}

// TestPoolRunFillsCountsAndEmpties runs the pool as the agent does: it fills up,
// counts an ADD on one of its indexes as a claim and one on another interface as
// a miss, and leaves nothing when it stops.
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
	pn.pool.ObserveAdd(pn.free()[0])
	pn.pool.ObserveAdd(1) // the node's lo: not prepared
	if c, m := testutil.ToFloat64(pn.pool.claims), testutil.ToFloat64(pn.pool.misses); c != 1 || m != 1 {
		t.Errorf("claims %v, misses %v: want 1 and 1", c, m)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if free, prep := pn.free(), pn.prepared(); len(free)+len(prep) > 0 {
		t.Errorf("after the pool stopped: published %v, prepared %v", free, prep)
	}
}

// TestPoolDrainsTheEarlierPairPool: what the pool of earlier versions left (veth
// pairs fp<id>/fq<id> published as files <id>, the host side's maps prepared, and
// a claimed pair abandoned) is gone after the new agent's drain; a pod's veth is
// untouched.
func TestPoolDrainsTheEarlierPairPool(t *testing.T) {
	pn := newPoolNode(t, 0)
	var hosts []int
	pn.node.Do(func() error {
		for i, id := range []string{"00112233aabb", "ccddeeff0011"} {
			if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "fp" + id}, PeerName: "fq" + id}); err != nil {
				return err
			}
			l, err := netlink.LinkByName("fp" + id)
			if err != nil {
				return err
			}
			hosts = append(hosts, l.Attrs().Index)
			if i == 0 { // published; the other one was claimed and abandoned
				if err := os.WriteFile(filepath.Join(pn.dir, id), nil, 0o600); err != nil {
					return err
				}
			}
		}
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "fn0123456789ab"}, PeerName: "fq01"})
	})
	pn.do(func(ctx context.Context) error {
		for _, err := range pn.d.PrepareIndexes(ctx, hosts) {
			if err != nil {
				return err
			}
		}
		return nil
	})
	pn.do(pn.pool.Drain)
	links := podnettest.Links(t, pn.node.NS)
	for _, l := range links {
		if strings.HasPrefix(l, "fp") || (strings.HasPrefix(l, "fq") && len(l) == 14) {
			t.Errorf("the earlier pool's %s is left", l)
		}
	}
	if !slices.Contains(links, "fn0123456789ab") || !slices.Contains(links, "fq01") {
		t.Errorf("links other than the earlier pool's were removed: %v", links)
	}
	left, err := pn.d.PreparedIndexes(1, 1<<31-1)
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range hosts {
		if pn.d.Prepared(i) || slices.Contains(left, i) {
			t.Errorf("the earlier pool's index %d still has its maps (unattached indexes with maps: %v)", i, left)
		}
	}
	if ents, _ := os.ReadDir(pn.dir); len(ents) != 0 {
		t.Errorf("pool files left: %v", ents)
	}
}
