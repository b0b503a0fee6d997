package podnet

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Announce broadcasts one gratuitous ARP on uplink: addr is at the uplink's MAC.
// Other hosts on the segment that already hold a neighbour entry for addr take
// the MAC from it (the kernel updates existing entries on a gratuitous ARP, it
// does not create new ones). It matters when a node comes back with another MAC
// (a restarted kind node gets a new one from Docker): until then the others keep
// sending its pods' packets to the old MAC, and a new pod on a reused address is
// unreachable for the seconds their neighbour entries take to fail and re-resolve.
func Announce(uplink netlink.Link, addr netip.Addr) error {
	a, err := NewAnnouncer(uplink)
	if err != nil {
		return err
	}
	defer a.Close()
	return a.Announce(addr)
}

// Announcer sends announcements (see Announce) on one uplink from one packet
// socket, kept open: closing a packet socket waits for an RCU grace period
// (packet_release: synchronize_net), ~12 ms here, which an ADD announcing from a
// socket of its own paid every time. The agent keeps one; it is not for
// concurrent use.
type Announcer struct {
	fd   int
	link netlink.Link
}

// NewAnnouncer opens the socket. It sends only (protocol 0: no frame is
// delivered to it).
func NewAnnouncer(uplink netlink.Link) (*Announcer, error) {
	if len(uplink.Attrs().HardwareAddr) != 6 {
		return nil, fmt.Errorf("announce on %s: want an Ethernet uplink", uplink.Attrs().Name)
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("announce on %s: packet socket: %w", uplink.Attrs().Name, err)
	}
	return &Announcer{fd: fd, link: uplink}, nil
}

// Announce sends addr's announcement.
func (a *Announcer) Announce(addr netip.Addr) error {
	if !addr.Is4() {
		return fmt.Errorf("announce %s on %s: want an IPv4 address", addr, a.link.Attrs().Name)
	}
	to := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ARP), Ifindex: a.link.Attrs().Index, Halen: 6}
	copy(to.Addr[:], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	if err := unix.Sendto(a.fd, garp(a.link.Attrs().HardwareAddr, addr), 0, to); err != nil {
		return fmt.Errorf("announce %s on %s: send: %w", addr, a.link.Attrs().Name, err)
	}
	return nil
}

// Close closes the socket.
func (a *Announcer) Close() error { return unix.Close(a.fd) }

// garp is an Ethernet frame holding an ARP request whose sender and target are
// both addr (RFC 5227's announcement), from mac to broadcast.
func garp(mac net.HardwareAddr, addr netip.Addr) []byte {
	f := make([]byte, 0, 42)
	f = append(f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff)
	f = append(f, mac...)
	f = binary.BigEndian.AppendUint16(f, unix.ETH_P_ARP)
	f = binary.BigEndian.AppendUint16(f, 1)             // hardware: Ethernet
	f = binary.BigEndian.AppendUint16(f, unix.ETH_P_IP) // protocol: IPv4
	f = append(f, 6, 4)
	f = binary.BigEndian.AppendUint16(f, 1) // request
	a := addr.As4()
	f = append(f, mac...)
	f = append(f, a[:]...)
	f = append(f, 0, 0, 0, 0, 0, 0)
	return append(f, a[:]...)
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// AnnounceNode announces addrs (the node's own) and every pod address the node
// answers for on uplink (its proxy neighbours): what a node does when it starts,
// since it may have come back with another MAC.
func AnnounceNode(uplink string, addrs ...netip.Addr) error {
	link, err := netlink.LinkByName(uplink)
	if err != nil {
		return fmt.Errorf("announce on uplink %s: %w", uplink, err)
	}
	proxies, err := netlink.NeighProxyList(link.Attrs().Index, unix.AF_INET)
	if err != nil {
		return fmt.Errorf("announce on uplink %s: list proxy neighbours: %w", uplink, err)
	}
	for _, n := range proxies {
		if a, ok := netip.AddrFromSlice(n.IP); ok {
			addrs = append(addrs, a.Unmap())
		}
	}
	an, err := NewAnnouncer(link)
	if err != nil {
		return err
	}
	defer an.Close()
	for _, a := range addrs {
		if err := an.Announce(a); err != nil {
			return err
		}
	}
	return nil
}
