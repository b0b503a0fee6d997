package podnet_test

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/flatnet/flatnet/dataplane/podnet"
	"github.com/flatnet/flatnet/dataplane/podnet/podnettest"
)

// TestSetupCheckTeardown reads both ends of an attachment back from the
// kernel, then checks and removes it.
func TestSetupCheckTeardown(t *testing.T) {
	n := newNode(t, "10.224.0.2/16")
	pod := podnettest.NewNS(t)
	ip := netip.MustParseAddr("10.224.0.40")
	v := n.setup("c1", pod, ip)
	hostVeth := podnet.HostVethName("c1", "eth0")
	if v.HostVeth != hostVeth || v.IP != ip || v.PodIfName != "eth0" || v.HostIf.Index <= 0 || v.PodIf.Name != "eth0" {
		t.Fatalf("Setup returned %+v, want %s on host veth %s and pod eth0", v, ip, hostVeth)
	}

	// Pod side, read back from the kernel.
	var hostMAC net.HardwareAddr
	n.Do(func() error {
		l, err := netlink.LinkByName(hostVeth)
		if err != nil {
			return err
		}
		hostMAC = l.Attrs().HardwareAddr
		return nil
	})
	if err := pod.Do(func(ns.NetNS) error {
		// lo is up with the address the kernel gives it, as CNI's loopback
		// plugin would leave it: no plugin of its own runs.
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		loAddrs, _ := netlink.AddrList(lo, netlink.FAMILY_V4)
		if lo.Attrs().Flags&net.FlagUp == 0 || len(loAddrs) != 1 || loAddrs[0].IPNet.String() != "127.0.0.1/8" {
			return fmt.Errorf("pod lo flags %v addresses %v, want up with 127.0.0.1/8", lo.Attrs().Flags, loAddrs)
		}
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		addrs, _ := netlink.AddrList(l, netlink.FAMILY_V4)
		if len(addrs) != 1 || addrs[0].IPNet.String() != ip.String()+"/32" {
			return fmt.Errorf("pod eth0 addresses %v, want only %s/32", addrs, ip)
		}
		routes, _ := netlink.RouteList(l, netlink.FAMILY_V4)
		var def, gw bool
		for _, r := range routes {
			def = def || (r.Dst == nil || r.Dst.String() == "0.0.0.0/0") && r.Gw.String() == podnet.GatewayIP.String()
			gw = gw || r.Dst != nil && r.Dst.String() == podnet.GatewayIP.String()+"/32" && r.Scope == netlink.SCOPE_LINK
		}
		if !def || !gw {
			return fmt.Errorf("pod routes %v: want default via %s and %s/32 scope link", routes, podnet.GatewayIP, podnet.GatewayIP)
		}
		neighs, _ := netlink.NeighList(l.Attrs().Index, unix.AF_INET)
		ok := slices.ContainsFunc(neighs, func(nb netlink.Neigh) bool {
			return nb.IP.String() == podnet.GatewayIP.String() && nb.HardwareAddr.String() == hostMAC.String() && nb.State == netlink.NUD_PERMANENT
		})
		if !ok {
			return fmt.Errorf("pod neighbours %v: want %s -> %s PERMANENT", neighs, podnet.GatewayIP, hostMAC)
		}
		// IPv4-only: the datapath drops IPv6 frames, so the pod's kernel sends none.
		if v6, _ := netlink.AddrList(l, netlink.FAMILY_V6); len(v6) != 0 {
			return fmt.Errorf("pod eth0 IPv6 addresses %v, want none", v6)
		}
		if b, err := os.ReadFile("/proc/sys/net/ipv6/conf/eth0/disable_ipv6"); err != nil || strings.TrimSpace(string(b)) != "1" {
			return fmt.Errorf("pod eth0 disable_ipv6 = %q (%v), want 1", b, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	n.Do(func() error {
		b, err := os.ReadFile("/proc/sys/net/ipv6/conf/" + hostVeth + "/disable_ipv6")
		if err != nil || strings.TrimSpace(string(b)) != "1" {
			return fmt.Errorf("host veth disable_ipv6 = %q (%v), want 1", b, err)
		}
		return nil
	})

	// Host side.
	s := n.state()
	if !slices.Equal(s.Veths, []string{hostVeth}) || !slices.Equal(s.Routes, []string{ip.String() + "/32"}) || !slices.Equal(s.Proxies, []netip.Addr{ip}) {
		t.Fatalf("host state %+v, want veth %s with route %s/32 and a proxy entry for it on eth0", s, hostVeth, ip)
	}
	n.Do(func() error {
		for file, want := range map[string]string{
			"/proc/sys/net/ipv4/ip_forward":                         "1",
			"/proc/sys/net/ipv4/neigh/eth0/proxy_delay":             "0",
			"/proc/sys/net/ipv4/conf/" + hostVeth + "/proxy_arp":    "1",
			"/proc/sys/net/ipv4/neigh/" + hostVeth + "/proxy_delay": "0",
		} {
			b, err := os.ReadFile(file)
			if err != nil || strings.TrimSpace(string(b)) != want {
				return fmt.Errorf("%s = %q (%v), want %s", file, b, err, want)
			}
		}
		return nil
	})

	up := n.uplink()
	check := func() (err error) {
		n.Do(func() error { err = podnet.Check(pod, "c1", "eth0", ip, up); return nil })
		return err
	}
	if err := check(); err != nil {
		t.Fatalf("Check of a healthy attachment: %v", err)
	}
	// Check notices a pod whose lo went down, then passes once it is back up.
	setLo := func(up bool) {
		pod.Do(func(ns.NetNS) error {
			lo, err := netlink.LinkByName("lo")
			if err != nil {
				return err
			}
			if up {
				return netlink.LinkSetUp(lo)
			}
			return netlink.LinkSetDown(lo)
		})
	}
	setLo(false)
	if err := check(); err == nil || !strings.Contains(err.Error(), "lo is down") {
		t.Fatalf("Check with the pod's lo down: %v, want an error naming lo", err)
	}
	setLo(true)
	if err := check(); err != nil {
		t.Fatalf("Check with lo back up: %v", err)
	}
	// Check notices when other nodes can no longer reach the pod.
	n.Do(func() error {
		return netlink.NeighDel(&netlink.Neigh{LinkIndex: up.Link.Attrs().Index, Family: unix.AF_INET, Flags: netlink.NTF_PROXY, IP: ip.AsSlice()})
	})
	if err := check(); err == nil || !strings.Contains(err.Error(), "proxy neighbour") {
		t.Fatalf("Check after removing the proxy entry: %v, want an error naming the proxy neighbour", err)
	}

	// Teardown never enters the pod: removing the host veth takes the pod end.
	for i := range 2 {
		n.Do(func() error { return podnet.Teardown("c1", "eth0", ip, "eth0") })
		if s := n.state(); len(s.Veths)+len(s.Proxies)+len(s.Routes) > 0 {
			t.Errorf("after Teardown %d: node still has flatnet plumbing: %+v", i+1, s)
		}
	}
	if got := podnettest.Links(t, pod); !slices.Equal(got, []string{"lo"}) {
		t.Errorf("pod netns after Teardown has %v, want only lo", got)
	}
}
