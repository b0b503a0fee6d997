package cni_test

import (
	"fmt"
	"net/netip"
	"sync"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/flatnet/flatnet/dataplane/ipam"
	"github.com/flatnet/flatnet/dataplane/podnet"
	"github.com/flatnet/flatnet/dataplane/podnet/podnettest"
)

// fillPool publishes size warm-pool indexes as the agent does (without the
// datapath: the agent here is a stand-in) and returns them.
func (n *node) fillPool(size int) map[int]bool {
	pool := map[int]bool{}
	for _, i := range podnettest.FillPool(n.T, podnet.PoolDir(n.dataDir), size) {
		pool[i] = true
	}
	return pool
}

// delAll DELs pods ids[i] of netnses[i] at once and returns each one's error.
func (n *node) delAll(ids []string, netnses []ns.NetNS) []error {
	errs := make([]error, len(ids))
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Go(func() { errs[i] = n.delNoFail(id, netnses[i].Path()) })
	}
	wg.Wait()
	return errs
}

// TestConcurrentAddsWithPool: 30 ADDs at once with a pool of 0, 5 and 40 indexes
// all succeed; no two pods share an index, min(30, size) pods get a pool index for
// their host veth, the others the kernel's; every pod passes CHECK; DEL takes all
// of it and leaves the unclaimed indexes published.
func TestConcurrentAddsWithPool(t *testing.T) {
	const pods = 30
	for _, size := range []int{0, 5, 40} {
		t.Run(fmt.Sprintf("pool=%d", size), func(t *testing.T) {
			n := newNode(t, "node-a", "10.224.0.2/16", ipam.Block{Index: -1, First: netip.MustParseAddr("10.224.1.0"), Size: 100})
			a := startAgent(t, n)
			pool := n.fillPool(size)
			netnses := make([]ns.NetNS, pods)
			for i := range netnses {
				netnses[i] = podnettest.NewNS(t)
			}
			ids := make([]string, pods)
			for i := range ids {
				ids[i] = fmt.Sprintf("c%03d", i)
			}
			errs := make([]error, pods)
			var wg sync.WaitGroup
			for i := range pods {
				wg.Go(func() { _, errs[i] = n.add(n.conflist(nil), ids[i], netnses[i]) })
			}
			wg.Wait()
			for i, err := range errs {
				if err != nil {
					t.Fatalf("ADD %d: %v", i, err)
				}
			}
			byIndex := map[int]string{}
			pooled := 0
			for i := range pods {
				id := fmt.Sprintf("c%03d", i)
				ep, ok := a.eps[id]
				if !ok {
					t.Fatalf("pod %s never registered", id)
				}
				if other, dup := byIndex[ep.HostIfIndex]; dup {
					t.Errorf("pods %s and %s share host interface %d", other, id, ep.HostIfIndex)
				}
				byIndex[ep.HostIfIndex] = id
				if pool[ep.HostIfIndex] {
					pooled++
				} else if podnet.IsPoolIndex(ep.HostIfIndex) {
					t.Errorf("pod %s got index %d of the pool's range, not published", id, ep.HostIfIndex)
				}
				if ep.HostIfName != podnet.HostVethName(id, "eth0") {
					t.Errorf("pod %s registered host interface %s, want %s", id, ep.HostIfName, podnet.HostVethName(id, "eth0"))
				}
				if err := n.check(id, netnses[i]); err != nil {
					t.Errorf("CHECK %s: %v", id, err)
				}
			}
			if pooled != min(pods, size) {
				t.Errorf("%d pods got a pool index, want %d", pooled, min(pods, size))
			}
			for i, err := range n.delAll(ids, netnses) {
				if err != nil {
					t.Errorf("DEL %d: %v", i, err)
				}
			}
			n.requireClean("after the DELs")
			free, _, err := podnet.FreePoolIndexes(podnet.PoolDir(n.dataDir))
			if err != nil {
				t.Fatal(err)
			}
			if want := size - min(pods, size); len(free) != want {
				t.Errorf("%d pool indexes left published, want the %d unclaimed", len(free), want)
			}
		})
	}
}
