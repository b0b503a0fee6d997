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
	"golang.org/x/sys/unix"
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

func TestNetnsPolicyWithRealTraffic(t *testing.T) {
	n := newTestNode(t)
	server := n.addPod("default", "server", "10.224.1.10", map[string]string{"app": "server"})
	client := n.addPod("default", "client", "10.224.2.20", map[string]string{"app": "client"})
	other := n.addPod("other", "client", "10.224.2.30", map[string]string{"app": "client"})
	server.serveTCP(t, 80)
	server.serveTCP(t, 8080)
	server.serveUDP(t, 53)
	client.serveTCP(t, 80)

	wantWorks(t, "client -> server:80 without policy", client.tcpWorks(server.ip, 80))
	wantWorks(t, "client -> server udp/53 without policy", client.udpWorks(server.ip, 53))

	// A long-lived connection opened before any policy.
	long, err := client.dial(server.ip, 8080)
	must(t, err)
	defer long.Close()
	wantWorks(t, "long connection before policy", echo(long, "one"))

	// The seed scenario.
	n.cnp(seedDefaultDeny)
	wantBlocked(t, "client -> server:80 under default deny", client.tcpQuick(server.ip, 80))
	wantBlocked(t, "server -> client:80 under default deny", server.tcpQuick(client.ip, 80))
	wantBlocked(t, "udp under default deny", client.udpQuick(server.ip, 53))

	// Allow client:80 and udp/53 in, and the server's 8080 connections; egress stays
	// default deny, so the replies pass only through connection tracking.
	n.cnp(`
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: allow-client, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}, {port: "8080", protocol: TCP}, {port: "53", protocol: UDP}]}]
`)
	wantWorks(t, "client -> server:80 allowed", client.tcpWorks(server.ip, 80))
	wantWorks(t, "client -> server udp/53 allowed", client.udpWorks(server.ip, 53))
	wantBlocked(t, "same labels from namespace other", other.tcpQuick(server.ip, 80))
	wantWorks(t, "connection opened before the policies keeps its replies", echo(long, "two"))

	// From the node: kubelet probes always pass.
	var nodeErr error
	must(t, n.node.Do(func(ns.NetNS) error {
		c, err := net.DialTimeout("tcp4", netip.AddrPortFrom(server.ip, 80).String(), dialTimeout)
		if err == nil {
			nodeErr = echo(c, "probe")
			c.Close()
		} else {
			nodeErr = err
		}
		return nil
	}))
	wantWorks(t, "node -> server:80 (kubelet probe) under default deny", nodeErr)
	n.serveTCP(t, 10250)
	wantWorks(t, "server -> its node under egress default deny", server.tcpWorks(n.nodeIP, 10250))

	// Deleting the seed policy leaves the allow policy: still ingress-isolated.
	n.c.DeletePolicy("cnp/default/default-deny")
	n.flush()
	wantWorks(t, "server -> client:80 once egress is no longer isolated", server.tcpWorks(client.ip, 80))
	wantBlocked(t, "other -> server:80 still isolated by allow-client", other.tcpQuick(server.ip, 80))
	n.c.DeletePolicy("cnp/default/allow-client")
	n.flush()
	wantWorks(t, "other -> server:80 with no policy left", other.tcpWorks(server.ip, 80))
}

const allowClient = `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: allow-client, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
`

