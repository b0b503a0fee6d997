package bpf

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// forwarded counts the packets the node's IP forwarding passed between two pods, in
// either direction, with one counting rule per protocol and direction in FORWARD.
type forwarded struct {
	n *testNode
}

func (n *testNode) countForwarded(a, b *testPod) forwarded {
	for _, proto := range []string{"tcp", "udp"} {
		n.iptables("-A", "FORWARD", "-s", a.ip.String(), "-d", b.ip.String(), "-p", proto)
		n.iptables("-A", "FORWARD", "-s", b.ip.String(), "-d", a.ip.String(), "-p", proto)
	}
	return forwarded{n}
}

func (f forwarded) packets(t *testing.T) int {
	t.Helper()
	out, err := exec.Command("nsenter", "--net="+f.n.node.Path(), "iptables", "-L", "FORWARD", "-v", "-x", "-n").CombinedOutput()
	if err != nil {
		t.Fatalf("iptables -L FORWARD: %v: %s", err, out)
	}
	total := 0
	for _, line := range strings.Split(string(out), "\n")[2:] {
		if fields := strings.Fields(line); len(fields) > 0 {
			v, err := strconv.Atoi(fields[0])
			if err != nil {
				t.Fatalf("iptables -L FORWARD: bad counter line %q", line)
			}
			total += v
		}
	}
	return total
}

// TestNetnsDirectLocalDelivery: connections between two pods of one node skip the
// host stack's forwarding (and netfilter) in both directions, policy still applies
// to them, and host routing (SetHostRouting) brings the stack back.
func TestNetnsDirectLocalDelivery(t *testing.T) {
	n := newTestNode(t)
	ctx := context.Background()
	server, client := n.addServerClient()
	server.serveTCP(t, 80)
	server.serveUDP(t, 53)
	fwd := n.countForwarded(client, server)
	// The host veth's own IPv6 chatter (DAD, MLD, router solicitations) would count
	// as transmitted packets: no IPv6 on it.
	must(t, n.node.Do(func(ns.NetNS) error {
		return os.WriteFile("/proc/sys/net/ipv6/conf/"+server.hostIf+"/disable_ipv6", []byte("1"), 0o644)
	}))

	tx0 := n.txPackets(server)
	wantWorks(t, "TCP client -> server", client.tcpWorks(server.ip, 80))
	wantWorks(t, "UDP client -> server", client.udpWorks(server.ip, 53))
	if got := fwd.packets(t); got != 0 {
		t.Errorf("direct delivery: the host stack forwarded %d packets between the pods, want 0", got)
	}
	// Straight into the pod: its host veth transmitted nothing.
	if tx := n.txPackets(server); tx != tx0 {
		t.Errorf("direct delivery with the pod's MAC known: the server's host veth sent %d packets, want 0", tx-tx0)
	}

	// Without the pod's MAC (a CNI that did not report it): out of the host veth,
	// still skipping the stack.
	id, _ := n.c.IdentityOf("default", "server")
	must(t, n.node.Do(func(ns.NetNS) error {
		return n.d.AttachEndpoint(ctx, Endpoint{IfIndex: server.ifindex, IP: server.ip, Identity: id}, n.c.EndpointPolicy("default", "server"))
	}))
	tx0 = n.txPackets(server)
	wantWorks(t, "TCP client -> server, MAC unknown", client.tcpWorks(server.ip, 80))
	if got := fwd.packets(t); got != 0 {
		t.Errorf("direct delivery, MAC unknown: the host stack forwarded %d packets between the pods, want 0", got)
	}
	if tx := n.txPackets(server); tx == tx0 {
		t.Errorf("direct delivery, MAC unknown: nothing went out of the server's host veth")
	}
	must(t, n.node.Do(func(ns.NetNS) error {
		return n.d.AttachEndpoint(ctx, Endpoint{IfIndex: server.ifindex, IP: server.ip, Identity: id, MAC: server.mac}, n.c.EndpointPolicy("default", "server"))
	}))

	// The receiver's ingress policy still judges what is delivered directly.
	n.cnp("default-deny", seedDefaultDeny)
	wantBlocked(t, "TCP client -> server under default deny", client.tcpQuick(server.ip, 80))
	wantBlocked(t, "UDP client -> server under default deny", client.udpQuick(server.ip, 53))
	n.c.DeletePolicy("cnp/default/default-deny")
	n.flush()

	must(t, n.d.SetHostRouting(ctx, true))
	wantWorks(t, "TCP client -> server with host routing", client.tcpWorks(server.ip, 80))
	if got := fwd.packets(t); got == 0 {
		t.Errorf("host routing: the host stack forwarded nothing between the pods")
	}
	must(t, n.d.SetHostRouting(ctx, false))
}

