package cni

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// GatewayIP is the pod's default gateway: a link-local address no node owns.
// The pod reaches it through a permanent neighbour entry pointing at the host
// veth's MAC, so every packet leaving the pod goes to the host, which routes
// it (Azure's transparent mode uses the same address).
var GatewayIP = netip.MustParseAddr("169.254.1.1")

// HostVethPrefix starts the name of every host-side veth flatnet creates.
const HostVethPrefix = "fn"

// HostVethName is the host-side veth name of an attachment: a hash of the
// container ID and interface, so DEL and GC find the link without any state
// even when the pod's netns is gone.
func HostVethName(containerID, ifName string) string {
	h := sha256.Sum256([]byte(containerID + "/" + ifName))
	return HostVethPrefix + hex.EncodeToString(h[:])[:12]
}

// Uplink is the node's interface on the node subnet.
type Uplink struct {
	Link netlink.Link
	// NodeIP is the uplink's address inside the subnet.
	NodeIP netip.Prefix
	// Addrs are all the uplink's IPv4 addresses (never handed to a pod).
	Addrs []netip.Addr
}

// FindUplink looks the uplink up in the current netns and checks the node
// is on the subnet.
func FindUplink(name string, subnet netip.Prefix) (*Uplink, error) {
	link, err := netlinksafe.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("uplink %q: not found on the node (%v); set uplink to the node's interface on %s", name, err, subnet)
	}
	addrs, err := netlinksafe.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("list addresses of uplink %s: %w", name, err)
	}
	u := &Uplink{Link: link}
	var seen []string
	for _, a := range addrs {
		p, ok := prefixOf(a.IPNet)
		if !ok {
			continue
		}
		u.Addrs = append(u.Addrs, p.Addr())
		seen = append(seen, p.String())
		if !u.NodeIP.IsValid() && subnet.Contains(p.Addr()) {
			u.NodeIP = p
		}
	}
	if !u.NodeIP.IsValid() {
		return nil, fmt.Errorf("subnet %s: does not contain the node; uplink %s has addresses [%s]; set subnet to the node's own network (or uplink to the interface on it)", subnet, name, strings.Join(seen, " "))
	}
	return u, nil
}

// PodNet is what ADD configured for one attachment.
type PodNet struct {
	HostIf    net.Interface
	PodIf     net.Interface
	IP        netip.Addr
	HostVeth  string
	PodIfName string
}

// SetupPod creates the veth pair and configures both ends:
//
//	pod:  <ifName> ip/32, 169.254.1.1 dev <ifName> scope link, default via 169.254.1.1,
//	      169.254.1.1 lladdr <host veth MAC> PERMANENT, no IPv6 on <ifName>
//	host: <hostVeth> up, proxy_arp=1, ip/32 dev <hostVeth> scope link, no IPv6,
//	      proxy neighbour ip on the uplink (the node answers ARP for the pod there)
//
// flatnet is IPv4-only and its datapath drops every IPv6 frame on the veth; without
// IPv6 on either end, neither kernel sends any (DAD, router solicitations, MLD) to
// be dropped. The pod's lo keeps ::1.
//
// The pod gets a /32, not the subnet's prefix: with a /16 the pod would ARP
// directly for its neighbours on the subnet, which are behind other nodes and
// cannot hear it; with a /32 everything goes through the host, which routes
// (same node) or answers ARP for it on the flat L2 segment (other nodes), so
// no node needs a route and nothing is encapsulated. On error it removes
// whatever it created; the caller releases the address.
func SetupPod(podNS ns.NetNS, containerID, ifName string, addr netip.Addr, mtu int, up *Uplink) (*PodNet, error) {
	hostName := HostVethName(containerID, ifName)
	hostNS, err := ns.GetCurrentNS()
	if err != nil {
		return nil, fmt.Errorf("open the host netns: %w", err)
	}
	defer hostNS.Close()
	if mtu == 0 {
		mtu = up.Link.Attrs().MTU
	}
	// A link of this name is left by an earlier ADD of the same attachment that
	// died half-way (the runtime retries with the same container ID): start over.
	if err := deleteLink(hostName); err != nil {
		return nil, err
	}

	pn := &PodNet{IP: addr, HostVeth: hostName, PodIfName: ifName}
	err = podNS.Do(func(ns.NetNS) error {
		podIf, err := createVeth(ifName, hostName, mtu, hostNS)
		if err != nil {
			return err
		}
		pn.PodIf = podIf
		return hostNS.Do(func(ns.NetNS) error {
			hl, err := netlinksafe.LinkByName(hostName)
			if err != nil {
				return fmt.Errorf("look up host veth %s: %w", hostName, err)
			}
			if err := disableIPv6(hostName); err != nil {
				return err
			}
			if err := netlink.LinkSetUp(hl); err != nil {
				return fmt.Errorf("set host veth %s up: %w", hostName, err)
			}
			pn.HostIf = ifaceOf(hl)
			return nil
		})
	})
	if err == nil {
		err = podNS.Do(func(ns.NetNS) error { return configurePodSide(ifName, addr, pn.HostIf.HardwareAddr) })
	}
	if err == nil {
		err = configureHostSide(pn, up)
	}
	if err != nil {
		if derr := deleteLink(hostName); derr != nil {
			err = errors.Join(err, fmt.Errorf("undo: %w", derr))
		}
		if derr := deleteProxyNeigh(up.Link, addr); derr != nil {
			err = errors.Join(err, fmt.Errorf("undo: %w", derr))
		}
		return nil, err
	}
	return pn, nil
}

