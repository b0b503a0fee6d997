// Package podnet is one pod's plumbing on a flatnet node, shared by the CNI
// plugin (ADD, DEL, CHECK, GC) and the node agent (host forwarding and the
// gratuitous ARP it sends when it starts, tearing down leaked attachments):
//
//	pod:  lo up, <ifName> ip/32, default via 169.254.1.1, 169.254.1.1 lladdr <host veth MAC> PERMANENT
//	host: fn<hash12> up, proxy_arp=1, ip/32 dev fn<hash12>, proxy neighbour ip on the uplink
//
// It knows nothing of the plugin's configuration, IPAM or the agent: callers
// pass the address and the uplink. As containernetworking's ptp plugin over
// its pkg/ip, the veth itself is made by ip.SetupVethWithName.
package podnet

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
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

// UplinkName picks the uplink the agent hands the plugin: the named interface
// (checked to exist), else the one holding the node's address nodeIP. The
// errors name the agent's --uplink flag, the way to override the choice.
func UplinkName(name string, nodeIP netip.Addr) (string, error) {
	if name != "" {
		if _, err := netlinksafe.LinkByName(name); err != nil {
			return "", fmt.Errorf("uplink %q: %w; pass --uplink with the node's interface on the node subnet", name, err)
		}
		return name, nil
	}
	addrs, err := netlinksafe.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return "", fmt.Errorf("list node addresses: %w", err)
	}
	for _, ad := range addrs {
		if ip, ok := netip.AddrFromSlice(ad.IP.To4()); ok && ip == nodeIP {
			l, err := netlink.LinkByIndex(ad.LinkIndex)
			if err != nil {
				return "", fmt.Errorf("look up the interface of %s: %w", nodeIP, err)
			}
			return l.Attrs().Name, nil
		}
	}
	return "", fmt.Errorf("no interface holds the node's InternalIP %s; is the agent in the host network namespace (hostNetwork: true)? else pass --uplink", nodeIP)
}

// HostNet is addr as a /32, the prefix a pod holds.
func HostNet(addr netip.Addr) *net.IPNet {
	return &net.IPNet{IP: addr.AsSlice(), Mask: net.CIDRMask(32, 32)}
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
