package bpf

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/flatnet/flatnet/dataplane/policy"
	"github.com/flatnet/flatnet/internal/testenv"
)

func TestNetnsPolicyWithRealTraffic(t *testing.T) {
	n := newTestNode(t)
	server, client, other := n.addServerClientOther()
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
	n.cnp("default-deny", seedDefaultDeny)
	wantBlocked(t, "client -> server:80 under default deny", client.tcpQuick(server.ip, 80))
	wantBlocked(t, "server -> client:80 under default deny", server.tcpQuick(client.ip, 80))
	wantBlocked(t, "udp under default deny", client.udpQuick(server.ip, 53))

	// Allow client:80 and udp/53 in, and the server's 8080 connections; egress stays
	// default deny, so the replies pass only through connection tracking.
	n.cnp("allow-client", `
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

// allowClient is the spec of a policy letting app=client (of namespace default) into
// app=server.
const allowClient = `
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
`

// TestNetnsAgentRestart checks that enforcement survives the agent: with no process
// holding the datapath, and after a new Load moves the pinned links to new programs.
func TestNetnsAgentRestart(t *testing.T) {
	n := newTestNode(t)
	server, client, other := n.addServerClientOther()
	server.serveTCP(t, 80)
	n.cnp("allow-client", allowClient)
	long, err := client.dial(server.ip, 80)
	must(t, err)
	defer long.Close()

	must(t, n.d.Close()) // the agent is gone
	wantWorks(t, "allowed while no agent runs", client.tcpWorks(server.ip, 80))
	wantBlocked(t, "denied while no agent runs", other.tcpQuick(server.ip, 80))

	d2, err := n.load(Options{}) // the new agent
	must(t, err)
	wantWorks(t, "established connection across the restart", echo(long, "still"))

	// The new agent starts from an empty compiler, seeded with the stored identity
	// numbers, replays the cluster and applies it: the numbers it writes must be the
	// ones the running datapath already uses.
	stored, err := d2.Identities(context.Background())
	must(t, err)
	if len(stored) == 0 {
		t.Fatalf("no identities stored by the first agent")
	}
	old := n.c
	alloc := n.restartAgent(t, d2) // d2 is the node's datapath from here, closed with it
	n.cnp("allow-client", allowClient)
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

	// Every endpoint's hook runs the new agent's programs, not the first's.
	for _, p := range []*testPod{server, client} {
		wantHookKind(t, n, d2, p.ifindex, onFilter)
	}

	must(t, n.node.Do(func(ns.NetNS) error { return d2.DetachEndpoint(context.Background(), server.ifindex) }))
	wantHookKind(t, n, d2, server.ifindex, onNone)
}

// TestNetnsDetachForgetsEndpoint: after DetachEndpoint the veth runs no program and
// nothing of the endpoint (counters, tracked connections) is left for the next pod
// that gets its interface index: its connections in the shared table go before that
// pod is attached, or with the next collection (ExpireConnections), whichever first.
func TestNetnsDetachForgetsEndpoint(t *testing.T) {
	n := newTestNode(t)
	server, client := n.addServerClient()
	server.serveTCP(t, 80)
	wantWorks(t, "client -> server", client.tcpWorks(server.ip, 80))
	n.cnp("default-deny", seedDefaultDeny)
	wantBlocked(t, "client -> server under default deny", client.tcpQuick(server.ip, 80))

	sums := nodeSums(t, n.d)
	if sums[counterKey{policy.Ingress, DropPolicy}] == 0 {
		t.Fatalf("no policy drop counted before the detach: nothing to check (%v)", sums)
	}
	must(t, n.node.Do(func(ns.NetNS) error { return n.d.DetachEndpoint(context.Background(), server.ifindex) }))
	counters, err := n.d.Counters(context.Background())
	must(t, err)
	for _, c := range counters {
		if c.IfIndex == server.ifindex {
			t.Errorf("counter left for the detached endpoint: %+v", c)
		}
	}
	// The node's sums are Prometheus counters: a pod's deletion may not take them
	// back (the client's go on growing meanwhile: IPv6 frames the stack sends).
	after := nodeSums(t, n.d)
	for k, v := range sums {
		if after[k] < v {
			t.Errorf("node counters went back across the server's detach (%+v: %d -> %d):\n before %v\n after  %v", k, v, after[k], sums, after)
			break
		}
	}
	wantWorks(t, "client -> server once the server's programs are detached", client.tcpWorks(server.ip, 80))
	eps, err := n.d.Endpoints(context.Background())
	must(t, err)
	if _, ok := eps[server.ifindex]; ok || len(eps) != 1 {
		t.Errorf("endpoints after detach: %v, want only the client", eps)
	}
	if ct, err := n.d.estTable(server.ifindex); err != nil || ct != nil {
		t.Errorf("table of established connections left for the detached endpoint (%v)", err)
	}
	// Its connections in the shared table go before its interface index is
	// attached again (here: the same veth, as the next pod to get the index)...
	if connectionsOf(t, n.d, server.ifindex) == 0 {
		t.Fatalf("no connection of the server tracked in the shared table: nothing to check")
	}
	n.reattach(t, server)
	if left := connectionsOf(t, n.d, server.ifindex); left != 0 {
		t.Errorf("%d tracked connections of the detached endpoint left for the next one on its interface", left)
	}
	// ... or with the next collection.
	must(t, n.node.Do(func(ns.NetNS) error { return n.d.DetachEndpoint(context.Background(), client.ifindex) }))
	before := connectionsOf(t, n.d, client.ifindex)
	st, err := n.d.ExpireConnections(context.Background())
	must(t, err)
	if left := connectionsOf(t, n.d, client.ifindex); before == 0 || left != 0 || st.Orphaned != before {
		t.Errorf("collection after the client's detach: %d of its %d connections left, %+v", left, before, st)
	}
}

type counterKey struct {
	dir  policy.Direction
	code Code
}

// nodeSums is the node's packet counters by direction and code, over endpoints.
func nodeSums(t *testing.T, d *Datapath) map[counterKey]uint64 {
	t.Helper()
	counters, err := d.Counters(context.Background())
	must(t, err)
	out := map[counterKey]uint64{}
	for _, c := range counters {
		out[counterKey{c.Direction, c.Code}] += c.Packets
	}
	return out
}

// connectionsOf counts the connections of the endpoint on ifindex in the shared table.
func connectionsOf(t *testing.T, d *Datapath, ifindex int) int {
	t.Helper()
	var n int
	must(t, walkCT(d.objs.FnCt, func(k *datapathCtKey, _ *datapathCtVal) error {
		if int(k.Ifindex) == ifindex {
			n++
		}
		return nil
	}))
	return n
}

// TestNetnsNoWindowAcrossRestarts keeps allowed and denied connections going while the
// agent is restarted over and over (new Load, fresh compiler seeded from the stored
// identities, full replay, endpoints re-attached as the agent's resync does): not one
// allowed connection may fail and not one denied connection may succeed.
func TestNetnsNoWindowAcrossRestarts(t *testing.T) {
	n := newTestNode(t)
	server, client, other := n.addServerClientOther()
	server.serveTCP(t, 80)
	n.cnp("allow-client", allowClient)

	probes := startProbes(client, other, server, 80)

	for i := 0; i < 10; i++ {
		d2, err := n.load(Options{})
		must(t, err)
		n.restartAgent(t, d2)
		n.cnp("allow-client", allowClient)
		for _, p := range n.pods {
			n.reattach(t, p)
		}
		time.Sleep(50 * time.Millisecond)
	}
	probes.haltAndCheck(t, "10 restarts", 10, 10)
}

// TestNetnsPolicySwapUnderTraffic alternates between two policies that both allow the
// client's port 80 and both deny the other pod, while connections run: a policy swap
// must never drop an allowed connection nor pass a denied one, however the entries
// differ.
func TestNetnsPolicySwapUnderTraffic(t *testing.T) {
	n := newTestNode(t)
	server, client, other := n.addServerClientOther()
	server.serveTCP(t, 80)
	a := `
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
`
	b := `
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
	n.cnp("swap", a)
	probes := startProbes(client, other, server, 80)
	for i := 0; i < 40; i++ {
		if i%2 == 0 {
			n.cnp("swap", b)
		} else {
			n.cnp("swap", a)
		}
		time.Sleep(20 * time.Millisecond)
	}
	probes.haltAndCheck(t, "40 policy swaps", 10, 5)
}

// TestNetnsVanishedInterfaceForgotten: a pod whose veth disappeared while no agent ran
// leaves nothing behind once the next agent loads, nor does one whose interface
// index another interface took meanwhile (no datapath filter or tcx link on it:
// its link was detached with its interface).
func TestNetnsVanishedInterfaceForgotten(t *testing.T) {
	n := newTestNode(t)
	gone := n.addPod("default", "gone", "10.224.1.11", map[string]string{"app": "gone"})
	reused := n.addPod("default", "reused", "10.224.1.13", map[string]string{"app": "reused"})
	stays := n.addPod("default", "stays", "10.224.1.12", map[string]string{"app": "stays"})
	// reused and stays on tcx links, gone on its filters: both hooks are found.
	must(t, n.node.Do(func(ns.NetNS) error {
		for _, p := range []*testPod{reused, stays} {
			if _, err := n.d.MoveToTCX(context.Background(), p.ifindex); err != nil {
				return err
			}
		}
		return nil
	}))
	must(t, n.d.Close())
	must(t, n.node.Do(func(ns.NetNS) error {
		for _, p := range []*testPod{gone, reused} {
			l, err := netlink.LinkByName(p.hostIf)
			if err != nil {
				return err
			}
			if err := netlink.LinkDel(l); err != nil {
				return err
			}
		}
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "fnreused", Index: reused.ifindex}, PeerName: "fnreusedp"})
	}))
	d2, err := n.load(Options{})
	must(t, err)
	defer d2.Close()
	eps, err := d2.Endpoints(context.Background())
	must(t, err)
	for _, p := range []*testPod{gone, reused} {
		if _, ok := eps[p.ifindex]; ok {
			t.Errorf("endpoint %s of interface %d still in the maps", p.name, p.ifindex)
		}
	}
	if _, ok := eps[stays.ifindex]; !ok {
		t.Errorf("endpoint of the live veth %d was forgotten", stays.ifindex)
	}
	wantHookKind(t, n, d2, stays.ifindex, onTCX)
	wantHookKind(t, n, d2, reused.ifindex, onNone)
	for _, dir := range []int{dirIngress, dirEgress} {
		if _, err := os.Stat(d2.tcxLinkPin(reused.ifindex, dir)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the tcx link pin of the vanished interface %d is left: %v", reused.ifindex, err)
		}
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
// very first packet, in both directions, on a fresh interface and on one of the warm
// pool (prepared beforehand, its attach only writes entries: prepareThenAttach).
func TestNetnsFirstPacketUnderPolicy(t *testing.T) {
	for _, prepared := range []bool{false, true} {
		t.Run(fmt.Sprintf("prepared=%v", prepared), func(t *testing.T) {
			n := newTestNode(t)
			server := n.addServer()
			server.serveTCP(t, 80)
			if prepared {
				n.attach = prepareThenAttach(t, n)
			}
			n.cnp("locked", `
  endpointSelector: {matchLabels: {app: locked}}
  ingress: [{}]
  egress: [{}]
`)
			locked := n.addPod("default", "locked", "10.224.2.40", map[string]string{"app": "locked"})
			locked.serveTCP(t, 80)
			wantBlocked(t, "first connection of a pod born under egress default deny", locked.tcpQuick(server.ip, 80))
			wantBlocked(t, "first connection to a pod born under ingress default deny", server.tcpQuick(locked.ip, 80))
			free := n.addPod("default", "free", "10.224.2.41", map[string]string{"app": "free"})
			free.serveTCP(t, 80)
			wantWorks(t, "a pod no policy selects", free.tcpWorks(server.ip, 80))
			wantWorks(t, "to a pod no policy selects", server.tcpWorks(free.ip, 80))
		})
	}
}

// TestServiceHookSurvivesAgentRestarts attaches the Service hook as one agent after
// another would, each loading the datapath from the same pins: the kernel refuses a
// second netfilter link at a priority still held, which once crashed every restarted
// agent. Each restart must succeed and leave exactly one pinned hook.
func TestServiceHookSurvivesAgentRestarts(t *testing.T) {
	n := newTestNode(t)
	ctx := context.Background()
	n.attachServiceHook()
	for i := 0; i < 3; i++ {
		next, err := n.load(Options{})
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
