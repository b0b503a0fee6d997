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

// fillPool publishes size pool indexes for the node, as the agent does, and
// returns the pool directory and the indexes.
func (n *node) fillPool(size int) (string, []int) {
	dir := podnet.PoolDir(n.T.TempDir())
	return dir, podnettest.FillPool(n.T, dir, size)
}

// setupPooled claims an index of dir and plumbs attachment id/eth0 of pod on it,
// as the plugin does; it returns the claimed index.
func (n *node) setupPooled(dir, id string, pod ns.NetNS, addr netip.Addr) (*podnet.Veth, int) {
	n.T.Helper()
	up := n.uplink()
	var v *podnet.Veth
	var ifindex int
	n.Do(func() (err error) {
		if ifindex, err = podnet.ClaimPoolIndex(dir, id); err != nil {
			return err
		}
		v, err = podnet.Setup(pod, id, "eth0", addr, 0, up, ifindex)
		return err
	})
	return v, ifindex
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

// TestSetupOnPoolIndex: a pod whose host veth is created on a claimed pool index
// has that index and exactly what Setup gives any pod (Check passes, the same host
// state, IPv6 off on both ends, proxy ARP, MTU), and traffic flows between it, a
// pod on the kernel's index and the node.
func TestSetupOnPoolIndex(t *testing.T) {
	n := newNode(t, "10.224.0.2/16")
	dir, indexes := n.fillPool(1)
	pooled, plain := podnettest.NewNS(t), podnettest.NewNS(t)
	ipP, ipS := netip.MustParseAddr("10.224.0.40"), netip.MustParseAddr("10.224.0.41")
	v, claimed := n.setupPooled(dir, "c-pooled", pooled, ipP)
	vs := n.setup("c-plain", plain, ipS)
	if claimed != indexes[0] || v.HostIf.Index != claimed {
		t.Errorf("pooled pod's host interface has index %d, claimed %d of the pool's %v", v.HostIf.Index, claimed, indexes)
	}
	if podnet.IsPoolIndex(vs.HostIf.Index) {
		t.Errorf("the pod set up without a claim got pool index %d", vs.HostIf.Index)
	}
	if v.HostVeth != podnet.HostVethName("c-pooled", "eth0") || v.PodIf.Name != "eth0" || v.PodIf.MTU != n.uplink().Link.Attrs().MTU {
		t.Errorf("Setup on a pool index returned %+v", v)
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
	for _, c := range []struct {
		netns      ns.NetNS
		name, want string
	}{
		{pooled, "net/ipv6/conf/eth0/disable_ipv6", "1\n"},
		{n.NS, "net/ipv6/conf/" + v.HostVeth + "/disable_ipv6", "1\n"},
		{n.NS, "net/ipv4/conf/" + v.HostVeth + "/proxy_arp", "1\n"},
		{n.NS, "net/ipv4/neigh/" + v.HostVeth + "/proxy_delay", "0\n"},
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
	// DEL's teardown takes the pooled pod's plumbing as it takes any pod's.
	n.Do(func() error {
		return errors.Join(podnet.Teardown("c-pooled", "eth0", ipP, "eth0"), podnet.Teardown("c-plain", "eth0", ipS, "eth0"))
	})
	if s := n.state(); len(s.Veths)+len(s.Proxies)+len(s.Routes) > 0 {
		t.Errorf("after teardown the node still has %+v", s)
	}
}

// TestSetupOnTakenPoolIndex: a claimed index another link took meanwhile does not
// fail the ADD: the host veth gets the kernel's index, and the other link is
// untouched.
func TestSetupOnTakenPoolIndex(t *testing.T) {
	n := newNode(t, "10.224.0.2/16")
	dir, indexes := n.fillPool(1)
	n.Do(func() error {
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "squatter", Index: indexes[0]}, PeerName: "squatterp"})
	})
	pod := podnettest.NewNS(t)
	v, claimed := n.setupPooled(dir, "c1", pod, netip.MustParseAddr("10.224.0.40"))
	if claimed != indexes[0] || v.HostIf.Index == claimed || podnet.IsPoolIndex(v.HostIf.Index) {
		t.Errorf("claimed %d (taken), host veth got %d: want the kernel's index", claimed, v.HostIf.Index)
	}
	n.Do(func() error {
		l, err := netlink.LinkByIndex(indexes[0])
		if err != nil || l.Attrs().Name != "squatter" {
			return fmt.Errorf("the link on the taken index: %v, %v", l, err)
		}
		return nil
	})
}

// TestClaimPoolIndexConcurrent: 30 claims at once never get the same index, and
// exactly min(30, size) get one.
func TestClaimPoolIndexConcurrent(t *testing.T) {
	for _, size := range []int{0, 5, 40} {
		t.Run(fmt.Sprintf("pool=%d", size), func(t *testing.T) {
			dir := podnet.PoolDir(t.TempDir())
			podnettest.FillPool(t, dir, size)
			var mu sync.Mutex
			var got []int
			var wg sync.WaitGroup
			for i := range 30 {
				wg.Go(func() {
					ifindex, err := podnet.ClaimPoolIndex(dir, fmt.Sprintf("c%d", i))
					switch {
					case errors.Is(err, podnet.ErrPoolEmpty):
					case err != nil:
						t.Error(err)
					default:
						mu.Lock()
						got = append(got, ifindex)
						mu.Unlock()
					}
				})
			}
			wg.Wait()
			slices.Sort(got)
			if len(slices.Compact(slices.Clone(got))) != len(got) {
				t.Errorf("an index was claimed twice: %v", got)
			}
			if len(got) != min(30, size) {
				t.Errorf("%d claims succeeded, want %d", len(got), min(30, size))
			}
		})
	}
}

// TestFreePoolIndexes: only files named by an index of the pool's range are
// free indexes; a publish cut short is set aside, anything else ignored.
func TestFreePoolIndexes(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"1073741824", ".1073741825", "17", "01073741826", "x", "1074790400"} {
		if err := os.WriteFile(dir+"/"+name, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	free, aside, err := podnet.FreePoolIndexes(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(free, []int{podnet.PoolIndexBase}) || !slices.Equal(aside, []int{podnet.PoolIndexBase + 1}) {
		t.Errorf("free %v, aside %v: want [%d] and [%d]", free, aside, podnet.PoolIndexBase, podnet.PoolIndexBase+1)
	}
}
