package podnet

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Check verifies that what Setup configured is still in place.
func Check(podNS ns.NetNS, containerID, ifName string, addr netip.Addr, up *Uplink) error {
	hostName := HostVethName(containerID, ifName)
	hl, err := netlinksafe.LinkByName(hostName)
	if err != nil {
		return fmt.Errorf("host veth %s: %w", hostName, err)
	}
	if hl.Attrs().OperState == netlink.OperDown || hl.Attrs().Flags&net.FlagUp == 0 {
		return fmt.Errorf("host veth %s is down", hostName)
	}
	if !hasRoute(hl, HostNet(addr), nil) {
		return fmt.Errorf("host route %s/32 dev %s: missing", addr, hostName)
	}
	if !hasProxyNeigh(up.Link, addr) {
		return fmt.Errorf("proxy neighbour %s on uplink %s: missing (other nodes cannot reach the pod)", addr, up.Link.Attrs().Name)
	}
	hostMAC := hl.Attrs().HardwareAddr
	return podNS.Do(func(ns.NetNS) error {
		lo, err := netlinksafe.LinkByName("lo")
		if err != nil {
			return fmt.Errorf("pod lo: %w", err)
		}
		if lo.Attrs().Flags&net.FlagUp == 0 {
			return fmt.Errorf("pod lo is down")
		}
		pl, err := netlinksafe.LinkByName(ifName)
		if err != nil {
			return fmt.Errorf("pod interface %s: %w", ifName, err)
		}
		addrs, err := netlinksafe.AddrList(pl, netlink.FAMILY_V4)
		if err != nil {
			return fmt.Errorf("list addresses of pod interface %s: %w", ifName, err)
		}
		found := false
		for _, a := range addrs {
			if p, ok := prefixOf(a.IPNet); ok && p == netip.PrefixFrom(addr, 32) {
				found = true
			}
		}
		if !found {
			return fmt.Errorf("pod interface %s: address %s/32 missing", ifName, addr)
		}
		if !hasRoute(pl, nil, GatewayIP.AsSlice()) {
			return fmt.Errorf("pod default route via %s: missing", GatewayIP)
		}
		neighs, err := netlink.NeighList(pl.Attrs().Index, unix.AF_INET)
		if err != nil {
			return fmt.Errorf("list pod neighbours: %w", err)
		}
		for _, n := range neighs {
			if n.IP.Equal(GatewayIP.AsSlice()) && n.HardwareAddr.String() == hostMAC.String() {
				return nil
			}
		}
		return fmt.Errorf("pod neighbour %s -> %s: missing", GatewayIP, hostMAC)
	})
}

// hasProxyNeigh reports whether the uplink answers ARP for addr.
func hasProxyNeigh(uplink netlink.Link, addr netip.Addr) bool {
	list, err := netlink.NeighProxyList(uplink.Attrs().Index, unix.AF_INET)
	if err != nil {
		return false
	}
	for _, n := range list {
		if n.IP.Equal(addr.AsSlice()) {
			return true
		}
	}
	return false
}

func hasRoute(link netlink.Link, dst *net.IPNet, gw net.IP) bool {
	routes, err := netlinksafe.RouteList(link, netlink.FAMILY_V4)
	if err != nil {
		return false
	}
	for _, r := range routes {
		switch {
		case dst != nil && r.Dst != nil && r.Dst.String() == dst.String():
			return true
		case dst == nil && gw != nil && (r.Dst == nil || r.Dst.String() == "0.0.0.0/0") && r.Gw.Equal(gw):
			return true
		}
	}
	return false
}