// TestNetnsAgentRestart checks that enforcement survives the agent: with no process
// holding the datapath, and after a new Load moves the pinned links to new programs.
func TestNetnsAgentRestart(t *testing.T) {
	n := newTestNode(t)
	server := n.addPod("default", "server", "10.224.1.10", map[string]string{"app": "server"})
	client := n.addPod("default", "client", "10.224.2.20", map[string]string{"app": "client"})
	other := n.addPod("other", "client", "10.224.2.30", map[string]string{"app": "client"})
	server.serveTCP(t, 80)
	n.cnp(allowClient)
	long, err := client.dial(server.ip, 80)
	must(t, err)
	defer long.Close()

	must(t, n.d.Close()) // the agent is gone
	wantWorks(t, "allowed while no agent runs", client.tcpWorks(server.ip, 80))
	wantBlocked(t, "denied while no agent runs", other.tcpQuick(server.ip, 80))

	d2, err := Load(context.Background(), n.pinDir) // the new agent
	must(t, err)
	defer d2.Close()
	n.d = d2
	wantWorks(t, "established connection across the restart", echo(long, "still"))

	// The new agent starts from an empty compiler, seeded with the stored identity
	// numbers, replays the cluster and applies it: the numbers it writes must be the
	// ones the running datapath already uses.
	stored, err := d2.Identities(context.Background())
	must(t, err)
	if len(stored) == 0 {
		t.Fatalf("no identities stored by the first agent")
	}
	alloc := identity.NewAllocator()
	for s, id := range stored {
		alloc.Remember(s, id)
	}
	old := n.c
	n.c = compile.New(alloc)
	must(t, n.c.UpsertNamespace(compile.Namespace{Name: "default"}))
	must(t, n.c.UpsertNamespace(compile.Namespace{Name: "other"}))
	n.c.UpsertNode("self", []netip.Addr{n.nodeIP}, true)
	for _, p := range n.pods {
		must(t, n.c.UpsertPod(compile.Pod{Namespace: p.namespace, Name: p.name, Labels: p.labels, IP: p.ip, Local: true}))
	}
	n.cnp(allowClient)
	for _, p := range n.pods {
		was, _ := old.IdentityOf(p.namespace, p.name)
		now, _ := n.c.IdentityOf(p.namespace, p.name)
		if was != now {
			t.Errorf("pod %s/%s had identity %v, the restarted agent gave it %v", p.namespace, p.name, was, now)
		}
	}
	if unclaimed := alloc.ForgetUnclaimed(); len(unclaimed) != 0 {
		t.Errorf("%d stored identities unclaimed after an identical replay", len(unclaimed))
	}
	wantWorks(t, "allowed after restart", client.tcpWorks(server.ip, 80))
	wantBlocked(t, "denied after restart", other.tcpQuick(server.ip, 80))

	// The new agent's writes reach the programs the links now run.
	n.c.DeletePolicy("cnp/default/allow-client")
	n.flush()
	wantWorks(t, "policy deleted by the new agent", other.tcpWorks(server.ip, 80))

	must(t, n.node.Do(func(ns.NetNS) error { return d2.DetachEndpoint(context.Background(), server.ifindex) }))
	if _, err := os.Stat(d2.linkPin(server.ifindex, dirIngress)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("link pin still present after DetachEndpoint: %v", err)
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

// TestNetnsServicesJudgedOnBackend reproduces kube-proxy's Service DNAT in the node
// netns: a pod's egress policy must be judged on the backend, for ClusterIPs and for
// NodePorts on the node's own address, and the un-DNATed replies must pass.
func TestNetnsServicesJudgedOnBackend(t *testing.T) {
	n := newTestNode(t)
	server := n.addPod("default", "server", "10.224.1.10", map[string]string{"app": "server"})
	client := n.addPod("default", "client", "10.224.2.20", map[string]string{"app": "client"})
	other := n.addPod("other", "web", "10.224.2.30", map[string]string{"app": "web"})
	server.serveTCP(t, 80)
	other.serveTCP(t, 80)
	must(t, n.node.Do(func(ns.NetNS) error { return n.d.AttachServiceHook(context.Background()) }))

	allowed := netip.MustParseAddr("10.96.0.10") // Service -> server
	denied := netip.MustParseAddr("10.96.0.11")  // Service -> other
	n.dnatTCP(allowed, 80, "10.224.1.10:80")
	n.dnatTCP(denied, 80, "10.224.2.30:80")
	n.dnatTCP(n.nodeIP, 30080, "10.224.1.10:80")
	n.dnatTCP(n.nodeIP, 30081, "10.224.2.30:80")
	for _, vip := range []netip.Addr{allowed, denied} {
		must(t, n.d.UpsertService(context.Background(), vip))
	}

	wantWorks(t, "ClusterIP -> other without policy", client.tcpWorks(denied, 80))

	n.cnp(`
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-egress, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: server}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
`)
	wantWorks(t, "ClusterIP whose backend the egress policy allows", client.tcpWorks(allowed, 80))
	wantBlocked(t, "ClusterIP whose backend the egress policy denies", client.tcpQuick(denied, 80))
	wantWorks(t, "NodePort whose backend is allowed", client.tcpWorks(n.nodeIP, 30080))
	wantBlocked(t, "NodePort whose backend is denied", client.tcpQuick(n.nodeIP, 30081))
	wantBlocked(t, "the denied backend directly", client.tcpQuick(other.ip, 80))

	// The drop is counted on the client's egress as a policy drop.
	counters, err := n.d.Counters(context.Background())
	must(t, err)
	var drops uint64
	for _, c := range counters {
		if c.IfIndex == client.ifindex && c.Direction == policy.Egress && c.Code == DropPolicy {
			drops += c.Packets
		}
	}
	if drops == 0 {
		t.Errorf("no policy drop counted on the client's egress")
	}
}

// TestNetnsDetachForgetsEndpoint: after DetachEndpoint the veth runs no program and
// nothing of the endpoint (counters, tracked connections) is left for the next pod
// that gets its interface index.
func TestNetnsDetachForgetsEndpoint(t *testing.T) {
	n := newTestNode(t)
	server := n.addPod("default", "server", "10.224.1.10", map[string]string{"app": "server"})
	client := n.addPod("default", "client", "10.224.2.20", map[string]string{"app": "client"})
	server.serveTCP(t, 80)
	wantWorks(t, "client -> server", client.tcpWorks(server.ip, 80))
	n.cnp(seedDefaultDeny)
	wantBlocked(t, "client -> server under default deny", client.tcpQuick(server.ip, 80))

	must(t, n.node.Do(func(ns.NetNS) error { return n.d.DetachEndpoint(context.Background(), server.ifindex) }))
	wantWorks(t, "client -> server once the server's programs are detached", client.tcpWorks(server.ip, 80))
	counters, err := n.d.Counters(context.Background())
	must(t, err)
	for _, c := range counters {
		if c.IfIndex == server.ifindex {
			t.Errorf("counter left for the detached endpoint: %+v", c)
		}
	}
	eps, err := n.d.Endpoints(context.Background())
	must(t, err)
	if _, ok := eps[server.ifindex]; ok || len(eps) != 1 {
		t.Errorf("endpoints after detach: %v, want only the client", eps)
	}
	var left int
	var k datapathCtKey
	var v datapathCtVal
	it := n.d.objs.FnCt.Iterate()
	for it.Next(&k, &v) {
		if int(k.Ifindex) == server.ifindex {
			left++
		}
	}
	if left != 0 {
		t.Errorf("%d tracked connections left for the detached endpoint", left)
	}
	if ct, err := n.d.estTable(server.ifindex); err != nil || ct != nil {
		t.Errorf("table of established connections left for the detached endpoint (%v)", err)
	}
}

// TestNetnsNoWindowAcrossRestarts keeps allowed and denied connections going while the
// agent is restarted over and over (new Load, fresh compiler seeded from the stored
// identities, full replay, endpoints re-attached as the agent's resync does): not one
// allowed connection may fail and not one denied connection may succeed.
func TestNetnsNoWindowAcrossRestarts(t *testing.T) {
	n := newTestNode(t)
	server := n.addPod("default", "server", "10.224.1.10", map[string]string{"app": "server"})
	client := n.addPod("default", "client", "10.224.2.20", map[string]string{"app": "client"})
	other := n.addPod("other", "client", "10.224.2.30", map[string]string{"app": "client"})
	server.serveTCP(t, 80)
	n.cnp(allowClient)

	stop := make(chan struct{})
	allowed, denied := probeAllowedDenied(stop, client, other, server, 80)

	for i := 0; i < 10; i++ {
		d2, err := Load(context.Background(), n.pinDir)
		must(t, err)
		n.restartAgent(t, d2)
		n.cnp(allowClient)
		for _, p := range n.pods {
			n.reattach(t, p)
		}
		time.Sleep(50 * time.Millisecond)
	}
	close(stop)
	a, d := <-allowed, <-denied
	t.Logf("%d allowed and %d denied connection attempts across 10 restarts", a.tries, d.tries)
	if a.tries < 10 || d.tries < 10 {
		t.Fatalf("too few attempts to mean anything: allowed %+v denied %+v", a, d)
	}
	if a.wrong != 0 || d.wrong != 0 {
		t.Fatalf("window across restarts: %d allowed connections failed, %d denied ones passed", a.wrong, d.wrong)
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

// TestNetnsPolicySwapUnderTraffic alternates between two policies that both allow the
// client's port 80 and both deny the other pod, while connections run: a policy swap
// must never drop an allowed connection nor pass a denied one, however the entries
// differ.
func TestNetnsPolicySwapUnderTraffic(t *testing.T) {
	n := newTestNode(t)
	server := n.addPod("default", "server", "10.224.1.10", map[string]string{"app": "server"})
	client := n.addPod("default", "client", "10.224.2.20", map[string]string{"app": "client"})
	other := n.addPod("other", "client", "10.224.2.30", map[string]string{"app": "client"})
	server.serveTCP(t, 80)
	a := `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: swap, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
`
	b := `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: swap, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "70", endPort: 90, protocol: TCP}]}]
  - fromEntities: [world]
  ingressDeny:
  - fromEndpoints: [{matchLabels: {"k8s:io.kubernetes.pod.namespace": other}}]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
  - fromEndpoints: [{matchLabels: {app: client, "k8s:io.kubernetes.pod.namespace": other}}]
`
	n.cnp(a)
	stop := make(chan struct{})
	allowed, denied := probeAllowedDenied(stop, client, other, server, 80)
	for i := 0; i < 40; i++ {
		if i%2 == 0 {
			n.cnp(b)
		} else {
			n.cnp(a)
		}
		time.Sleep(20 * time.Millisecond)
	}
	close(stop)
	ra, rd := <-allowed, <-denied
	t.Logf("%d allowed and %d denied attempts across 40 policy swaps", ra.tries, rd.tries)
	if ra.tries < 10 || rd.tries < 5 {
		t.Fatalf("too few attempts: allowed %+v denied %+v", ra, rd)
	}
	if ra.wrong != 0 || rd.wrong != 0 {
		t.Fatalf("policy swaps: %d allowed connections failed, %d denied ones passed", ra.wrong, rd.wrong)
	}
}

// TestNetnsVanishedInterfaceForgotten: a pod whose veth disappeared while no agent ran
// leaves nothing behind once the next agent loads.
func TestNetnsVanishedInterfaceForgotten(t *testing.T) {
	n := newTestNode(t)
	gone := n.addPod("default", "gone", "10.224.1.11", map[string]string{"app": "gone"})
	stays := n.addPod("default", "stays", "10.224.1.12", map[string]string{"app": "stays"})
	must(t, n.d.Close())
	must(t, n.node.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName(gone.hostIf)
		if err != nil {
			return err
		}
		return netlink.LinkDel(l)
	}))
	d2, err := Load(context.Background(), n.pinDir)
	must(t, err)
	defer d2.Close()
	eps, err := d2.Endpoints(context.Background())
	must(t, err)
	if _, ok := eps[gone.ifindex]; ok {
		t.Errorf("endpoint of the deleted veth %d still in the maps", gone.ifindex)
	}
	if _, ok := eps[stays.ifindex]; !ok {
		t.Errorf("endpoint of the live veth %d was forgotten", stays.ifindex)
	}
	if _, err := os.Stat(d2.linkPin(gone.ifindex, dirIngress)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("link pin of the deleted veth still present: %v", err)
	}
	if _, err := os.Stat(d2.linkPin(stays.ifindex, dirIngress)); err != nil {
		t.Errorf("link pin of the live veth: %v", err)
	}
}

func TestEnsureBPFFS(t *testing.T) {
	testenv.RequireRoot(t)
	dir := filepath.Join(t.TempDir(), "bpf")
	must(t, EnsureBPFFS(dir))
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	if err := checkBPFFS(dir); err != nil {
		t.Fatalf("after EnsureBPFFS: %v", err)
	}
	must(t, EnsureBPFFS(dir)) // already mounted: nothing to do
	var mounts int
	data, err := os.ReadFile("/proc/self/mounts")
	must(t, err)
	for _, line := range strings.Split(string(data), "\n") {
		if strings.Contains(line, " "+dir+" ") {
			mounts++
		}
	}
	if mounts != 1 {
		t.Fatalf("%s mounted %d times, want once", dir, mounts)
	}
}

// TestNetnsFirstPacketUnderPolicy: a pod created after its policy is under it from its
// very first packet, in both directions.
func TestNetnsFirstPacketUnderPolicy(t *testing.T) {
	n := newTestNode(t)
	server := n.addPod("default", "server", "10.224.1.10", map[string]string{"app": "server"})
	server.serveTCP(t, 80)
	n.cnp(`
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: locked, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: locked}}
  ingress: [{}]
  egress: [{}]
`)
	locked := n.addPod("default", "locked", "10.224.2.40", map[string]string{"app": "locked"})
	locked.serveTCP(t, 80)
	wantBlocked(t, "first connection of a pod born under egress default deny", locked.tcpQuick(server.ip, 80))
	wantBlocked(t, "first connection to a pod born under ingress default deny", server.tcpQuick(locked.ip, 80))
	free := n.addPod("default", "free", "10.224.2.41", map[string]string{"app": "free"})
	wantWorks(t, "a pod no policy selects", free.tcpWorks(server.ip, 80))
}

// TestServiceHookSurvivesAgentRestarts attaches the Service hook as one agent after
// another would, each loading the datapath from the same pins: the kernel refuses a
// second netfilter link at a priority still held, which once crashed every restarted
// agent. Each restart must succeed and leave exactly one pinned hook.
func TestServiceHookSurvivesAgentRestarts(t *testing.T) {
	n := newTestNode(t)
	ctx := context.Background()
	must(t, n.node.Do(func(ns.NetNS) error { return n.d.AttachServiceHook(ctx) }))
	for i := 0; i < 3; i++ {
		next, err := Load(ctx, n.pinDir)
		must(t, err)
		if err := n.node.Do(func(ns.NetNS) error { return next.AttachServiceHook(ctx) }); err != nil {
			t.Fatalf("restart %d: %v", i+1, err)
		}
		must(t, next.Close())
	}
	if _, err := os.Stat(n.d.servicePin()); err != nil {
		t.Fatalf("no pinned Service hook after the restarts: %v", err)
	}
}
