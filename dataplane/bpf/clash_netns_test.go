package bpf

import (
	"context"
	"net"
	"net/netip"
	"syscall"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"
)

// dialWith opens a TCP connection from the pod to to, its socket set up by control
// before it connects.
func (p *testPod) dialWith(to netip.AddrPort, local *net.TCPAddr, control func(fd int) error) (net.Conn, error) {
	var c net.Conn
	err := p.netns.Do(func(ns.NetNS) error {
		d := net.Dialer{Timeout: dialTimeout, LocalAddr: local, Control: func(_, _ string, rc syscall.RawConn) error {
			var err error
			if cerr := rc.Control(func(fd uintptr) { err = control(int(fd)) }); cerr != nil {
				return cerr
			}
			return err
		}}
		var err error
		c, err = d.Dial("tcp4", to.String())
		return err
	})
	return c, err
}

// dialFromPort opens a TCP connection from port of the pod's address, which other
// connections of the pod to other destinations may use too (SO_REUSEADDR).
func (p *testPod) dialFromPort(port int, to netip.AddrPort) (net.Conn, error) {
	return p.dialWith(to, &net.TCPAddr{IP: p.ip.AsSlice(), Port: port}, func(fd int) error {
		return unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	})
}

// TestNetnsDirectConnectionSparesServiceConnection: a pod holds a connection to a
// Service whose backend is a pod of the node, and opens one to that backend directly
// from the same source port (a port reused for another destination, as the kernel
// does). At the backend both are the same tuple: delivered directly, past the host's
// conntrack, the new one's SYN met the Service connection's socket, whose ACK the
// client answered with a reset that killed the Service connection. It must go through
// the host instead, whose conntrack gives it another source port: both connections
// work, and nothing is sent twice.
func TestNetnsDirectConnectionSparesServiceConnection(t *testing.T) {
	n, server, client, _ := newServiceNode(t)
	vip := netip.MustParseAddr("10.96.0.10")
	n.dnatTCP(vip, 81, netip.AddrPortFrom(server.ip, 80).String())
	must(t, n.d.UpsertService(context.Background(), vip))
	before := client.retransmits(t) + server.retransmits(t)

	const port = 20001
	svc, err := client.dialFromPort(port, netip.AddrPortFrom(vip, 81))
	must(t, err)
	defer svc.Close()
	wantWorks(t, "the Service connection", echo(svc, "one"))
	direct, err := client.dialFromPort(port, netip.AddrPortFrom(server.ip, 80))
	must(t, err)
	defer direct.Close()
	wantWorks(t, "the direct connection from the Service connection's source port", echo(direct, "two"))
	wantWorks(t, "the Service connection after the direct one opened", echo(svc, "three"))
	if r := client.retransmits(t) + server.retransmits(t) - before; r != 0 {
		t.Errorf("%d TCP segments retransmitted: a packet was lost", r)
	}
}
