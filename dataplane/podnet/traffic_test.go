package podnet_test

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/flatnet/flatnet/dataplane/podnet/podnettest"
)

// TestCrossNodeTraffic puts two nodes on one L2 segment (a veth pair as the
// docker bridge) and checks that pods reach each other and the other node
// directly: no routes on the other node, no encapsulation, only proxy ARP.
func TestCrossNodeTraffic(t *testing.T) {
	a, b := newBareNode(t, "10.224.0.2/16"), newBareNode(t, "10.224.0.3/16")
	a.Do(func() error {
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(b.NS.Fd()))})
	})
	a.Do(func() error { return podnettest.AddrUp("eth0", a.IP) })
	b.Do(func() error { return podnettest.AddrUp("eth0", b.IP) })

	podA, podA2, podB := podnettest.NewNS(t), podnettest.NewNS(t), podnettest.NewNS(t)
	ipA, ipA2, ipB := netip.MustParseAddr("10.224.0.32"), netip.MustParseAddr("10.224.0.33"), netip.MustParseAddr("10.224.0.62")
	a.setup("pa", podA, ipA)
	a.setup("pa2", podA2, ipA2)
	b.setup("pb", podB, ipB)

	for _, c := range []struct {
		name     string
		from, to ns.NetNS
		dst      netip.Addr
	}{
		{"pod A -> pod B (other node)", podA, podB, ipB},
		{"pod B -> pod A (other node)", podB, podA, ipA},
		{"pod A -> pod A2 (same node)", podA, podA2, ipA2},
		{"node B -> pod A", b.NS, podA, ipA},
		{"pod A -> node B", podA, b.NS, b.IP.Addr()},
	} {
		if err := tcpEcho(c.from, c.to, c.dst); err != nil {
			t.Errorf("%s: %v", c.name, err)
		}
	}
	// Node B learnt pod A's address by ARP on its uplink, answered by node A:
	// the neighbour entry carries node A's uplink MAC, and node B has no route for it.
	var macA string
	a.Do(func() error { l, err := netlink.LinkByName("eth0"); macA = l.Attrs().HardwareAddr.String(); return err })
	b.Do(func() error {
		up, _ := netlink.LinkByName("eth0")
		neighs, _ := netlink.NeighList(up.Attrs().Index, unix.AF_INET)
		if !slices.ContainsFunc(neighs, func(nb netlink.Neigh) bool { return nb.IP.String() == ipA.String() && nb.HardwareAddr.String() == macA }) {
			return fmt.Errorf("node B neighbours %v: want %s at node A's MAC %s", neighs, ipA, macA)
		}
		routes, _ := netlink.RouteList(nil, netlink.FAMILY_V4)
		for _, r := range routes {
			if r.Dst != nil && r.Dst.Contains(ipA.AsSlice()) && r.Dst.String() != subnet {
				return fmt.Errorf("node B has a route %v for pod A's address", r)
			}
		}
		return nil
	})
}

// tcpEcho listens in `to` on dst:7777 and exchanges a line with it from `from`.
func tcpEcho(from, to ns.NetNS, dst netip.Addr) error {
	var l net.Listener
	if err := to.Do(func(ns.NetNS) (err error) {
		l, err = net.Listen("tcp4", netip.AddrPortFrom(dst, 7777).String())
		return err
	}); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 5)
		if _, err := c.Read(buf); err == nil {
			c.Write(buf)
		}
	}()
	return from.Do(func(ns.NetNS) error {
		c, err := net.DialTimeout("tcp4", netip.AddrPortFrom(dst, 7777).String(), 5*time.Second)
		if err != nil {
			return fmt.Errorf("connect: %w", err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte("hello")); err != nil {
			return err
		}
		buf := make([]byte, 5)
		if _, err := c.Read(buf); err != nil || string(buf) != "hello" {
			return fmt.Errorf("echo: %q %v", buf, err)
		}
		return nil
	})
}