// createVeth makes the pair from inside the pod netns, the host end born in
// hostNS, so neither end ever exists in the wrong namespace.
func createVeth(podIfName, hostName string, mtu int, hostNS ns.NetNS) (net.Interface, error) {
	attrs := netlink.NewLinkAttrs()
	attrs.Name, attrs.MTU = podIfName, mtu
	veth := &netlink.Veth{LinkAttrs: attrs, PeerName: hostName, PeerNamespace: netlink.NsFd(int(hostNS.Fd()))}
	if err := netlink.LinkAdd(veth); err != nil {
		return net.Interface{}, fmt.Errorf("create veth %s (pod) <-> %s (host): %w", podIfName, hostName, err)
	}
	l, err := netlinksafe.LinkByName(podIfName)
	if err != nil {
		return net.Interface{}, fmt.Errorf("look up pod interface %s: %w", podIfName, err)
	}
	return ifaceOf(l), nil
}

func ifaceOf(l netlink.Link) net.Interface {
	a := l.Attrs()
	return net.Interface{Index: a.Index, MTU: a.MTU, Name: a.Name, HardwareAddr: a.HardwareAddr, Flags: a.Flags}
}

func configurePodSide(ifName string, addr netip.Addr, hostMAC net.HardwareAddr) error {
	link, err := netlinksafe.LinkByName(ifName)
	if err != nil {
		return fmt.Errorf("look up pod interface %s: %w", ifName, err)
	}
	if err := disableIPv6(ifName); err != nil {
		return err
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("set pod interface %s up: %w", ifName, err)
	}
	if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: hostNet(addr)}); err != nil {
		return fmt.Errorf("add %s/32 to pod interface %s: %w", addr, ifName, err)
	}
	gw := hostNet(GatewayIP)
	if err := netlink.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Dst: gw, Scope: netlink.SCOPE_LINK}); err != nil {
		return fmt.Errorf("add route %s dev %s in the pod: %w", gw, ifName, err)
	}
	if err := netlink.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Gw: gw.IP}); err != nil {
		return fmt.Errorf("add default route via %s in the pod: %w", GatewayIP, err)
	}
	// Permanent: the pod never has to ARP for its gateway, and nothing on the
	// host has to answer for an address the host does not hold.
	if err := netlink.NeighSet(&netlink.Neigh{
		LinkIndex: link.Attrs().Index, Family: unix.AF_INET, State: netlink.NUD_PERMANENT,
		IP: gw.IP, HardwareAddr: hostMAC,
	}); err != nil {
		return fmt.Errorf("add neighbour %s -> %s in the pod: %w", GatewayIP, hostMAC, err)
	}
	return nil
}

func configureHostSide(pn *PodNet, up *Uplink) error {
	link, err := netlinksafe.LinkByName(pn.HostVeth)
	if err != nil {
		return fmt.Errorf("look up host veth %s: %w", pn.HostVeth, err)
	}
	// Answers the pod's ARP for 169.254.1.1 should its permanent entry be flushed.
	if err := writeSysctl("net/ipv4/conf/"+pn.HostVeth+"/proxy_arp", "1"); err != nil {
		return err
	}
	if err := netlink.RouteReplace(&netlink.Route{LinkIndex: link.Attrs().Index, Dst: hostNet(pn.IP), Scope: netlink.SCOPE_LINK}); err != nil {
		return fmt.Errorf("add host route %s/32 dev %s: %w", pn.IP, pn.HostVeth, err)
	}
	if err := EnsureHostForwarding(up.Link.Attrs().Name); err != nil {
		return err
	}
	if err := netlink.NeighSet(proxyNeigh(up.Link, pn.IP)); err != nil {
		return fmt.Errorf("add proxy neighbour %s on uplink %s: %w", pn.IP, up.Link.Attrs().Name, err)
	}
	// The address may have been a pod's of this node before a restart gave the
	// uplink another MAC: tell the nodes that still hold the old one.
	return Announce(up.Link, pn.IP)
}

