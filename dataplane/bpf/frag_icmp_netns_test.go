package bpf

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// serveUDPLarge echoes datagrams of any size on port.
func (p *testPod) serveUDPLarge(t *testing.T, port int) { p.serveUDPEcho(t, port, 65536) }

// TestNetnsLargeUDPThroughPortRule: a UDP datagram bigger than the MTU (a large DNS
// answer) crosses a port rule whole, both ways; on a denied port it stays dropped.
func TestNetnsLargeUDPThroughPortRule(t *testing.T) {
	n := newTestNode(t)
	server, client := n.addServerClient()
	server.serveUDPLarge(t, 5353)
	server.serveUDPLarge(t, 5354)
	n.cnp("dns", `
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "5353", protocol: UDP}]}]
`)
	wantWorks(t, "small datagram to the allowed port", client.udpExchange(server.ip, 5353, 100, dialTimeout))
	wantWorks(t, "4000-byte datagram (3 fragments) to the allowed port", client.udpExchange(server.ip, 5353, 4000, dialTimeout))
	wantBlocked(t, "4000-byte datagram to a denied port", client.udpExchange(server.ip, 5354, 4000, blockTimeout))
	wantBlocked(t, "small datagram to a denied port", client.udpExchange(server.ip, 5354, 100, blockTimeout))
}

// sniffTCP returns the first TCP segment with a payload from src seen on the pod's
// eth0 (its IP header onwards).
func (p *testPod) sniffTCP(t *testing.T, src netip.Addr, start func()) []byte {
	t.Helper()
	var seg []byte
	must(t, p.netns.Do(func(ns.NetNS) error {
		eth, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_IP)))
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_IP), Ifindex: eth.Attrs().Index}); err != nil {
			return err
		}
		tv := unix.NsecToTimeval(dialTimeout.Nanoseconds())
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return err
		}
		go start()
		buf := make([]byte, 2048)
		s := src.As4()
		for {
			nb, _, err := unix.Recvfrom(fd, buf, 0)
			if err != nil {
				return fmt.Errorf("sniffing for a segment from %s: %w", src, err)
			}
			ip := buf[:nb]
			if nb < 40 || ip[9] != 6 || !bytes.Equal(ip[12:16], s[:]) {
				continue
			}
			ihl := int(ip[0]&0xf) * 4
			doff := int(ip[ihl+12]>>4) * 4
			if int(binary.BigEndian.Uint16(ip[2:])) > ihl+doff {
				seg = append([]byte(nil), ip...)
				return nil
			}
		}
	}))
	return seg
}

// TestNetnsFragNeededReachesSender: path MTU discovery works across policy. The
// server quotes the client's next segment in a "fragmentation needed" (MTU 1200), as
// a router would; the client's kernel lowers its path MTU to the server. Both pods
// are under default deny for everything but the connection itself.
func TestNetnsFragNeededReachesSender(t *testing.T) {
	n := newTestNode(t)
	server, client := n.addServerClient()
	server.serveTCP(t, 80)
	n.cnp("server", `
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
  egress: [{}]
`)
	n.cnp("client", `
  endpointSelector: {matchLabels: {app: client}}
  ingress: [{}]
  egress:
  - toEndpoints: [{matchLabels: {app: server}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
`)
	c, err := client.dial(server.ip, 80)
	must(t, err)
	defer c.Close()
	var echoErr error
	seg := server.sniffTCP(t, client.ip, func() { echoErr = echo(c, "hello") })
	time.Sleep(100 * time.Millisecond) // the echo's ACK: all the client sent is acknowledged
	must(t, echoErr)
	// The quoted segment: the client's next sequence number (what it sent, acknowledged).
	ihl := int(seg[0]&0xf) * 4
	doff := int(seg[ihl+12]>>4) * 4
	payload := int(binary.BigEndian.Uint16(seg[2:])) - ihl - doff
	quoted := append([]byte(nil), seg[:ihl+8]...)
	binary.BigEndian.PutUint32(quoted[ihl+4:], binary.BigEndian.Uint32(seg[ihl+4:])+uint32(payload))
	msg := make([]byte, 8, 8+len(quoted))
	msg[0], msg[1] = 3, 4 // destination unreachable, fragmentation needed
	binary.BigEndian.PutUint16(msg[6:], 1200)
	msg = append(msg, quoted...)
	binary.BigEndian.PutUint16(msg[2:], ipChecksum(msg))
	must(t, server.netns.Do(func(ns.NetNS) error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return unix.Sendto(fd, msg, 0, &unix.SockaddrInet4{Addr: client.ip.As4()})
	}))
	mtu := 0
	for deadline := time.Now().Add(dialTimeout); time.Now().Before(deadline) && mtu != 1200; time.Sleep(20 * time.Millisecond) {
		must(t, client.netns.Do(func(ns.NetNS) error {
			routes, err := netlink.RouteGet(net.IP(server.ip.AsSlice()))
			if err != nil {
				return err
			}
			if len(routes) == 0 {
				return errors.New("no route to the server")
			}
			mtu = routes[0].MTU
			return nil
		}))
	}
	if mtu != 1200 {
		t.Errorf("client's path MTU to the server %d after the server's fragmentation-needed, want 1200", mtu)
	}
}
