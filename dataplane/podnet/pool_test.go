package podnet_test

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"sync"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/flatnet/flatnet/dataplane/podnet"
	"github.com/flatnet/flatnet/dataplane/podnet/podnettest"
)

// fillPool creates and publishes n pool pairs in the node, as the agent does, and
// returns the pool directory and the pairs' host indexes by id.
func (n *node) fillPool(size, mtu int) (string, map[string]int) {
	dir := podnet.PoolDir(n.T.TempDir())
	return dir, podnettest.FillPool(n.T, n.NS, dir, size, mtu)
}

// setupPooled claims a pair of dir and plumbs attachment id/eth0 of pod on it.
func (n *node) setupPooled(dir, id string, pod ns.NetNS, addr netip.Addr) (*podnet.Veth, string) {
	n.T.Helper()
	up := n.uplink()
	var v *podnet.Veth
	var pair string
	n.Do(func() (err error) {
		if pair, err = podnet.ClaimPoolPair(dir, id); err != nil {
			return err
		}
		v, err = podnet.SetupPooled(pod, pair, id, "eth0", addr, 0, up)
		return err
	})
	return v, pair
}

// sysctl reads a sysctl of netns.
func sysctl(t *testing.T, netns ns.NetNS, name string) string {
	t.Helper()
	var b []byte
	if err := netns.Do(func(ns.NetNS) (err error) { b, err = os.ReadFile("/proc/sys/" + name); return err }); err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestPooledSetupIsSetup: a pod plumbed on a claimed pool pair has exactly what
// Setup gives a pod (Check passes, the same host state, IPv6 off on both ends,
// proxy ARP, MTU), on the pair's own host interface, and traffic flows between it,
// a pod plumbed by Setup and the node.
func TestPooledSetupIsSetup(t *testing.T) {
	n := newNode(t, "10.224.0.2/16")
	dir, pairs := n.fillPool(1, 1400)
	pooled, plain := podnettest.NewNS(t), podnettest.NewNS(t)
	ipP, ipS := netip.MustParseAddr("10.224.0.40"), netip.MustParseAddr("10.224.0.41")
	v, pair := n.setupPooled(dir, "c-pooled", pooled, ipP)
	n.setup("c-plain", plain, ipS)
	if v.HostIf.Index != pairs[pair] {
		t.Errorf("pooled pod's host interface has index %d, its pool pair %d", v.HostIf.Index, pairs[pair])
	}
	if v.HostVeth != podnet.HostVethName("c-pooled", "eth0") || v.PodIf.Name != "eth0" || v.PodIf.MTU != n.uplink().Link.Attrs().MTU {
		t.Errorf("SetupPooled returned %+v", v)
	}
	up := n.uplink()
	n.Do(func() error { return podnet.Check(pooled, "c-pooled", "eth0", ipP, up) })
	s := n.state()
	wantVeths := []string{podnet.HostVethName("c-plain", "eth0"), podnet.HostVethName("c-pooled", "eth0")}
	slices.Sort(wantVeths)
	slices.Sort(s.Veths)
	if !slices.Equal(s.Veths, wantVeths) || !slices.Contains(s.Proxies, ipP) || !slices.Contains(s.Routes, ipP.String()+"/32") {
		t.Errorf("host state %+v: want veths %v, a proxy neighbour and a /32 route for %s", s, wantVeths, ipP)
	}
	if links := podnettest.Links(t, pooled); !slices.Equal(links, []string{"lo", "eth0"}) {
		t.Errorf("pooled pod has links %v, want lo and eth0", links)
	}
	if links := podnettest.Links(t, n.NS); slices.ContainsFunc(links, func(l string) bool { _, ok := podnet.PoolIDOf(l); return ok }) {
		t.Errorf("node still has pool interfaces after the only pair was claimed: %v", links)
	}
	for _, c := range []struct {
		netns      ns.NetNS
		name, want string
	}{
		{pooled, "net/ipv6/conf/eth0/disable_ipv6", "1\n"},
		{n.NS, "net/ipv6/conf/" + v.HostVeth + "/disable_ipv6", "1\n"},
		{n.NS, "net/ipv4/conf/" + v.HostVeth + "/proxy_arp", "1\n"},
	} {
		if got := sysctl(t, c.netns, c.name); got != c.want {
			t.Errorf("%s = %q, want %q as Setup sets it", c.name, got, c.want)
		}
	}
	for _, c := range []struct {
		name     string
		from, to ns.NetNS
		dst      netip.Addr
	}{
		{"pooled -> plain pod", pooled, plain, ipS},
		{"plain -> pooled pod", plain, pooled, ipP},
		{"node -> pooled pod", n.NS, pooled, ipP},
		{"pooled pod -> node", pooled, n.NS, n.IP.Addr()},
	} {
		if err := tcpEcho(c.from, c.to, c.dst); err != nil {
			t.Errorf("%s: %v", c.name, err)
		}
	}
	// DEL's teardown takes the pooled pod's plumbing as it takes Setup's.
	n.Do(func() error {
		return errors.Join(podnet.Teardown("c-pooled", "eth0", ipP, "eth0"), podnet.Teardown("c-plain", "eth0", ipS, "eth0"))
	})
	if s := n.state(); len(s.Veths)+len(s.Proxies)+len(s.Routes) > 0 {
		t.Errorf("after teardown the node still has %+v", s)
	}
}

// TestClaimPoolPairConcurrent: 30 claims at once never get the same pair, and
// exactly min(30, size) get one.
func TestClaimPoolPairConcurrent(t *testing.T) {
	for _, size := range []int{0, 5, 40} {
		t.Run(fmt.Sprintf("pool=%d", size), func(t *testing.T) {
			n := newNode(t, "10.224.0.2/16")
			dir, _ := n.fillPool(size, 0)
			var mu sync.Mutex
			var got []string
			var wg sync.WaitGroup
			for i := range 30 {
				wg.Go(func() {
					id, err := podnet.ClaimPoolPair(dir, fmt.Sprintf("c%d", i))
					switch {
					case errors.Is(err, podnet.ErrPoolEmpty):
					case err != nil:
						t.Error(err)
					default:
						mu.Lock()
						got = append(got, id)
						mu.Unlock()
					}
				})
			}
			wg.Wait()
			slices.Sort(got)
			if len(slices.Compact(slices.Clone(got))) != len(got) {
				t.Errorf("a pair was claimed twice: %v", got)
			}
			if len(got) != min(30, size) {
				t.Errorf("%d claims succeeded, want %d", len(got), min(30, size))
			}
		})
	}
}

// TestSetupPooledFailureLeavesNothing: a claimed pair whose peer is gone (the
// agent removed it meanwhile) fails, leaving neither the pair nor the pod's plumbing.
func TestSetupPooledFailureLeavesNothing(t *testing.T) {
	n := newNode(t, "10.224.0.2/16")
	dir, pairs := n.fillPool(1, 0)
	pod := podnettest.NewNS(t)
	up := n.uplink()
	n.Do(func() error {
		for id := range pairs {
			if _, err := podnet.ClaimPoolPair(dir, "c1"); err != nil {
				return err
			}
			l, err := netlink.LinkByName(podnet.PoolPeerPrefix + id)
			if err != nil {
				return err
			}
			if err := netlink.LinkSetNsFd(l, int(pod.Fd())); err != nil { // gone from the node: not found there
				return err
			}
			if _, err := podnet.SetupPooled(pod, id, "c1", "eth0", netip.MustParseAddr("10.224.0.40"), 0, up); err == nil {
				return errors.New("SetupPooled of a pair without its peer: want an error")
			}
		}
		return nil
	})
	if links := podnettest.Links(t, n.NS); slices.ContainsFunc(links, func(l string) bool {
		_, pool := podnet.PoolIDOf(l)
		return pool || l == podnet.HostVethName("c1", "eth0")
	}) {
		t.Errorf("node links after a failed SetupPooled: %v", links)
	}
	if s := n.state(); len(s.Veths)+len(s.Proxies)+len(s.Routes) > 0 {
		t.Errorf("after a failed SetupPooled the node has %+v", s)
	}
}