// EnsureHostForwarding turns on what the flat network needs on the node:
// IPv4 forwarding (the node routes between pods and the uplink) and no
// proxy-ARP delay on the uplink (the kernel otherwise delays answers to
// broadcast ARP requests for proxied addresses by up to 0.8 s).
func EnsureHostForwarding(uplink string) error {
	if err := ensureSysctl("net/ipv4/ip_forward", "1"); err != nil {
		return err
	}
	return ensureSysctl("net/ipv4/neigh/"+uplink+"/proxy_delay", "0")
}

// TeardownPod removes an attachment's host side: the host veth (the kernel
// removes its peer in the pod and the /32 route with it) and the proxy
// neighbour on the uplink. Everything missing is fine: DEL runs again after
// partial failures and after the netns is gone.
func TeardownPod(containerID, ifName string, addr netip.Addr, uplink string) error {
	var errs []error
	if err := deleteLink(HostVethName(containerID, ifName)); err != nil {
		errs = append(errs, err)
	}
	if addr.IsValid() {
		if link, err := netlinksafe.LinkByName(uplink); err == nil {
			if err := deleteProxyNeigh(link, addr); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// CheckPod verifies that what SetupPod configured is still in place.
func CheckPod(podNS ns.NetNS, containerID, ifName string, addr netip.Addr, up *Uplink) error {
	hostName := HostVethName(containerID, ifName)
	hl, err := netlinksafe.LinkByName(hostName)
	if err != nil {
		return fmt.Errorf("host veth %s: %w", hostName, err)
	}
	if hl.Attrs().OperState == netlink.OperDown || hl.Attrs().Flags&net.FlagUp == 0 {
		return fmt.Errorf("host veth %s is down", hostName)
	}
	if !hasRoute(hl, hostNet(addr), nil) {
		return fmt.Errorf("host route %s/32 dev %s: missing", addr, hostName)
	}
	if !HasProxyNeigh(up.Link, addr) {
		return fmt.Errorf("proxy neighbour %s on uplink %s: missing (other nodes cannot reach the pod)", addr, up.Link.Attrs().Name)
	}
	hostMAC := hl.Attrs().HardwareAddr
	return podNS.Do(func(ns.NetNS) error {
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

// HasProxyNeigh reports whether the uplink answers ARP for addr.
func HasProxyNeigh(uplink netlink.Link, addr netip.Addr) bool {
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

func proxyNeigh(uplink netlink.Link, addr netip.Addr) *netlink.Neigh {
	return &netlink.Neigh{LinkIndex: uplink.Attrs().Index, Family: unix.AF_INET, Flags: netlink.NTF_PROXY, IP: addr.AsSlice()}
}

func deleteProxyNeigh(uplink netlink.Link, addr netip.Addr) error {
	err := netlink.NeighDel(proxyNeigh(uplink, addr))
	if err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("delete proxy neighbour %s on %s: %w", addr, uplink.Attrs().Name, err)
	}
	return nil
}

func deleteLink(name string) error {
	link, err := netlinksafe.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("look up link %s: %w", name, err)
	}
	if err := netlink.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("delete link %s: %w", name, err)
	}
	return nil
}

func hostNet(a netip.Addr) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(32, 32)}
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	a = a.Unmap()
	if !a.Is4() {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(a, ones), true
}

// writeSysctl writes a value under /proc/sys of the current netns.
func writeSysctl(name, value string) error {
	if err := os.WriteFile("/proc/sys/"+name, []byte(value), 0o644); err != nil {
		return fmt.Errorf("set sysctl %s=%s: %w", strings.ReplaceAll(name, "/", "."), value, err)
	}
	return nil
}

// disableIPv6 turns IPv6 off on the interface (in the current netns); a kernel
// without IPv6 has nothing to turn off.
func disableIPv6(ifName string) error {
	name := "net/ipv6/conf/" + ifName + "/disable_ipv6"
	if _, err := os.Stat("/proc/sys/" + name); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return writeSysctl(name, "1")
}

// ensureSysctl writes only when the value differs (most calls read only).
func ensureSysctl(name, value string) error {
	b, err := os.ReadFile("/proc/sys/" + name)
	if err == nil && strings.TrimSpace(string(b)) == value {
		return nil
	}
	return writeSysctl(name, value)
}

// removeOrphanVeths deletes flatnet host veths that belong to no attachment
// in keep (e.g. left by a plugin killed between creating the veth and
// recording the address, or whose allocation was released elsewhere).
func removeOrphanVeths(keep map[string]bool) error {
	links, err := netlinksafe.LinkList()
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	var errs []error
	for _, l := range links {
		name := l.Attrs().Name
		if _, isVeth := l.(*netlink.Veth); !isVeth || keep[name] || !isHostVethName(name) {
			continue
		}
		if err := deleteLink(name); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("remove orphan veths: %v", errs)
	}
	return nil
}

func isHostVethName(name string) bool {
	if len(name) != len(HostVethPrefix)+12 || name[:len(HostVethPrefix)] != HostVethPrefix {
		return false
	}
	for _, c := range name[len(HostVethPrefix):] {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}
