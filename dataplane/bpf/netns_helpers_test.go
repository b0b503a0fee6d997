package bpf

import (
	"bufio"
	"bytes"
	"context"
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
	"github.com/vishvananda/netlink"

	"github.com/flatnet/flatnet/dataplane/compile"
	"github.com/flatnet/flatnet/dataplane/identity"
	"github.com/flatnet/flatnet/dataplane/podnet/podnettest"
	"github.com/flatnet/flatnet/internal/testenv"
)

// A "node" netns with flatnet's node-subnet wiring (host /32 route + proxy ARP on the
// host veth; in the pod, 169.254.1.1 as gateway) and one netns per "pod". The
// datapath's programs sit on the host-side veths (clsact), exactly as on a node.
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
	hostMAC         net.HardwareAddr // the host veth's: the pod's gateway
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
	n := &testNode{t: t, pods: map[string]*testPod{}, nodeIP: netip.MustParseAddr("10.224.0.2")}
	n.node = podnettest.NewNS(t)
	must(t, n.node.Do(func(ns.NetNS) error {
		for _, f := range []string{"/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv4/conf/all/forwarding"} {
			if err := os.WriteFile(f, []byte("1"), 0o644); err != nil {
				return err
			}
		}
		// The node's own address (no dummy driver in this kernel: on lo).
		return podnettest.AddrUp("lo", netip.PrefixFrom(n.nodeIP, 32))
	}))
	n.pinDir = filepath.Join(testenv.BPFFS(t), "flatnet")
	var err error
	n.d, err = load(n.pinDir)
	must(t, err)
	t.Cleanup(func() { n.d.Close() })
	n.newCompiler(identity.NewAllocator())
	return n
}

// newCompiler gives the node a fresh compiler allocating from alloc, told what the
// agent tells it at start: the namespaces, the node itself and the node's pods.
func (n *testNode) newCompiler(alloc *identity.Allocator) {
	n.t.Helper()
	n.c = compile.New(alloc)
	must(n.t, n.c.UpsertNamespace(compile.Namespace{Name: "default"}))
	must(n.t, n.c.UpsertNamespace(compile.Namespace{Name: "other"}))
	n.c.UpsertNode("self", []netip.Addr{n.nodeIP}, true)
	for _, p := range n.pods {
		must(n.t, n.c.UpsertPod(compile.Pod{Namespace: p.namespace, Name: p.name, Labels: p.labels, IP: p.ip, Local: true}))
	}
}

func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

var gateway = net.IPv4(169, 254, 1, 1)

// addPod wires a pod netns and attaches the datapath as the agent does on CNI ADD:
// the pod's policy is computed and written before the programs are attached.
func (n *testNode) addPod(namespace, name, ip string, labels map[string]string) *testPod {
	return n.addPodIndexed(namespace, name, ip, labels, 0)
}

// addPodIndexed is addPod with the host veth created with interface index ifindex
// (0: the kernel's choice), as the CNI plugin creates it on an index the warm pool
// prepared.
func (n *testNode) addPodIndexed(namespace, name, ip string, labels map[string]string, ifindex int) *testPod {
	t := n.t
	p := &testPod{namespace: namespace, name: name, labels: labels, ip: netip.MustParseAddr(ip),
		hostIf: fmt.Sprintf("fn%d", len(n.pods))}
	p.netns = podnettest.NewNS(t)
	var hostIndex int
	must(t, n.node.Do(func(ns.NetNS) error {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: p.hostIf, Index: ifindex}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(p.netns.Fd()))}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("veth: %w", err)
		}
		l, err := netlink.LinkByName(p.hostIf)
		if err != nil {
			return err
		}
		hostIndex = l.Attrs().Index
		p.hostMAC = l.Attrs().HardwareAddr
		if err := os.WriteFile("/proc/sys/net/ipv4/conf/"+p.hostIf+"/proxy_arp", []byte("1"), 0o644); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
		return netlink.RouteAdd(&netlink.Route{LinkIndex: hostIndex, Dst: prefixNet(netip.PrefixFrom(p.ip, 32)), Scope: netlink.SCOPE_LINK})
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
		return netlink.NeighAdd(&netlink.Neigh{LinkIndex: eth.Attrs().Index, IP: gateway, HardwareAddr: p.hostMAC,
			State: netlink.NUD_PERMANENT, Family: netlink.FAMILY_V4})
	}))
	// As in the agent, the pod's endpoint is known by its interface only once
	// attached: the flush writes its identity, not its policy map.
	n.pods[namespace+"/"+name] = p
	must(t, n.c.UpsertPod(compile.Pod{Namespace: namespace, Name: name, Labels: labels, IP: p.ip, Local: true}))
	n.flush()
	id, _ := n.c.IdentityOf(namespace, name)
	must(t, n.node.Do(func(ns.NetNS) error {
		ep, pol := Endpoint{IfIndex: hostIndex, IP: p.ip, Identity: id, MAC: p.mac}, n.c.EndpointPolicy(namespace, name)
		if n.attach != nil {
			return n.attach(ep, pol)
		}
		return n.d.AttachEndpoint(context.Background(), ep, pol)
	}))
	p.ifindex = hostIndex
	return p
}

// The pods most tests run between: server (app=server) and client (app=client) in
// namespace default, and other, a pod with client's labels in namespace other.
func (n *testNode) addServer() *testPod {
	return n.addPod("default", "server", serverIP.String(), map[string]string{"app": "server"})
}

func (n *testNode) addServerClient() (server, client *testPod) {
	return n.addServer(), n.addPod("default", "client", clientIP.String(), map[string]string{"app": "client"})
}