// txPackets is what the pod's host veth has transmitted (towards the pod).
func (n *testNode) txPackets(p *testPod) uint64 {
	var tx uint64
	must(n.t, n.node.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByIndex(p.ifindex)
		if err != nil {
			return err
		}
		tx = l.Attrs().Statistics.TxPackets
		return nil
	}))
	return tx
}

// TestNetnsDirectDeliveryFrames: a frame delivered straight into a pod carries the
// L2 addresses the host veth would have given it: from the pod's gateway (its host
// veth) to the pod's own MAC.
func TestNetnsDirectDeliveryFrames(t *testing.T) {
	n := newTestNode(t)
	server, client := n.addServerClient()
	var sock int
	must(t, server.netns.Do(func(ns.NetNS) error {
		eth, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		if sock, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_IP))); err != nil {
			return err
		}
		tv := unix.NsecToTimeval(dialTimeout.Nanoseconds())
		if err := unix.SetsockoptTimeval(sock, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return err
		}
		return unix.Bind(sock, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_IP), Ifindex: eth.Attrs().Index})
	}))
	t.Cleanup(func() { unix.Close(sock) })
	must(t, client.netns.Do(func(ns.NetNS) error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return unix.Sendto(fd, []byte("frame"), 0, &unix.SockaddrInet4{Port: 5353, Addr: server.ip.As4()})
	}))
	buf := make([]byte, 2048)
	for {
		nb, _, err := unix.Recvfrom(sock, buf, 0)
		if err != nil {
			t.Fatalf("no frame from the client reached the server: %v", err)
		}
		f := buf[:nb]
		// Ethernet + IPv4 (no options from this sender) + UDP to port 5353.
		if nb < 14+20+8 || f[14+9] != unix.IPPROTO_UDP || binary.BigEndian.Uint16(f[14+20+2:]) != 5353 {
			continue
		}
		if dst, src := net.HardwareAddr(f[0:6]), net.HardwareAddr(f[6:12]); dst.String() != server.mac.String() || src.String() != server.hostMAC.String() {
			t.Errorf("frame %s -> %s, want %s (host veth) -> %s (pod)", src, dst, server.hostMAC, server.mac)
		}
		return
	}
}

