package bpf

import (
	"context"
	"net/netip"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/flatnet/flatnet/dataplane/compile"
	"github.com/flatnet/flatnet/dataplane/identity"
	"github.com/flatnet/flatnet/dataplane/ipv4"
	"github.com/flatnet/flatnet/dataplane/podnet/podnettest"
	"github.com/flatnet/flatnet/dataplane/policy"
)

// addRemotePod is a pod of another node: its traffic reaches this node over a link
// that runs no flatnet program (as a node's uplink does), and the IP cache knows its
// identity as every node's does.
func (n *testNode) addRemotePod(namespace, name, ip string, labels map[string]string) *testPod {
	n.t.Helper()
	p := n.addPod(namespace, name, ip, labels)
	must(n.t, n.node.Do(func(ns.NetNS) error { return n.d.DetachEndpoint(context.Background(), p.ifindex) }))
	must(n.t, n.c.UpsertPod(compile.Pod{Namespace: namespace, Name: name, Labels: labels, IP: p.ip}))
	n.flush()
	return p
}

// addLocalAddr gives the node one more address of its own (on lo), one the IP cache
// does not know as the node's: kube-proxy's NodePorts answer on every local address.
func (n *testNode) addLocalAddr(a netip.Addr) {
	n.t.Helper()
	must(n.t, n.node.Do(func(ns.NetNS) error { return podnettest.AddrUp("lo", netip.PrefixFrom(a, 32)) }))
}

// drops counts the packets policy dropped on ifindex in dir.
func (n *testNode) drops(ifindex int, dir policy.Direction) uint64 {
	n.t.Helper()
	c := countsOf(n.t, n.d, ifindex, int(dir))
	return c[DropPolicy] + c[DropPolicyDeny]
}

// newServiceNode is a node with the Service hook attached and two pods echoing TCP on
// 80 as Service backends: server, and web (namespace other, app=web), which the
// tests' egress policies for client allow and deny.
func newServiceNode(t *testing.T) (n *testNode, server, client, web *testPod) {
	n = newTestNode(t)
	server, client = n.addServerClient()
	web = n.addPod("other", "web", otherIP.String(), map[string]string{"app": "web"})
	server.serveTCP(t, 80)
	web.serveTCP(t, 80)
	n.attachServiceHook()
	return n, server, client, web
}

// TestNetnsServicesJudgedOnBackend reproduces kube-proxy's Service DNAT in the node
// netns: a pod's egress policy must be judged on the backend, for ClusterIPs and for
// NodePorts on the node's own address, and the un-DNATed replies must pass.
func TestNetnsServicesJudgedOnBackend(t *testing.T) {
	n, _, client, web := newServiceNode(t)

	allowed := netip.MustParseAddr("10.96.0.10") // Service -> server
	denied := netip.MustParseAddr("10.96.0.11")  // Service -> web
	n.dnatTCP(allowed, 80, "10.224.1.10:80")
	n.dnatTCP(denied, 80, "10.224.2.30:80")
	n.dnatTCP(n.nodeIP, 30080, "10.224.1.10:80")
	n.dnatTCP(n.nodeIP, 30081, "10.224.2.30:80")
	for _, vip := range []netip.Addr{allowed, denied} {
		must(t, n.d.UpsertService(context.Background(), vip))
	}

	wantWorks(t, "ClusterIP -> other without policy", client.tcpWorks(denied, 80))

	n.cnp("client-egress", `
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: server}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
`)
	wantWorks(t, "ClusterIP whose backend the egress policy allows", client.tcpWorks(allowed, 80))
	wantBlocked(t, "ClusterIP whose backend the egress policy denies", client.tcpQuick(denied, 80))
	wantWorks(t, "NodePort whose backend is allowed", client.tcpWorks(n.nodeIP, 30080))
	wantBlocked(t, "NodePort whose backend is denied", client.tcpQuick(n.nodeIP, 30081))
	wantBlocked(t, "the denied backend directly", client.tcpQuick(web.ip, 80))

	// The drop is counted on the client's egress as a policy drop.
	if countsOf(t, n.d, client.ifindex, dirEgress)[DropPolicy] == 0 {
		t.Errorf("no policy drop counted on the client's egress")
	}
}

