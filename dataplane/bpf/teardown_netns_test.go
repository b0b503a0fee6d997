package bpf

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/flatnet/flatnet/dataplane/compile"
	"github.com/flatnet/flatnet/dataplane/ipv4"
	"github.com/flatnet/flatnet/dataplane/podnet/podnettest"
)

// removePod tears p down as a CNI DEL and the pod's deletion do, in either order
// (informerFirst: the compiler forgets the pod, and its change is written, before the
// endpoint is detached), and then deletes its veth.
func (n *testNode) removePod(p *testPod, informerFirst bool) {
	n.t.Helper()
	forget := func() {
		n.c.DeletePod(p.namespace, p.name)
		n.flush()
	}
	if informerFirst {
		delete(n.pods, p.namespace+"/"+p.name)
		forget()
	}
	must(n.t, n.node.Do(func(ns.NetNS) error { return n.d.DetachEndpoint(context.Background(), p.ifindex) }))
	if !informerFirst {
		delete(n.pods, p.namespace+"/"+p.name)
		forget()
	}
	must(n.t, n.node.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByIndex(p.ifindex)
		if err != nil {
			return err
		}
		return netlink.LinkDel(l)
	}))
}

func hostPrefix(t *testing.T, a netip.Addr) ipv4.Prefix {
	t.Helper()
	p, err := ipv4.HostPrefix(a)
	must(t, err)
	return p
}

// tcpFromPorts is tcpWorks from a source port the kernel picks in lo..hi.
func (p *testPod) tcpFromPorts(to netip.AddrPort, lo, hi uint32) error {
	c, err := p.dialWith(to, nil, func(fd int) error {
		return unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_LOCAL_PORT_RANGE, int(hi<<16|lo))
	})
	if err != nil {
		return err
	}
	defer c.Close()
	return echo(c, "hello")
}

// liveProbes runs connection checks in loops until stopped and keeps every failure.
type liveProbes struct {
	stop chan struct{}
	wg   sync.WaitGroup
	mu   sync.Mutex
	runs map[string]int
	fail []string
}

func newLiveProbes() *liveProbes {
	return &liveProbes{stop: make(chan struct{}), runs: map[string]int{}}
}

