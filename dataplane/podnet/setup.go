package podnet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/containernetworking/plugins/pkg/ip"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/utils/sysctl"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Veth is what Setup configured for one attachment.
type Veth struct {
	HostIf    net.Interface
	PodIf     net.Interface
	IP        netip.Addr
	HostVeth  string
	PodIfName string
}

// Setup creates the veth pair and configures both ends:
//
//	pod:  lo up, <ifName> ip/32, 169.254.1.1 dev <ifName> scope link, default via 169.254.1.1,
//	      169.254.1.1 lladdr <host veth MAC> PERMANENT, no IPv6 on <ifName>
//	host: <hostVeth> up, proxy_arp=1 (proxy_delay=0), ip/32 dev <hostVeth> scope link, no IPv6,
//	      proxy neighbour ip on the uplink (the node answers ARP for the pod there)
//
// The address may have been a pod's of this node before a restart gave the uplink
// another MAC: the caller announces it (Announce; the agent does, from a socket
// it keeps, when the plugin registers the endpoint).
//
// hostIndex is the host end's interface index: one of the warm pool's (claimed
// with ClaimPoolIndex: the agent has its datapath maps ready), or 0 for the
// kernel's choice; a pool index another link took meanwhile falls back to 0.
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
func Setup(podNS ns.NetNS, containerID, ifName string, addr netip.Addr, mtu int, up *Uplink, hostIndex int) (*Veth, error) {
	hostName := HostVethName(containerID, ifName)
	if mtu == 0 {
		mtu = up.Link.Attrs().MTU
	}
	// A link of this name is left by an earlier ADD of the same attachment that
	// died half-way (the runtime retries with the same container ID): start over.
	if err := deleteLink(hostName); err != nil {
		return nil, err
	}

	v := &Veth{IP: addr, HostVeth: hostName, PodIfName: ifName}
	host, err := createVeth(podNS, hostName, ifName, mtu, hostIndex)
	if errors.Is(err, unix.EEXIST) && hostIndex != 0 {
		host, err = createVeth(podNS, hostName, ifName, mtu, 0)
	}
	if err == nil {
		// Up with its peer still down: no carrier, so no IPv6 frame leaves it
		// before IPv6 is off.
		err = disableIPv6(hostName)
		if err == nil {
			if err = netlink.LinkSetUp(host); err != nil {
				err = fmt.Errorf("set host veth %s up: %w", hostName, err)
			}
		}
		a := host.Attrs()
		v.HostIf = net.Interface{Index: a.Index, MTU: mtu, Name: hostName, HardwareAddr: a.HardwareAddr, Flags: a.Flags | net.FlagUp}
	}
	if err == nil {
		err = podNS.Do(func(ns.NetNS) error {
			pod, err := configurePodSide(ifName, addr, v.HostIf.HardwareAddr)
			if err != nil {
				return err
			}
			a := pod.Attrs()
			v.PodIf = net.Interface{Index: a.Index, MTU: a.MTU, Name: ifName, HardwareAddr: a.HardwareAddr, Flags: a.Flags | net.FlagUp}
			return nil
		})
	}
	if err == nil {
		err = configureHostSide(v, up)
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
	return v, nil
}

// createVeth creates the pair from the host netns with the peer born in the pod's
// (no link ever moves between namespaces: a move waits for grace periods under
// the kernel's rtnl lock) and returns the host end. hostIndex 0: the kernel picks.
func createVeth(podNS ns.NetNS, hostName, ifName string, mtu, hostIndex int) (netlink.Link, error) {
	attrs := netlink.NewLinkAttrs()
	attrs.Name, attrs.MTU, attrs.Index = hostName, mtu, hostIndex
	veth := netlink.NewVeth(attrs)
	veth.PeerName, veth.PeerMTU, veth.PeerNamespace = ifName, uint32(mtu), netlink.NsFd(int(podNS.Fd()))
	if err := netlink.LinkAdd(veth); err != nil {
		return nil, fmt.Errorf("create veth %s (pod) <-> %s (host, index %d): %w", ifName, hostName, hostIndex, err)
	}
	host, err := netlinksafe.LinkByName(hostName)
	if err != nil {
		return nil, fmt.Errorf("look up host veth %s: %w", hostName, err)
	}
	return host, nil
}

// configurePodSide configures the pod's side (in its netns) and returns its link.
func configurePodSide(ifName string, addr netip.Addr, hostMAC net.HardwareAddr) (netlink.Link, error) {
	if err := loopbackUp(); err != nil {
		return nil, err
	}
	link, err := netlinksafe.LinkByName(ifName)
	if err != nil {
		return nil, fmt.Errorf("look up pod interface %s: %w", ifName, err)
	}
	if err := disableIPv6(ifName); err != nil {
		return nil, err
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("set pod interface %s up: %w", ifName, err)
	}
	if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: HostNet(addr)}); err != nil {
		return nil, fmt.Errorf("add %s/32 to pod interface %s: %w", addr, ifName, err)
	}
	gw := HostNet(GatewayIP)
	if err := netlink.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Dst: gw, Scope: netlink.SCOPE_LINK}); err != nil {
		return nil, fmt.Errorf("add route %s dev %s in the pod: %w", gw, ifName, err)
	}
	if err := netlink.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Gw: gw.IP}); err != nil {
		return nil, fmt.Errorf("add default route via %s in the pod: %w", GatewayIP, err)
	}
	// Permanent: the pod never has to ARP for its gateway, and nothing on the
	// host has to answer for an address the host does not hold.
	if err := netlink.NeighSet(&netlink.Neigh{
		LinkIndex: link.Attrs().Index, Family: unix.AF_INET, State: netlink.NUD_PERMANENT,
		IP: gw.IP, HardwareAddr: hostMAC,
	}); err != nil {
		return nil, fmt.Errorf("add neighbour %s -> %s in the pod: %w", GatewayIP, hostMAC, err)
	}
	return link, nil
}