// TestNetnsDNATedEgressJudgedOnBackend: whatever address kube-proxy (or a hostPort)
// DNATs on this node, a pod's egress is judged on the backend, also when the agent was
// never told the address is a Service's: an externalIP, a LoadBalancer IP, a NodePort
// on a node address the IP cache does not list. A pod allowed to world only must not
// reach in-cluster backends through them.
func TestNetnsDNATedEgressJudgedOnBackend(t *testing.T) {
	n, _, client, _ := newServiceNode(t)

	externalIP := netip.MustParseAddr("203.0.113.10") // spec.externalIPs
	lbIP := netip.MustParseAddr("198.51.100.7")       // status.loadBalancer.ingress[].ip
	extraLocal := netip.MustParseAddr("192.0.2.1")    // a node address not in Node.status
	n.addLocalAddr(extraLocal)
	for _, vip := range []netip.Addr{externalIP, lbIP} {
		n.dnatTCP(vip, 80, "10.224.2.30:80")
		n.dnatTCP(vip, 81, "10.224.1.10:80")
	}
	n.dnatTCP(extraLocal, 30081, "10.224.2.30:80")
	n.dnatTCP(extraLocal, 30080, "10.224.1.10:80")

	wantWorks(t, "externalIP -> other without policy", client.tcpWorks(externalIP, 80))

	n.cnp("client-egress", `
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEntities: [world]
  - toEndpoints: [{matchLabels: {app: server}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
`)
	before := n.drops(client.ifindex, policy.Egress)
	wantBlocked(t, "externalIP whose backend the egress policy denies", client.tcpQuick(externalIP, 80))
	wantBlocked(t, "LoadBalancer IP whose backend the egress policy denies", client.tcpQuick(lbIP, 80))
	wantBlocked(t, "NodePort on an unlisted node address, backend denied", client.tcpQuick(extraLocal, 30081))
	wantWorks(t, "externalIP whose backend the egress policy allows", client.tcpWorks(externalIP, 81))
	wantWorks(t, "LoadBalancer IP whose backend the egress policy allows", client.tcpWorks(lbIP, 81))
	wantWorks(t, "NodePort on an unlisted node address, backend allowed", client.tcpWorks(extraLocal, 30080))
	if n.drops(client.ifindex, policy.Egress) == before {
		t.Errorf("no policy drop counted on the client's egress")
	}
}

// TestNetnsNodePortIngressJudgedBeforeMasquerade: a NodePort connection kube-proxy
// DNATs to a backend of this node and masquerades (externalTrafficPolicy: Cluster)
// reaches the backend from the node's own address, which a pod's ingress always
// allows. The backend's ingress is judged on the source before the masquerade: a pod
// of another node that the backend's policy does not admit must not get in through
// this node's NodePort, one it admits must.
func TestNetnsNodePortIngressJudgedBeforeMasquerade(t *testing.T) {
	n := newTestNode(t)
	server := n.addServer()
	client := n.addRemotePod("default", "client", "10.224.2.20", map[string]string{"app": "client"})
	intruder := n.addRemotePod("default", "intruder", "10.224.2.30", map[string]string{"app": "intruder"})
	local := n.addPod("default", "local", "10.224.2.40", map[string]string{"app": "intruder"})
	server.serveTCP(t, 80)
	n.attachServiceHook()
	// kube-proxy's NodePort chain: mark for masquerade (KUBE-MARK-MASQ), DNAT to the
	// backend, masquerade marked packets on the way out (KUBE-POSTROUTING).
	n.iptables("-t", "nat", "-A", "PREROUTING", "-d", n.nodeIP.String(), "-p", "tcp", "--dport", "30080", "-j", "MARK", "--set-xmark", "0x4000/0x4000")
	n.dnatTCP(n.nodeIP, 30080, "10.224.1.10:80")
	n.masqueradeMarked()

	n.cnp("allow-client", allowClient)
	wantWorks(t, "admitted remote pod -> NodePort", client.tcpWorks(n.nodeIP, 30080))
	wantBlocked(t, "remote pod the backend does not admit -> NodePort", intruder.tcpQuick(n.nodeIP, 30080))
	wantBlocked(t, "local pod the backend does not admit -> NodePort", local.tcpQuick(n.nodeIP, 30080))
	wantBlocked(t, "remote pod the backend does not admit, directly", intruder.tcpQuick(server.ip, 80))
	if n.drops(server.ifindex, policy.Ingress) == 0 {
		t.Errorf("no policy drop counted on the server's ingress")
	}
}