// TestNetnsDirectDeliveryDecrementsTTL: a packet delivered directly is forwarded as
// the stack would: one hop less to live, and one that would expire is left to the
// stack (which drops it and answers time exceeded) instead of delivered.
func TestNetnsDirectDeliveryDecrementsTTL(t *testing.T) {
	n := newTestNode(t)
	server, client := n.addServerClient()

	var srv int
	must(t, server.netns.Do(func(ns.NetNS) error {
		var err error
		if srv, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0); err != nil {
			return err
		}
		if err := unix.SetsockoptInt(srv, unix.IPPROTO_IP, unix.IP_RECVTTL, 1); err != nil {
			return err
		}
		return unix.Bind(srv, &unix.SockaddrInet4{Port: 53, Addr: server.ip.As4()})
	}))
	t.Cleanup(func() { unix.Close(srv) })
	// recvTTL reads one datagram and the TTL it arrived with, waiting up to timeout.
	recvTTL := func(timeout time.Duration) (string, int, error) {
		tv := unix.NsecToTimeval(timeout.Nanoseconds())
		if err := unix.SetsockoptTimeval(srv, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return "", 0, err
		}
		buf, oob := make([]byte, 64), make([]byte, 64)
		nb, noob, _, _, err := unix.Recvmsg(srv, buf, oob, 0)
		if err != nil {
			return "", 0, err
		}
		msgs, err := unix.ParseSocketControlMessage(oob[:noob])
		if err != nil {
			return "", 0, err
		}
		for _, m := range msgs {
			if m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_TTL && len(m.Data) >= 4 {
				return string(buf[:nb]), int(m.Data[0]), nil // native int; little endian here
			}
		}
		return "", 0, fmt.Errorf("no TTL in the control message")
	}
	send := func(ttl int, msg string) {
		must(t, client.netns.Do(func(ns.NetNS) error {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return err
			}
			defer unix.Close(fd)
			if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_TTL, ttl); err != nil {
				return err
			}
			return unix.Sendto(fd, []byte(msg), 0, &unix.SockaddrInet4{Port: 53, Addr: server.ip.As4()})
		}))
	}

	send(2, "two")
	msg, ttl, err := recvTTL(dialTimeout)
	if err != nil || msg != "two" || ttl != 1 {
		t.Errorf("datagram sent with TTL 2: got %q with TTL %d (%v), want %q with TTL 1", msg, ttl, err, "two")
	}
	send(1, "one")
	start := time.Now()
	if msg, ttl, err := recvTTL(blockTimeout); err == nil {
		t.Errorf("datagram sent with TTL 1 was delivered (%q, TTL %d); a router drops it", msg, ttl)
	} else if time.Since(start) < blockTimeout/2 {
		t.Errorf("reading after the TTL 1 datagram: %v", err)
	}
}

// TestLoadReplacesRebuiltMapOfOtherLayout: a map the agent rebuilds at startup, pinned
// by a version with another layout, is replaced instead of failing the load.
func TestLoadReplacesRebuiltMapOfOtherLayout(t *testing.T) {
	pinDir := pinForeignMap(t, &ebpf.MapSpec{Name: "fn_local_ips", Type: ebpf.Hash, KeySize: 4, ValueSize: 4, MaxEntries: 4096},
		func(*ebpf.Map) {})
	d, err := Load(context.Background(), pinDir)
	if err != nil {
		t.Fatalf("loading over an fn_local_ips of another layout: %v", err)
	}
	defer d.Close()
	if got, want := d.objs.FnLocalIps.ValueSize(), uint32(16); got != want {
		t.Errorf("fn_local_ips value size %d, want %d", got, want)
	}
}

// TestNetnsServiceAfterDirectOnSameTuple: a Service connection whose DNATed tuple is
// that of an earlier direct one (a UDP source port reused) gets its replies
// un-DNATed: the receiver's entry follows the way the packets now come.
func TestNetnsServiceAfterDirectOnSameTuple(t *testing.T) {
	n := newTestNode(t)
	server, client := n.addServerClient()
	server.serveUDP(t, 53)
	vip := netip.MustParseAddr("10.96.0.10")
	n.iptables("-t", "nat", "-A", "PREROUTING", "-d", vip.String(), "-p", "udp", "--dport", "53", "-j", "DNAT", "--to-destination", server.ip.String()+":53")
	must(t, n.d.UpsertService(context.Background(), vip))
	exchange := func(to netip.Addr) error {
		return client.netns.Do(func(ns.NetNS) error {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return err
			}
			defer unix.Close(fd)
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
				return err
			}
			tv := unix.NsecToTimeval(dialTimeout.Nanoseconds())
			if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
				return err
			}
			if err := unix.Bind(fd, &unix.SockaddrInet4{Port: 40053, Addr: client.ip.As4()}); err != nil {
				return err
			}
			if err := unix.Connect(fd, &unix.SockaddrInet4{Port: 53, Addr: to.As4()}); err != nil {
				return err
			}
			if _, err := unix.Write(fd, []byte("ping")); err != nil {
				return err
			}
			buf := make([]byte, 16)
			nb, err := unix.Read(fd, buf)
			if err != nil {
				return err
			}
			if string(buf[:nb]) != "ping" {
				return fmt.Errorf("bad echo %q", buf[:nb])
			}
			return nil
		})
	}
	wantWorks(t, "UDP from port 40053 to the server directly", exchange(server.ip))
	wantWorks(t, "UDP from port 40053 to the server's Service", exchange(vip))
}