// loopbackUp brings up the pod's lo, as CNI's loopback plugin would: done here
// it costs one netlink call in a netns already entered, not a process start.
// The kernel gives lo its 127.0.0.1/8 (and ::1) when it comes up.
func loopbackUp() error {
	lo, err := netlinksafe.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("look up the pod's lo: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("set the pod's lo up: %w", err)
	}
	return nil
}

func configureHostSide(v *Veth, up *Uplink) error {
	link, err := netlinksafe.LinkByName(v.HostVeth)
	if err != nil {
		return fmt.Errorf("look up host veth %s: %w", v.HostVeth, err)
	}
	// Answers the pod's ARP for 169.254.1.1 should its permanent entry be flushed:
	// at once, as on the uplink (the kernel otherwise answers a broadcast request
	// after a random delay of up to 0.8 s, from a timer).
	if err := writeSysctl("net/ipv4/conf/"+v.HostVeth+"/proxy_arp", "1"); err != nil {
		return err
	}
	if err := writeSysctl("net/ipv4/neigh/"+v.HostVeth+"/proxy_delay", "0"); err != nil {
		return err
	}
	if err := netlink.RouteReplace(&netlink.Route{LinkIndex: link.Attrs().Index, Dst: HostNet(v.IP), Scope: netlink.SCOPE_LINK}); err != nil {
		return fmt.Errorf("add host route %s/32 dev %s: %w", v.IP, v.HostVeth, err)
	}
	if err := EnsureHostForwarding(up.Link.Attrs().Name); err != nil {
		return err
	}
	if err := netlink.NeighSet(proxyNeigh(up.Link, v.IP)); err != nil {
		return fmt.Errorf("add proxy neighbour %s on uplink %s: %w", v.IP, up.Link.Attrs().Name, err)
	}
	return nil
}

// EnsureHostForwarding turns on what the flat network needs on the node:
// IPv4 forwarding (the node routes between pods and the uplink) and no
// proxy-ARP delay on the uplink (the kernel otherwise delays answers to
// broadcast ARP requests for proxied addresses by up to 0.8 s).
func EnsureHostForwarding(uplink string) error {
	if err := ip.EnableIP4Forward(); err != nil {
		return fmt.Errorf("set sysctl net.ipv4.ip_forward=1: %w", err)
	}
	return ensureSysctl("net/ipv4/neigh/"+uplink+"/proxy_delay", "0")
}

// writeSysctl writes a value under /proc/sys of the current netns.
func writeSysctl(name, value string) error {
	if _, err := sysctl.Sysctl(name, value); err != nil {
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
	if cur, err := sysctl.Sysctl(name); err == nil && strings.TrimSpace(cur) == value {
		return nil
	}
	return writeSysctl(name, value)
}
