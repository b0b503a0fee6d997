package bpf

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
	"sigs.k8s.io/yaml"

	"github.com/flatnet/flatnet/dataplane/compile"
	"github.com/flatnet/flatnet/dataplane/identity"
	"github.com/flatnet/flatnet/dataplane/policy"
	"github.com/flatnet/flatnet/internal/testenv"
)

// A "node" netns with flatnet's node-subnet wiring (host /32 route + proxy ARP on the
// host veth; in the pod, 169.254.1.1 as gateway) and one netns per "pod". The
// datapath's programs sit on the host-side veths via tcx, exactly as on a node.
type testNode struct {
	t      testing.TB
	node   ns.NetNS
	nodeIP netip.Addr
	pods   map[string]*testPod
	d      *Datapath
	pinDir string
	c      *compile.Compiler
	// attach attaches an endpoint as the agent does (nil: d.AttachEndpoint).
	attach func(Endpoint, *compile.EndpointPolicy) error
}

type testPod struct {
	namespace, name string
	labels          map[string]string
	netns           ns.NetNS
	ip              netip.Addr
	hostIf          string
	ifindex         int
	mac             net.HardwareAddr // eth0's, as the CNI plugin reports it
}

func newTestNode(t testing.TB) *testNode { return newTestNodeWith(t, Options{}) }

// newTestNodeWith is newTestNode with the datapath loaded with opts.
func newTestNodeWith(t testing.TB, opts Options) *testNode {
	return newTestNodeFrom(t, func(pinDir string) (*Datapath, error) {
		return LoadWith(context.Background(), pinDir, opts)
	})
}

// newTestNodeFrom is newTestNode with the datapath loaded by load.
func newTestNodeFrom(t testing.TB, load func(pinDir string) (*Datapath, error)) *testNode {
	testenv.RequireRoot(t)
	n := &testNode{t: t, pods: map[string]*testPod{}, nodeIP: netip.MustParseAddr("10.224.0.2"),
		c: compile.New(identity.NewAllocator())}
	var err error
	n.node, err = testutils.NewNS()
	must(t, err)
	t.Cleanup(func() { n.node.Close(); _ = testutils.UnmountNS(n.node) })
	must(t, n.node.Do(func(ns.NetNS) error {
		for _, f := range []string{"/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv4/conf/all/forwarding"} {
			if err := os.WriteFile(f, []byte("1"), 0o644); err != nil {
				return err
			}
		}
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		// The node's own address (no dummy driver in this kernel: on lo).
		return netlink.AddrAdd(lo, &netlink.Addr{IPNet: prefixNet(netip.PrefixFrom(n.nodeIP, 32))})
	}))
	n.pinDir = filepath.Join(mountBPFFS(t), "flatnet")
	n.d, err = load(n.pinDir)
	must(t, err)
	t.Cleanup(func() { n.d.Close() })
	must(t, n.c.UpsertNamespace(compile.Namespace{Name: "default"}))
	must(t, n.c.UpsertNamespace(compile.Namespace{Name: "other"}))
	n.c.UpsertNode("self", []netip.Addr{n.nodeIP}, true)
	return n
}

func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

var gateway = net.IPv4(169, 254, 1, 1)

// addPod wires a pod netns and attaches the datapath as the agent does on CNI ADD:
// the pod's policy is computed and written before the programs are attached.
func (n *testNode) addPod(namespace, name, ip string, labels map[string]string) *testPod {
	t := n.t
	p := &testPod{namespace: namespace, name: name, labels: labels, ip: netip.MustParseAddr(ip),
		hostIf: fmt.Sprintf("fn%d", len(n.pods))}
	var err error
	p.netns, err = testutils.NewNS()
	must(t, err)
	t.Cleanup(func() { p.netns.Close(); _ = testutils.UnmountNS(p.netns) })
	var hostMAC net.HardwareAddr
	must(t, n.node.Do(func(ns.NetNS) error {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: p.hostIf}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(p.netns.Fd()))}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("veth: %w", err)
		}
		l, err := netlink.LinkByName(p.hostIf)
		if err != nil {
			return err
		}
		p.ifindex = l.Attrs().Index
		hostMAC = l.Attrs().HardwareAddr
		if err := os.WriteFile("/proc/sys/net/ipv4/conf/"+p.hostIf+"/proxy_arp", []byte("1"), 0o644); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
		return netlink.RouteAdd(&netlink.Route{LinkIndex: p.ifindex, Dst: prefixNet(netip.PrefixFrom(p.ip, 32)), Scope: netlink.SCOPE_LINK})
	}))
	must(t, p.netns.Do(func(ns.NetNS) error {
		lo, _ := netlink.LinkByName("lo")
		_ = netlink.LinkSetUp(lo)
		eth, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		if err := netlink.AddrAdd(eth, &netlink.Addr{IPNet: prefixNet(netip.PrefixFrom(p.ip, 32))}); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(eth); err != nil {
			return err
		}
		p.mac = eth.Attrs().HardwareAddr
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Dst: &net.IPNet{IP: gateway, Mask: net.CIDRMask(32, 32)}, Scope: netlink.SCOPE_LINK}); err != nil {
			return err
		}
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: gateway}); err != nil {
			return err
		}
		return netlink.NeighAdd(&netlink.Neigh{LinkIndex: eth.Attrs().Index, IP: gateway, HardwareAddr: hostMAC,
			State: netlink.NUD_PERMANENT, Family: netlink.FAMILY_V4})
	}))
	n.pods[namespace+"/"+name] = p
	must(t, n.c.UpsertPod(compile.Pod{Namespace: namespace, Name: name, Labels: labels, IP: p.ip, Local: true}))
	n.flush()
	id, _ := n.c.IdentityOf(namespace, name)
	must(t, n.node.Do(func(ns.NetNS) error {
		ep, pol := Endpoint{IfIndex: p.ifindex, IP: p.ip, Identity: id, MAC: p.mac}, n.c.EndpointPolicy(namespace, name)
		if n.attach != nil {
			return n.attach(ep, pol)
		}
		return n.d.AttachEndpoint(context.Background(), ep, pol)
	}))
	return p
}