// TestServiceAddressesOverIdentities: a Service address keeps the identity the
// compiler gave it (an externalIP may be a node's address), is world when it has
// none, and leaves exactly that identity (or nothing) behind when it stops being one.
func TestServiceAddressesOverIdentities(t *testing.T) {
	d := loadTest(t)
	ctx := context.Background()
	node := ipv4.MustParsePrefix("10.224.0.3/32")
	extIP := ipv4.MustParsePrefix("203.0.113.10/32")
	cidr := ipv4.MustParsePrefix("10.96.0.0/16")
	check := func(what string, want map[ipv4.Prefix]PrefixEntry) {
		t.Helper()
		got, err := d.IPCache(ctx)
		must(t, err)
		if len(got) != len(want) {
			t.Errorf("%s: IP cache %v, want %v", what, got, want)
			return
		}
		for p, w := range want {
			if got[p] != w {
				t.Errorf("%s: %s is %+v, want %+v", what, p, got[p], w)
			}
		}
	}
	must(t, d.UpsertPrefix(ctx, node, identity.RemoteNode, false))
	must(t, d.SetServices(ctx, []ipv4.Prefix{node, extIP, cidr}))
	check("marked", map[ipv4.Prefix]PrefixEntry{
		node: {Identity: identity.RemoteNode, Service: true}, extIP: {Identity: identity.World, Service: true},
		cidr: {Identity: identity.World, Service: true}})
	must(t, d.DeletePrefix(ctx, node))
	check("node gone, still a Service address", map[ipv4.Prefix]PrefixEntry{
		node: {Identity: identity.World, Service: true}, extIP: {Identity: identity.World, Service: true},
		cidr: {Identity: identity.World, Service: true}})
	must(t, d.UpsertPrefix(ctx, node, identity.RemoteNode, false))
	must(t, d.SetServices(ctx, []ipv4.Prefix{cidr}))
	check("no longer Service addresses", map[ipv4.Prefix]PrefixEntry{
		node: {Identity: identity.RemoteNode}, cidr: {Identity: identity.World, Service: true}})
}

// TestNetnsExternalIPToAllowedBackend: a pod whose egress policy allows the backend
// but not world reaches it through the Service's externalIP once the address is
// marked as a Service's (judged on the backend only, not as world first).
func TestNetnsExternalIPToAllowedBackend(t *testing.T) {
	n := newTestNode(t)
	server, client := n.addServerClient()
	server.serveTCP(t, 80)
	n.attachServiceHook()
	externalIP := netip.MustParseAddr("203.0.113.10")
	n.dnatTCP(externalIP, 80, "10.224.1.10:80")
	n.cnp("client-egress", `
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: server}}]
`)
	wantBlocked(t, "externalIP not known as a Service's: judged as world first", client.tcpQuick(externalIP, 80))
	must(t, n.d.SetServices(context.Background(), []ipv4.Prefix{ipv4.MustParsePrefix(externalIP.String() + "/32")}))
	wantWorks(t, "externalIP marked as a Service's, backend allowed", client.tcpWorks(externalIP, 80))
}
