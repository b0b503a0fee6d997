package bpf

import (
	"net"
	"os"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// sendFrames writes raw frames out of the pod's eth0 (AF_PACKET), as a process in
// the pod with CAP_NET_RAW can.
func (p *testPod) sendFrames(t *testing.T, frames ...[]byte) {
	t.Helper()
	must(t, p.netns.Do(func(ns.NetNS) error {
		eth, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		to := &unix.SockaddrLinklayer{Ifindex: eth.Attrs().Index, Halen: 6}
		for _, f := range frames {
			if err := unix.Sendto(fd, f, 0, to); err != nil {
				return err
			}
		}
		return nil
	}))
}

// udpReceiver counts datagrams reaching the pod on port.
func (p *testPod) udpReceiver(t *testing.T, port int) <-chan struct{} {
	got := make(chan struct{}, 16)
	var pc net.PacketConn
	must(t, p.netns.Do(func(ns.NetNS) error {
		var err error
		pc, err = net.ListenPacket("udp4", net.JoinHostPort(p.ip.String(), itoa(port)))
		return err
	}))
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
			got <- struct{}{}
		}
	}()
	return got
}

// TestNetnsPodRawFrames: a pod writing raw frames (AF_PACKET) gets nothing but IPv4
// and ARP about itself past its veth. On main these passed untouched as "not IPv4":
// a QinQ frame with priority tags (VID 0) reached another pod as plain IPv4 past the
// sender's egress policy, and ARP could claim any address.
func TestNetnsPodRawFrames(t *testing.T) {
	n := newTestNode(t)
	server, client := n.addServerClient()
	server.serveTCP(t, 80)
	received := server.udpReceiver(t, 9999)
	// The client kernel's own IPv6 chatter (DAD, router solicitations) would be
	// counted with the frames under test.
	must(t, client.netns.Do(func(ns.NetNS) error {
		return os.WriteFile("/proc/sys/net/ipv6/conf/eth0/disable_ipv6", []byte("1"), 0o644)
	}))

	// A pod still resolves its gateway by ARP when its permanent entry is gone: the
	// host veth answers by proxy ARP for addresses the node routes elsewhere (on a
	// node, by its default route; here a route on lo).
	must(t, n.node.Do(func(ns.NetNS) error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.RouteAdd(&netlink.Route{LinkIndex: lo.Attrs().Index, Dst: &net.IPNet{IP: gateway, Mask: net.CIDRMask(32, 32)}})
	}))
	must(t, client.netns.Do(func(ns.NetNS) error {
		eth, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		return netlink.NeighDel(&netlink.Neigh{LinkIndex: eth.Attrs().Index, IP: gateway, Family: netlink.FAMILY_V4})
	}))
	before := countsOf(t, n.d, client.ifindex, dirEgress)
	wantWorks(t, "TCP client -> server after ARP for the gateway", client.tcpWorks(server.ip, 80))
	if after := countsOf(t, n.d, client.ifindex, dirEgress); after[ForwardARP] <= before[ForwardARP] {
		t.Errorf("client ARP counters %v -> %v: want its ARP request for the gateway passed", before, after)
	}

	// From here the client may send nothing (egress default deny).
	n.cnp("client-quiet", `
  endpointSelector: {matchLabels: {app: client}}
  egress: [{}]
`)
	udp := ipv4Packet(client.ip, server.ip, 40000, 9999, []byte("tagged"))
	other := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x99}
	for _, c := range []struct {
		what  string
		frame []byte
		want  Code
	}{
		{"ARP reply claiming the server's address", arpFrame(2, client.mac, client.mac, server.ip, gateway4), DropInvalidSource},
		{"ARP reply with another MAC", arpFrame(2, other, other, client.ip, gateway4), DropInvalidSrcMAC},
		{"IPv6", ipv6Frame(client.mac, client.hostMAC), DropUnknownL3},
		{"802.1Q-tagged IPv4 (VID 0)", taggedFrame(client.mac, client.hostMAC, []uint16{0x8100}, 0x0800, udp), DropUnsupportedL2},
		{"QinQ-tagged IPv4 (VID 0, 0)", taggedFrame(client.mac, client.hostMAC, []uint16{0x88a8, 0x8100}, 0x0800, udp), DropUnsupportedL2},
		{"unknown ethertype", pad(ethHeader(client.hostMAC, client.mac, 0x88b5)), DropUnknownL3},
	} {
		before := countsOf(t, n.d, client.ifindex, dirEgress)
		client.sendFrames(t, c.frame)
		var after map[Code]uint64
		for deadline := time.Now().Add(dialTimeout); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if after = countsOf(t, n.d, client.ifindex, dirEgress); after[c.want] > before[c.want] {
				break
			}
		}
		if after[c.want] != before[c.want]+1 {
			t.Errorf("%s: client egress counters %v -> %v; want one more %q", c.what, before, after, c.want)
		}
	}
	select {
	case <-received:
		t.Errorf("a tagged datagram reached the server past the client's egress default deny")
	case <-time.After(blockTimeout):
	}
}