// loop runs try until halt; a failure is recorded with its time and does not stop it.
func (lp *liveProbes) loop(name string, try func() error) {
	lp.wg.Add(1)
	go func() {
		defer lp.wg.Done()
		for {
			select {
			case <-lp.stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			err := try()
			lp.mu.Lock()
			lp.runs[name]++
			if err != nil {
				lp.fail = append(lp.fail, fmt.Sprintf("%s %s: %v", time.Now().Format("15:04:05.000"), name, err))
			}
			lp.mu.Unlock()
		}
	}()
}

// held opens one connection with dial and checks a round trip on it in a loop: a
// connection open before, during and after the churn.
func (lp *liveProbes) held(t *testing.T, name string, dial func() (net.Conn, error)) {
	c, err := dial()
	must(t, err)
	t.Cleanup(func() { c.Close() })
	i := 0
	lp.loop(name, func() error {
		i++
		return echo(c, fmt.Sprintf("%s-%d", name, i))
	})
}

// retransmits reads Tcp RetransSegs of the pod's network namespace: a segment (or SYN,
// or SYN-ACK) sent again because it or its answer was lost.
func (p *testPod) retransmits(t *testing.T) int {
	t.Helper()
	var n int
	must(t, p.netns.Do(func(ns.NetNS) (err error) {
		n, err = podnettest.TCPCounter("RetransSegs")
		return err
	}))
	return n
}

// droppedIPv4 sums what the datapath dropped of the IPv4 packets of the endpoint on
// ifindex, by code (a pod's interface also sends IPv6 router solicitations when it
// comes up, which the datapath drops).
func droppedIPv4(t *testing.T, d *Datapath, ifindex int) map[Code]uint64 {
	t.Helper()
	out := map[Code]uint64{}
	for _, dir := range []int{dirIngress, dirEgress} {
		for c, n := range countsOf(t, d, ifindex, dir) {
			if c.Dropped() && c != DropUnknownL3 {
				out[c] += n
			}
		}
	}
	return out
}

func (lp *liveProbes) halt() (runs map[string]int, fail []string) {
	close(lp.stop)
	lp.wg.Wait()
	return lp.runs, lp.fail
}

// TestNetnsTeardownLosesNoLiveConnection: while other pods come and go on the node
// (attached, detached, their namespace and its Service deleted, their addresses
// handed to pods of other identities) and policies selecting the two ends change, a client keeps
// talking to a server directly and through a Service address (kube-proxy's DNAT in
// the node): on connections open throughout and on new ones, every round trip must
// succeed. Both ends are isolated (the client's ingress by default deny, so the
// Service's un-DNATed replies pass only through its tracked connection), and the
// shared connection table holds many other endpoints' connections, as a busy node's
// does. A pod of another namespace must stay blocked, and each pod that comes must be
// judged by its own identity on an address the previous one held.
func TestNetnsTeardownLosesNoLiveConnection(t *testing.T) {
	n, server, client, _ := newServiceNode(t)
	other := n.addPod("other", "intruder", "10.224.2.40", map[string]string{"app": "client"})
	vip := netip.MustParseAddr("10.96.0.10")
	n.dnatTCP(vip, 81, netip.AddrPortFrom(server.ip, 80).String())
	must(t, n.d.UpsertService(context.Background(), vip))
	n.cnp("server-ingress", `
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}, {port: "82", protocol: TCP}, {port: "84", protocol: TCP}]}]
`)
	n.cnp("client", `
  endpointSelector: {matchLabels: {app: client}}
  ingress: [{}]
  egress:
  - toEndpoints: [{matchLabels: {app: server}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}, {port: "82", protocol: TCP}, {port: "84", protocol: TCP}]}]
`)
	fillCT(t, n.d, 100000)
	// Counted from here: a loss anywhere on the live connections shows as a
	// retransmission at one end (a probe still succeeds when a retry gets through).
	retransmitsBefore := client.retransmits(t) + server.retransmits(t)

	// The connections to the server directly and through the Service never share a
	// source port: at the server they would be the same tuple. A direct connection
	// on a Service connection's tuple now takes the host's way and another port
	// (TestNetnsDirectConnectionSparesServiceConnection), but a Service connection's
	// SYN on the tuple of a live direct one still resets it: direct delivery skips
	// the host's conntrack, which cannot move it to another port. Not a teardown's.
	lp := newLiveProbes()
	lp.held(t, "held direct", func() (net.Conn, error) {
		return client.dialFromPort(20002, netip.AddrPortFrom(server.ip, 80))
	})
	lp.held(t, "held via Service", func() (net.Conn, error) { return client.dialFromPort(20003, netip.AddrPortFrom(vip, 81)) })
	// The server speaks first on these: a packet into the client passes only as a
	// reply of a connection it tracks (its ingress is default deny).
	pushDirect := heldConnVia(t, server, 82, func() (net.Conn, error) {
		return client.dialFromPort(20004, netip.AddrPortFrom(server.ip, 82))
	})
	n.dnatTCP(vip, 83, netip.AddrPortFrom(server.ip, 84).String())
	pushService := heldConnVia(t, server, 84, func() (net.Conn, error) {
		return client.dialFromPort(20005, netip.AddrPortFrom(vip, 83))
	})
	pushedDirect, pushedService := 0, 0
	lp.loop("held direct, the server speaking", func() error {
		pushedDirect++
		return pushDirect(fmt.Sprint("d", pushedDirect))
	})
	lp.loop("held via Service, the server speaking", func() error {
		pushedService++
		return pushService(fmt.Sprint("s", pushedService))
	})
	lp.loop("new direct", func() error { return client.tcpFromPorts(netip.AddrPortFrom(server.ip, 80), 40000, 49999) })
	lp.loop("new via Service", func() error { return client.tcpFromPorts(netip.AddrPortFrom(vip, 81), 50000, 60999) })
	lp.loop("other namespace blocked", func() error {
		c, err := other.dialTimeout(server.ip, 80, 150*time.Millisecond)
		if err == nil {
			c.Close()
			return fmt.Errorf("%s reached the server", other.name)
		}
		return nil
	})

	start := time.Now()
	const rounds = 12
	for i := 0; i < rounds; i++ {
		must(t, n.c.UpsertNamespace(compile.Namespace{Name: "w", Labels: map[string]string{"round": fmt.Sprint(i)}}))
		// The same two addresses every round, each time to a pod of another identity:
		// one the server's policy allows (app=client in default), one it does not.
		allowedIP, deniedIP := "10.224.5.1", "10.224.5.2"
		if i%2 == 1 {
			allowedIP, deniedIP = deniedIP, allowedIP
		}
		friend := n.addPod("default", fmt.Sprintf("friend-%d", i), allowedIP, map[string]string{"app": "client"})
		stranger := n.addPod("w", fmt.Sprintf("stranger-%d", i), deniedIP, map[string]string{"app": "client"})
		stranger2 := n.addPod("w", fmt.Sprintf("web-%d", i), "10.224.5.3", map[string]string{"app": "web"})
		// A Service of namespace w comes and goes with it, as the enforcer writes them:
		// the whole set of Service addresses each time.
		wService := netip.AddrFrom4([4]byte{10, 96, 1, byte(i)})
		n.dnatTCP(wService, 80, "10.224.5.3:80")
		must(t, n.d.SetServices(context.Background(), []ipv4.Prefix{hostPrefix(t, vip), hostPrefix(t, wService)}))
		wantWorks(t, fmt.Sprintf("round %d: a new pod allowed by the server's policy on %s", i, allowedIP),
			friend.tcpWorks(server.ip, 80))
		if r := friend.retransmits(t); r != 0 {
			t.Errorf("round %d: the new pod on %s retransmitted %d TCP segments: its first packets were lost", i, allowedIP, r)
		}
		wantBlocked(t, fmt.Sprintf("round %d: a new pod of namespace w on %s", i, deniedIP),
			stranger.tcpQuick(server.ip, 80))

		// Policies of both live ends change while the pods are there.
		if i%2 == 0 {
			n.cnp("server-from-w", `
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {"k8s:io.kubernetes.pod.namespace": w, app: web}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
`)
		} else {
			n.c.DeletePolicy("cnp/default/server-from-w")
			n.flush()
		}
		n.cnp("client-extra", fmt.Sprintf(`
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: web}}]
    toPorts: [{ports: [{port: "%d", protocol: TCP}]}]
`, 9000+i))

		n.removePod(stranger, i%2 == 0)
		n.removePod(stranger2, i%2 == 1)
		n.removePod(friend, i%2 == 1)
		must(t, n.d.SetServices(context.Background(), []ipv4.Prefix{hostPrefix(t, vip)}))
		must(t, n.c.DeleteNamespace("w"))
		n.flush()
	}
	churn := time.Since(start)
	time.Sleep(200 * time.Millisecond) // the probes run on past the churn
	runs, fail := lp.halt()
	t.Logf("%d rounds of churn in %v; probes run: %v", rounds, churn.Round(time.Millisecond), runs)
	for name, r := range runs {
		if r < rounds {
			t.Errorf("probe %q ran %d times across %d rounds: too few to mean anything", name, r, rounds)
		}
	}
	for _, f := range fail {
		t.Errorf("failed during the churn: %s", f)
	}
	if r := client.retransmits(t) + server.retransmits(t) - retransmitsBefore; r != 0 {
		t.Errorf("%d TCP segments retransmitted by the client or the server: packets of live connections were lost", r)
	}
	if d := droppedIPv4(t, n.d, client.ifindex); len(d) != 0 {
		t.Errorf("the datapath dropped packets of the client: %v", d)
	}
}
