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

// fillPool creates and publishes size warm-pool pairs as the agent does (without
// the datapath: the agent here is a stand-in) and returns their host indexes.
func (n *node) fillPool(size int) map[int]string {
	pool := map[int]string{}
	for id, i := range podnettest.FillPool(n.T, n.NS, podnet.PoolDir(n.dataDir), size, 0) {
		pool[i] = id
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

// TestConcurrentAddsWithPool: 30 ADDs at once with a pool of 0, 5 and 40 pairs all
// succeed; no two pods share a pair, min(30, size) pods get one, the others fall
// back to a pair of their own; every pod passes CHECK; DEL takes all of it and
// leaves the unclaimed pairs.
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
				if _, ok := pool[ep.HostIfIndex]; ok {
					pooled++
				}
				if ep.HostIfName != podnet.HostVethName(id, "eth0") {
					t.Errorf("pod %s registered host interface %s, want %s", id, ep.HostIfName, podnet.HostVethName(id, "eth0"))
				}
				if err := n.check(id, netnses[i]); err != nil {
					t.Errorf("CHECK %s: %v", id, err)
				}
			}
			if pooled != min(pods, size) {
				t.Errorf("%d pods got a pool pair, want %d", pooled, min(pods, size))
			}
			for i, err := range n.delAll(ids, netnses) {
				if err != nil {
					t.Errorf("DEL %d: %v", i, err)
				}
			}
			n.requireClean("after the DELs")
			left := 0
			for _, l := range podnettest.Links(t, n.NS) {
				if _, ok := podnet.PoolIDOf(l); ok {
					left++
				}
			}
			if want := 2 * (size - min(pods, size)); left != want {
				t.Errorf("%d pool interfaces left, want the %d of the unclaimed pairs", left, want)
			}
		})
	}
}
