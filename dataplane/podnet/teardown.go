package podnet

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Teardown removes an attachment's host side: the host veth (the kernel
// removes its peer in the pod and the /32 route with it) and the proxy
// neighbour on the uplink. Everything missing is fine: DEL runs again after
// partial failures and after the netns is gone.
func Teardown(containerID, ifName string, addr netip.Addr, uplink string) error {
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

// RemoveOrphanVeths deletes flatnet host veths whose names are not in keep
// (e.g. left by a plugin killed between creating the veth and recording the
// address, or whose allocation was released elsewhere).
func RemoveOrphanVeths(keep map[string]bool) error {
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

// deleteLink deletes the named link; one already gone (or going: DEL and GC
// may race on it) is fine.
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