func (n *testNode) addServerClientOther() (server, client, other *testPod) {
	server, client = n.addServerClient()
	return server, client, n.addPod("other", "client", otherIP.String(), map[string]string{"app": "client"})
}

// load loads the datapath from n's pins as a restarted agent does, in the node's
// network namespace (its endpoints' interfaces are resolved there).
func (n *testNode) load(opts Options) (*Datapath, error) {
	var d *Datapath
	err := n.node.Do(func(ns.NetNS) (err error) {
		d, err = LoadWith(context.Background(), n.pinDir, opts)
		return err
	})
	return d, err
}

func (n *testNode) flush() {
	n.t.Helper()
	// Every write the agent would make (a policy naming a new prefix applies a
	// write after it).
	for _, up := range n.c.FlushSettled() {
		must(n.t, n.d.Apply(context.Background(), up, func(ns, name string) (int, bool) {
			p, ok := n.pods[ns+"/"+name]
			if !ok || p.ifindex == 0 {
				return 0, false
			}
			return p.ifindex, true
		}))
	}
}

// cnp upserts the CiliumNetworkPolicy name with spec (ciliumPolicy) and applies the
// update.
func (n *testNode) cnp(name, spec string) {
	n.t.Helper()
	must(n.t, n.c.UpsertPolicy(ciliumPolicy(n.t, name, spec)))
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

// heldConn opens a TCP connection from p to server:port whose server side stays open,
// idle, until the test ends; push writes msg from the server's side and checks that p
// reads it on the connection.
func (p *testPod) heldConn(t *testing.T, server *testPod, port int) (push func(msg string) error) {
	t.Helper()
	return heldConnVia(t, server, port, func() (net.Conn, error) { return p.dial(server.ip, port) })
}

// heldConnVia is heldConn with the connection opened by dial (through a Service
// address, from a given port), which must reach server on port.
func heldConnVia(t *testing.T, server *testPod, port int, dial func() (net.Conn, error)) (push func(msg string) error) {
	t.Helper()
	accepted := make(chan net.Conn, 1)
	server.serve(t, port, func(conn net.Conn) {
		accepted <- conn
		<-t.Context().Done()
	})
	conn, err := dial()
	must(t, err)
	t.Cleanup(func() { conn.Close() })
	var serverSide net.Conn
	select {
	case serverSide = <-accepted:
	case <-time.After(dialTimeout):
		t.Fatalf("%s did not accept the connection", server.name)
	}
	return func(msg string) error {
		_ = serverSide.SetWriteDeadline(time.Now().Add(dialTimeout))
		if _, err := serverSide.Write([]byte(msg + "\n")); err != nil {
			return err
		}
		_ = conn.SetReadDeadline(time.Now().Add(dialTimeout))
		got, err := bufio.NewReader(conn).ReadString('\n')
		if err != nil {
			return err
		}
		if strings.TrimSpace(got) != msg {
			return fmt.Errorf("read %q, want %q", got, msg)
		}
		return nil
	}
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
	return p.dialTimeout(addr, port, dialTimeout)
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

func (p *testPod) tcpWorks(addr netip.Addr, port int) error { return p.tcpTry(addr, port, dialTimeout) }

// tcpQuick is tcpWorks with the shorter timeout of checks that expect a block.
func (p *testPod) tcpQuick(addr netip.Addr, port int) error {
	return p.tcpTry(addr, port, blockTimeout)
}

// tcpTry connects to addr:port from the pod and checks a round trip.
func (p *testPod) tcpTry(addr netip.Addr, port int, timeout time.Duration) error {
	c, err := p.dialTimeout(addr, port, timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	return echo(c, "hello")
}

func (p *testPod) udpWorks(addr netip.Addr, port int) error {
	return p.udpExchange(addr, port, 4, dialTimeout)
}

func (p *testPod) udpQuick(addr netip.Addr, port int) error {
	return p.udpExchange(addr, port, 4, blockTimeout)
}

// udpExchange sends size bytes to addr:port from the pod and waits for the echo.
func (p *testPod) udpExchange(addr netip.Addr, port, size int, timeout time.Duration) error {
	return p.netns.Do(func(ns.NetNS) error {
		c, err := net.Dial("udp4", netip.AddrPortFrom(addr, uint16(port)).String())
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(timeout))
		msg := bytes.Repeat([]byte("f"), size)
		if _, err := c.Write(msg); err != nil {
			return err
		}
		buf := make([]byte, 2*size)
		n, err := c.Read(buf)
		if err != nil {
			return err
		}
		if !bytes.Equal(buf[:n], msg) {
			return fmt.Errorf("echo of %d bytes, sent %d", n, size)
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

// attachServiceHook attaches the Service hook in the node netns, as the agent does.
func (n *testNode) attachServiceHook() {
	n.t.Helper()
	must(n.t, n.node.Do(func(ns.NetNS) error { return n.d.AttachServiceHook(context.Background()) }))
}

// masqueradeMarked adds kube-proxy's KUBE-POSTROUTING rule: masquerade on the way out
// what KUBE-MARK-MASQ marked (0x4000).
func (n *testNode) masqueradeMarked() {
	n.t.Helper()
	n.iptables("-t", "nat", "-A", "POSTROUTING", "-m", "mark", "--mark", "0x4000/0x4000", "-j", "MASQUERADE")
}

// iptables runs iptables in the node netns (standing in for kube-proxy).
func (n *testNode) iptables(args ...string) {
	n.t.Helper()
	out, err := exec.Command("nsenter", append([]string{"--net=" + n.node.Path(), "iptables"}, args...)...).CombinedOutput()
	if err != nil {
		n.t.Fatalf("iptables %v: %v: %s", args, err, out)
	}
}