func (n *testNode) flush() {
	n.t.Helper()
	up := n.c.Flush()
	must(n.t, n.d.Apply(context.Background(), up, func(ns, name string) (int, bool) {
		p, ok := n.pods[ns+"/"+name]
		if !ok || p.ifindex == 0 {
			return 0, false
		}
		return p.ifindex, true
	}))
}

func (n *testNode) cnp(doc string) {
	n.t.Helper()
	js, err := yaml.YAMLToJSON([]byte(doc))
	must(n.t, err)
	c, err := policy.DecodeCilium(js)
	must(n.t, err)
	pols, err := policy.FromCilium(c)
	must(n.t, err)
	must(n.t, n.c.UpsertPolicy("cnp/"+c.Namespace+"/"+c.Name, pols))
	n.flush()
}

// serveTCP runs an echo server on the node's address.
func (n *testNode) serveTCP(t testing.TB, port int) {
	(&testPod{netns: n.node, ip: n.nodeIP}).serveTCP(t, port)
}

// serveTCP runs an echo server in the pod until the test ends.
func (p *testPod) serveTCP(t testing.TB, port int) {
	p.serve(t, port, func(c net.Conn) {
		r := bufio.NewReader(c)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			if _, err := c.Write([]byte(line)); err != nil {
				return
			}
		}
	})
}

// serve accepts TCP connections on the pod's address until the test ends, each
// handled (then closed) on its own goroutine.
func (p *testPod) serve(t testing.TB, port int, handle func(net.Conn)) {
	var ln net.Listener
	must(t, p.netns.Do(func(ns.NetNS) error {
		var err error
		ln, err = net.Listen("tcp4", netip.AddrPortFrom(p.ip, uint16(port)).String())
		return err
	}))
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
}

// serveUDP echoes datagrams of up to one MTU on port.
func (p *testPod) serveUDP(t *testing.T, port int) { p.serveUDPEcho(t, port, 1500) }

// Connections that must work get a generous timeout (the machine may be loaded);
// connections that must be blocked are given up on sooner.
const (
	dialTimeout  = 3 * time.Second
	blockTimeout = 700 * time.Millisecond
)

// dial opens a TCP connection from the pod.
func (p *testPod) dial(addr netip.Addr, port int) (net.Conn, error) {
	var c net.Conn
	err := p.netns.Do(func(ns.NetNS) error {
		var err error
		d := net.Dialer{Timeout: dialTimeout}
		c, err = d.Dial("tcp4", netip.AddrPortFrom(addr, uint16(port)).String())
		return err
	})
	return c, err
}

// echo checks a round trip on an open connection.
func echo(c net.Conn, msg string) error {
	_ = c.SetDeadline(time.Now().Add(dialTimeout))
	if _, err := c.Write([]byte(msg + "\n")); err != nil {
		return err
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(got) != msg {
		return fmt.Errorf("echo returned %q", got)
	}
	return nil
}

func (p *testPod) tcpWorks(addr netip.Addr, port int) error {
	c, err := p.dial(addr, port)
	if err != nil {
		return err
	}
	defer c.Close()
	return echo(c, "hello")
}

// tcpQuick is tcpWorks with the shorter timeout of checks that expect a block.
func (p *testPod) tcpQuick(addr netip.Addr, port int) error {
	c, err := p.dialTimeout(addr, port, blockTimeout)
	if err != nil {
		return err
	}
	defer c.Close()
	return echo(c, "hello")
}

func (p *testPod) udpQuick(addr netip.Addr, port int) error {
	return p.udpTry(addr, port, blockTimeout)
}

func (p *testPod) udpWorks(addr netip.Addr, port int) error { return p.udpTry(addr, port, dialTimeout) }

func (p *testPod) udpTry(addr netip.Addr, port int, timeout time.Duration) error {
	return p.netns.Do(func(ns.NetNS) error {
		c, err := net.Dial("udp4", netip.AddrPortFrom(addr, uint16(port)).String())
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(timeout))
		if _, err := c.Write([]byte("ping")); err != nil {
			return err
		}
		buf := make([]byte, 16)
		n, err := c.Read(buf)
		if err != nil {
			return err
		}
		if string(buf[:n]) != "ping" {
			return errors.New("bad udp echo")
		}
		return nil
	})
}

func wantWorks(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Errorf("%s: want success, got %v", what, err)
	}
}

func wantBlocked(t *testing.T, what string, err error) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: want it blocked, it went through", what)
	}
}

// iptables runs iptables in the node netns (standing in for kube-proxy).
func (n *testNode) iptables(args ...string) {
	n.t.Helper()
	out, err := exec.Command("nsenter", append([]string{"--net=" + n.node.Path(), "iptables"}, args...)...).CombinedOutput()
	if err != nil {
		n.t.Fatalf("iptables %v: %v: %s", args, err, out)
	}
}

func (p *testPod) dialTimeout(addr netip.Addr, port int, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := p.netns.Do(func(ns.NetNS) error {
		var err error
		d := net.Dialer{Timeout: timeout}
		c, err = d.Dial("tcp4", netip.AddrPortFrom(addr, uint16(port)).String())
		return err
	})
	return c, err
}
