// Package netnstest builds a private two-namespace network for probe tests: a
// client namespace and a server namespace joined by two veth pairs. One pair
// carries traffic normally; on the other a tc program of our own (tcx ingress, a
// four-instruction BPF filter: this kernel has no cls_matchall or act_gact) drops
// every IPv4 packet while ARP still passes, so probes there end in a genuine
// TIMEOUT. No traffic ever leaves the namespaces the test created.
package netnstest

import (
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/flatnet/flatnet/internal/testenv"
)

// Addresses inside the private namespaces (documentation ranges, never routed
// outside them).
var (
	ClientIP = netip.MustParseAddr("192.0.2.1")
	// ServerIP answers: open ports connect, closed ones refuse.
	ServerIP     = netip.MustParseAddr("192.0.2.2")
	DropClientIP = netip.MustParseAddr("198.51.100.1")
	// DropIP sits behind the drop filter while it is on.
	DropIP = netip.MustParseAddr("198.51.100.2")
)

// Net is the client/server pair of namespaces.
type Net struct {
	Client, Server ns.NetNS
	dropLink       int       // ifindex of the server end of the dropping pair
	drop           link.Link // the attached drop program, nil when off
}

// New builds the namespaces with the drop filter on, and removes them when t ends.
func New(t testing.TB) *Net {
	t.Helper()
	testenv.RequireRoot(t)
	n := &Net{}
	var err error
	for _, p := range []*ns.NetNS{&n.Client, &n.Server} {
		if *p, err = testutils.NewNS(); err != nil {
			t.Fatalf("creating a test network namespace: %v", err)
		}
		nsp := *p
		t.Cleanup(func() {
			nsp.Close()
			testutils.UnmountNS(nsp)
		})
	}
	if err := n.build(); err != nil {
		t.Fatalf("building the test network: %v", err)
	}
	t.Cleanup(func() { n.SetDrop(false) })
	if err := n.SetDrop(true); err != nil {
		t.Fatalf("installing the drop filter: %v", err)
	}
	return n
}

func (n *Net) build() error {
	for _, pair := range []struct {
		c, s         string
		cAddr, sAddr netip.Addr
		drop         bool
	}{
		{"c0", "s0", ClientIP, ServerIP, false},
		{"c1", "s1", DropClientIP, DropIP, true},
	} {
		err := n.Client.Do(func(ns.NetNS) error {
			veth := &netlink.Veth{
				LinkAttrs:     netlink.LinkAttrs{Name: pair.c},
				PeerName:      pair.s,
				PeerNamespace: netlink.NsFd(int(n.Server.Fd())),
			}
			if err := netlink.LinkAdd(veth); err != nil {
				return fmt.Errorf("adding veth %s/%s: %w", pair.c, pair.s, err)
			}
			return up(pair.c, pair.cAddr)
		})
		if err != nil {
			return err
		}
		err = n.Server.Do(func(ns.NetNS) error {
			if err := up(pair.s, pair.sAddr); err != nil {
				return err
			}
			if pair.drop {
				l, err := netlink.LinkByName(pair.s)
				if err != nil {
					return err
				}
				n.dropLink = l.Attrs().Index
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	for _, nsp := range []ns.NetNS{n.Client, n.Server} {
		if err := nsp.Do(func(ns.NetNS) error { return up("lo", netip.Addr{}) }); err != nil {
			return err
		}
	}
	return nil
}

func up(name string, addr netip.Addr) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("finding %s: %w", name, err)
	}
	if addr.IsValid() {
		a := &netlink.Addr{IPNet: &net.IPNet{IP: addr.AsSlice(), Mask: net.CIDRMask(24, 32)}}
		if err := netlink.AddrAdd(l, a); err != nil {
			return fmt.Errorf("adding %s to %s: %w", addr, name, err)
		}
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("setting %s up: %w", name, err)
	}
	return nil
}

// SetDrop attaches (on) or detaches the tc program that drops every IPv4 packet
// arriving at DropIP's interface.
func (n *Net) SetDrop(on bool) error {
	if on == (n.drop != nil) {
		return nil
	}
	if !on {
		err := n.drop.Close()
		n.drop = nil
		if err != nil {
			return fmt.Errorf("detaching the drop program: %w", err)
		}
		return nil
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:    "netnstest_drop",
		Type:    ebpf.SchedCLS,
		License: "Apache-2.0",
		Instructions: asm.Instructions{
			// r2 = skb->protocol (network byte order in a u32)
			asm.LoadMem(asm.R2, asm.R1, 16, asm.Word),
			asm.Mov.Imm(asm.R0, 0), // TCX_PASS
			asm.JNE.Imm(asm.R2, int32(htons(unix.ETH_P_IP)), "out"),
			asm.Mov.Imm(asm.R0, 2), // TCX_DROP
			asm.Return().WithSymbol("out"),
		},
	})
	if err != nil {
		return fmt.Errorf("loading the drop program: %w", err)
	}
	defer prog.Close() // the link holds its own reference
	err = n.Server.Do(func(ns.NetNS) error {
		n.drop, err = link.AttachTCX(link.TCXOptions{Interface: n.dropLink, Program: prog, Attach: ebpf.AttachTCXIngress})
		return err
	})
	if err != nil {
		return fmt.Errorf("attaching the drop program to tcx ingress: %w", err)
	}
	return nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// InClient and InServer run fn on a thread inside that namespace. Sockets fn
// creates stay there; goroutines fn starts do not.
func (n *Net) InClient(t testing.TB, fn func()) { t.Helper(); do(t, n.Client, fn) }
func (n *Net) InServer(t testing.TB, fn func()) { t.Helper(); do(t, n.Server, fn) }

func do(t testing.TB, nsp ns.NetNS, fn func()) {
	t.Helper()
	if err := nsp.Do(func(ns.NetNS) error { fn(); return nil }); err != nil {
		t.Fatalf("entering %s: %v", nsp.Path(), err)
	}
}

// Listen opens a listener in the server namespace; it closes when t ends.
func (n *Net) Listen(t testing.TB, network, addr string) net.Listener {
	t.Helper()
	var l net.Listener
	var err error
	n.InServer(t, func() { l, err = net.Listen(network, addr) })
	if err != nil {
		t.Fatalf("listening on %s %s in the server namespace: %v", network, addr, err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// ListenPacket opens a packet socket in the server namespace; it closes when t ends.
func (n *Net) ListenPacket(t testing.TB, network, addr string) net.PacketConn {
	t.Helper()
	var c net.PacketConn
	var err error
	n.InServer(t, func() { c, err = net.ListenPacket(network, addr) })
	if err != nil {
		t.Fatalf("listening on %s %s in the server namespace: %v", network, addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// Start starts cmd inside the client namespace: a forked child inherits the
// namespace of the thread that forks it.
func (n *Net) Start(t testing.TB, cmd *exec.Cmd) {
	t.Helper()
	var err error
	n.InClient(t, func() { err = cmd.Start() })
	if err != nil {
		t.Fatalf("starting %s in the client namespace: %v", cmd.Path, err)
	}
}

// StartInServer starts cmd inside the server namespace.
func (n *Net) StartInServer(t testing.TB, cmd *exec.Cmd) {
	t.Helper()
	var err error
	n.InServer(t, func() { err = cmd.Start() })
	if err != nil {
		t.Fatalf("starting %s in the server namespace: %v", cmd.Path, err)
	}
}
