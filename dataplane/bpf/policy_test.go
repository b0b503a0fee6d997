package bpf

import (
	"context"
	"net/netip"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	"sigs.k8s.io/yaml"

	"github.com/flatnet/flatnet/dataplane/compile"
	"github.com/flatnet/flatnet/dataplane/identity"
	"github.com/flatnet/flatnet/dataplane/policy"
)

var (
	serverIP = netip.MustParseAddr("10.224.1.10")
	clientIP = netip.MustParseAddr("10.224.2.20")
	otherIP  = netip.MustParseAddr("10.224.2.30")
	nodeIP   = netip.MustParseAddr("10.224.0.2")
)

// cluster is a small cluster driven through the real compiler: a local server pod
// (the test endpoint), a remote client pod and a remote other pod.
type cluster struct {
	t  testing.TB
	d  *Datapath
	c  *compile.Compiler
	id identity.ID
}

func newCluster(t testing.TB, d *Datapath) *cluster {
	c := compile.New(identity.NewAllocator())
	cl := &cluster{t: t, d: d, c: c}
	must(t, c.UpsertNamespace(compile.Namespace{Name: "default", Labels: map[string]string{"kubernetes.io/metadata.name": "default"}}))
	must(t, c.UpsertNamespace(compile.Namespace{Name: "other", Labels: map[string]string{"kubernetes.io/metadata.name": "other"}}))
	must(t, c.UpsertPod(compile.Pod{Namespace: "default", Name: "server", Labels: map[string]string{"app": "server"}, IP: serverIP, Local: true,
		Ports: []compile.NamedPort{{Name: "http", Protocol: policy.ProtoTCP, Port: 8080}}}))
	must(t, c.UpsertPod(compile.Pod{Namespace: "default", Name: "client", Labels: map[string]string{"app": "client"}, IP: clientIP}))
	must(t, c.UpsertPod(compile.Pod{Namespace: "other", Name: "client", Labels: map[string]string{"app": "client"}, IP: otherIP}))
	c.UpsertNode("self", []netip.Addr{nodeIP}, true)
	cl.id, _ = c.IdentityOf("default", "server")
	cl.flush()
	return cl
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// flush applies the compiler's update; the server pod is the test endpoint.
func (cl *cluster) flush() {
	cl.t.Helper()
	// Every write the agent would make (a policy naming a new prefix applies a
	// write after it).
	for _, up := range cl.c.FlushSettled() {
		if pol := cl.c.EndpointPolicy("default", "server"); pol != nil {
			setEndpoint(cl.t, cl.d, serverIP, uint32(cl.id), pol)
		}
		err := cl.d.Apply(context.Background(), up, func(ns, name string) (int, bool) {
			return testIfindex, ns == "default" && name == "server"
		})
		must(cl.t, err)
	}
}

// The tests' policies live in namespace default; each is written as its name and its
// spec, the YAML under "spec:" (indented two spaces).

// ciliumPolicy decodes the CiliumNetworkPolicy name with spec as the agent does, and
// returns the key the agent upserts it under.
func ciliumPolicy(t testing.TB, name, spec string) (key string, pols []*policy.Policy) {
	t.Helper()
	doc := "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: " + name + ", namespace: default}\nspec:" + spec
	js, err := yaml.YAMLToJSON([]byte(doc))
	must(t, err)
	c, err := policy.DecodeCilium(js)
	must(t, err)
	pols, err = policy.FromCilium(c)
	must(t, err)
	return "cnp/" + c.Namespace + "/" + c.Name, pols
}

// cnp upserts the CiliumNetworkPolicy name with spec and applies the update.
func (cl *cluster) cnp(name, spec string) {
	cl.t.Helper()
	must(cl.t, cl.c.UpsertPolicy(ciliumPolicy(cl.t, name, spec)))
	cl.flush()
}

// np upserts the NetworkPolicy name with spec and applies the update.
func (cl *cluster) np(name, spec string) {
	cl.t.Helper()
	doc := "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: " + name + ", namespace: default}\nspec:" + spec
	var np networkingv1.NetworkPolicy
	must(cl.t, yaml.UnmarshalStrict([]byte(doc), &np))
	p, err := policy.FromNetworkPolicy(&np)
	must(cl.t, err)
	must(cl.t, cl.c.UpsertPolicy("np/"+np.Namespace+"/"+np.Name, []*policy.Policy{p}))
	cl.flush()
}

func tcp(src, dst netip.Addr, sport, dport uint16, flags uint8) pkt {
	return pkt{src: src, dst: dst, proto: 6, sport: sport, dport: dport, tcpFlags: flags}
}

func expect(t testing.TB, d *Datapath, what string, dir int, p pkt, want uint32) {
	t.Helper()
	if got := run(t, d, dir, p); got != want {
		name := map[uint32]string{tcxNext: "pass", tcxDrop: "drop"}
		t.Errorf("%s: got %s (%d), want %s", what, name[got], got, name[want])
	}
}

func TestNoPolicyAllowsAndTracks(t *testing.T) {
	d := loadTest(t)
	cl := newCluster(t, d)
	syn := tcp(clientIP, serverIP, 40000, 80, tcpSYN)
	expect(t, d, "ingress without policy", dirIngress, syn, tcxNext)
	expect(t, d, "egress without policy", dirEgress, tcp(serverIP, clientIP, 40001, 443, tcpSYN), tcxNext)
	// The connection was tracked although no policy selected the pod: a default-deny
	// policy applied now must not cut its replies.
	cl.cnp("default-deny", seedDefaultDeny)
	expect(t, d, "reply of a connection opened before the policy", dirEgress, syn.reply(tcpSYN|tcpACK), tcxNext)
	expect(t, d, "new connection after default deny", dirIngress, tcp(clientIP, serverIP, 40002, 80, tcpSYN), tcxDrop)
	expect(t, d, "new egress after default deny", dirEgress, tcp(serverIP, clientIP, 40003, 443, tcpSYN), tcxDrop)
	// Forward packets of the old connection are judged again: the new policy denies them.
	expect(t, d, "forward packet of the old connection under the new policy", dirIngress, tcp(clientIP, serverIP, 40000, 80, tcpACK), tcxDrop)
}

// seedDefaultDeny is the spec of the seed scenario's default-deny of app=server.
const seedDefaultDeny = `
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - {}
  egress:
  - {}
`

func TestSeedDefaultDenyAndDelete(t *testing.T) {
	d := loadTest(t)
	cl := newCluster(t, d)
	cl.cnp("default-deny", seedDefaultDeny)
	expect(t, d, "client -> server:80 under default deny", dirIngress, tcp(clientIP, serverIP, 41000, 80, tcpSYN), tcxDrop)
	expect(t, d, "kubelet probe from the node", dirIngress, tcp(nodeIP, serverIP, 41001, 80, tcpSYN), tcxNext)
	cl.c.DeletePolicy("cnp/default/default-deny")
	cl.flush()
	expect(t, d, "client -> server:80 after the cnp is deleted", dirIngress, tcp(clientIP, serverIP, 41002, 80, tcpSYN), tcxNext)
}

// webPolicy (a spec) lets app=client into app=server on TCP 80 and puts the server's egress
// into default deny (the empty rule), so replies pass only through conntrack.
const webPolicy = `
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
  egress:
  - {}
`

func TestAllowByIdentityAndPortWithReplies(t *testing.T) {
	d := loadTest(t)
	cl := newCluster(t, d)
	cl.cnp("web", webPolicy)
	syn := tcp(clientIP, serverIP, 42000, 80, tcpSYN)
	expect(t, d, "client -> :80", dirIngress, syn, tcxAllowed())
	expect(t, d, "reply under egress default deny", dirEgress, syn.reply(tcpSYN|tcpACK), tcxNext)
	expect(t, d, "client -> :81", dirIngress, tcp(clientIP, serverIP, 42001, 81, tcpSYN), tcxDrop)
	expect(t, d, "client over UDP :80", dirIngress, pkt{src: clientIP, dst: serverIP, proto: 17, sport: 5000, dport: 80}, tcxDrop)
	expect(t, d, "same labels, other namespace -> :80", dirIngress, tcp(otherIP, serverIP, 42002, 80, tcpSYN), tcxDrop)
	expect(t, d, "unsolicited egress", dirEgress, tcp(serverIP, clientIP, 42003, 80, tcpSYN), tcxDrop)
	expect(t, d, "spoofed source from the pod", dirEgress, tcp(otherIP, clientIP, 42004, 80, tcpSYN), tcxDrop)
}

// TestSYNOnClosingConnectionIsNew: once a connection is closing, a SYN on its tuple
// opens a new connection judged by policy; from the other side it is not a reply.
func TestSYNOnClosingConnectionIsNew(t *testing.T) {
	d := loadTest(t)
	cl := newCluster(t, d)
	cl.cnp("web", webPolicy)
	syn := tcp(clientIP, serverIP, 42100, 80, tcpSYN)
	expect(t, d, "client -> :80", dirIngress, syn, tcxNext)
	expect(t, d, "reply", dirEgress, syn.reply(tcpSYN|tcpACK), tcxNext)
	expect(t, d, "client FIN", dirIngress, tcp(clientIP, serverIP, 42100, 80, tcpFIN|tcpACK), tcxNext)
	expect(t, d, "server FIN (reply)", dirEgress, syn.reply(tcpFIN|tcpACK), tcxNext)
	expect(t, d, "server SYN on the closing tuple, under egress default deny", dirEgress, syn.reply(tcpSYN), tcxDrop)
	expect(t, d, "client SYN on the closing tuple: a new allowed connection", dirIngress, syn, tcxNext)
	expect(t, d, "its reply", dirEgress, syn.reply(tcpSYN|tcpACK), tcxNext)
}

func tcxAllowed() uint32 { return tcxNext }

func TestPortRangeAndDenyPrecedence(t *testing.T) {
	d := loadTest(t)
	cl := newCluster(t, d)
	// A Kubernetes NetworkPolicy allows a range; a CNP deny inside it wins.
	cl.np("range", `
  podSelector: {matchLabels: {app: server}}
  ingress:
  - ports: [{protocol: TCP, port: 8000, endPort: 8100}]
`)
	cl.cnp("deny-8080", `
  endpointSelector: {matchLabels: {app: server}}
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
`)
	cases := []struct {
		src  netip.Addr
		port uint16
		want uint32
	}{
		{clientIP, 7999, tcxDrop}, {clientIP, 8000, tcxNext}, {clientIP, 8079, tcxNext},
		{clientIP, 8080, tcxDrop}, {otherIP, 8080, tcxNext}, {clientIP, 8081, tcxNext},
		{clientIP, 8100, tcxNext}, {clientIP, 8101, tcxDrop},
	}
	for i, c := range cases {
		expect(t, d, "port "+itoa(int(c.port))+" from "+c.src.String(), dirIngress, tcp(c.src, serverIP, uint16(43000+i), c.port, tcpSYN), c.want)
	}
	// A deny of every port of the client beats the allow of the range.
	cl.cnp("deny-client", `
  endpointSelector: {}
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: client}}]
`)
	expect(t, d, "client -> 8000 after deny-all-of-client", dirIngress, tcp(clientIP, serverIP, 43100, 8000, tcpSYN), tcxDrop)
	expect(t, d, "other namespace client -> 8000", dirIngress, tcp(otherIP, serverIP, 43101, 8000, tcpSYN), tcxNext)
}

func TestCIDRExcept(t *testing.T) {
	d := loadTest(t)
	cl := newCluster(t, d)
	cl.cnp("cidr", `
  endpointSelector: {matchLabels: {app: server}}
  egress:
  - toCIDRSet: [{cidr: 192.168.0.0/16, except: [192.168.7.0/24]}]
  - toCIDR: [192.168.7.7/32]
    toPorts: [{ports: [{port: "53", protocol: UDP}]}]
`)
	ext := func(s string) netip.Addr { return netip.MustParseAddr(s) }
	expect(t, d, "inside the block", dirEgress, tcp(serverIP, ext("192.168.1.1"), 44000, 443, tcpSYN), tcxNext)
	expect(t, d, "inside the exception", dirEgress, tcp(serverIP, ext("192.168.7.1"), 44001, 443, tcpSYN), tcxDrop)
	expect(t, d, "the /32 inside the exception, allowed port", dirEgress, pkt{src: serverIP, dst: ext("192.168.7.7"), proto: 17, sport: 5353, dport: 53}, tcxNext)
	expect(t, d, "the /32 inside the exception, other port", dirEgress, tcp(serverIP, ext("192.168.7.7"), 44002, 443, tcpSYN), tcxDrop)
	expect(t, d, "outside the block", dirEgress, tcp(serverIP, ext("172.16.0.1"), 44003, 443, tcpSYN), tcxDrop)
	// An ipBlock also matches pod addresses (Kubernetes' e2e tests rely on it).
	cl.np("pod-cidr", `
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 10.224.0.0/16, except: [10.224.2.30/32]}}]
`)
	expect(t, d, "pod inside the ipBlock", dirEgress, tcp(serverIP, clientIP, 44004, 80, tcpSYN), tcxNext)
	expect(t, d, "pod in the except", dirEgress, tcp(serverIP, otherIP, 44005, 80, tcpSYN), tcxDrop)
}

// TestCiliumCIDRSelectsOnlyWorld: as in Cilium, a CiliumNetworkPolicy CIDR rule over
// the node subnet selects neither pods nor nodes in it, only addresses outside the
// cluster; a NetworkPolicy ipBlock over the same subnet selects them all.
func TestCiliumCIDRSelectsOnlyWorld(t *testing.T) {
	d := loadTest(t)
	cl := newCluster(t, d)
	remoteNode := netip.MustParseAddr("10.224.0.3")
	cl.c.UpsertNode("other", []netip.Addr{remoteNode}, false)
	unknown := netip.MustParseAddr("10.224.9.9") // in the subnet, neither pod nor node: world
	cl.cnp("subnet", `
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromCIDR: [10.224.0.0/16]
  egress:
  - toCIDRSet: [{cidr: 10.224.0.0/16}]
`)
	expect(t, d, "cnp toCIDR: world address in the block", dirEgress, tcp(serverIP, unknown, 45000, 80, tcpSYN), tcxNext)
	expect(t, d, "cnp toCIDR: pod in the block", dirEgress, tcp(serverIP, clientIP, 45001, 80, tcpSYN), tcxDrop)
	expect(t, d, "cnp toCIDR: remote node in the block", dirEgress, tcp(serverIP, remoteNode, 45002, 80, tcpSYN), tcxDrop)
	expect(t, d, "cnp fromCIDR: world address in the block", dirIngress, tcp(unknown, serverIP, 45003, 80, tcpSYN), tcxNext)
	expect(t, d, "cnp fromCIDR: pod in the block", dirIngress, tcp(clientIP, serverIP, 45004, 80, tcpSYN), tcxDrop)

	// A deny over the block does not deny pods either; an ipBlock allow still does allow them.
	cl.cnp("subnet", `
  endpointSelector: {matchLabels: {app: server}}
  egressDeny:
  - toCIDR: [10.224.0.0/16]
`)
	cl.np("pods", `
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 10.224.0.0/16}}]
`)
	expect(t, d, "cnp egressDeny toCIDR + ipBlock allow: pod", dirEgress, tcp(serverIP, clientIP, 45005, 80, tcpSYN), tcxNext)
	expect(t, d, "cnp egressDeny toCIDR + ipBlock allow: remote node", dirEgress, tcp(serverIP, remoteNode, 45006, 80, tcpSYN), tcxNext)
	expect(t, d, "cnp egressDeny toCIDR + ipBlock allow: world address", dirEgress, tcp(serverIP, unknown, 45007, 80, tcpSYN), tcxDrop)
}

func TestEntitiesAndNamedPorts(t *testing.T) {
	d := loadTest(t)
	cl := newCluster(t, d)
	cl.cnp("ent", `
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEntities: [world]
    toPorts: [{ports: [{port: http}]}]
  egress:
  - toEntities: [cluster]
`)
	world := netip.MustParseAddr("203.0.113.9")
	expect(t, d, "world -> named port http (8080)", dirIngress, tcp(world, serverIP, 45000, 8080, tcpSYN), tcxNext)
	expect(t, d, "world -> 80", dirIngress, tcp(world, serverIP, 45001, 80, tcpSYN), tcxDrop)
	expect(t, d, "cluster pod -> 8080 (not world)", dirIngress, tcp(clientIP, serverIP, 45002, 8080, tcpSYN), tcxDrop)
	expect(t, d, "egress to a cluster pod", dirEgress, tcp(serverIP, otherIP, 45003, 80, tcpSYN), tcxNext)
	expect(t, d, "egress to world", dirEgress, tcp(serverIP, world, 45004, 80, tcpSYN), tcxDrop)
}

func itoa(i int) string {
	return string(appendInt(nil, i))
}

func appendInt(b []byte, i int) []byte {
	if i >= 10 {
		b = appendInt(b, i/10)
	}
	return append(b, byte('0'+i%10))
}

func TestServiceAddressDeferredAndRepliesTracked(t *testing.T) {
	d := loadTest(t)
	cl := newCluster(t, d)
	cl.cnp("default-deny", seedDefaultDeny)
	vip := netip.MustParseAddr("10.96.0.10")
	must(t, d.UpsertService(context.Background(), vip))

	syn := tcp(serverIP, vip, 47000, 80, tcpSYN)
	expect(t, d, "packet to a Service address (judged after DNAT)", dirEgress, syn, tcxNext)
	expect(t, d, "un-DNATed reply from the Service address", dirIngress, syn.reply(tcpSYN|tcpACK), tcxNext)
	expect(t, d, "unsolicited packet from the Service address, other port", dirIngress, tcp(vip, serverIP, 80, 47001, tcpSYN|tcpACK), tcxDrop)
	expect(t, d, "unsolicited 'reply' from a pod", dirIngress, tcp(clientIP, serverIP, 80, 47002, tcpSYN|tcpACK), tcxDrop)
	expect(t, d, "not a Service: the pod's egress policy applies", dirEgress, tcp(serverIP, clientIP, 47003, 80, tcpSYN), tcxDrop)
}

func TestUDPAndICMPReplies(t *testing.T) {
	d := loadTest(t)
	cl := newCluster(t, d)
	cl.cnp("out", `
  endpointSelector: {matchLabels: {app: server}}
  ingress: [{}]
  egress:
  - toEndpoints: [{matchLabels: {app: client}}]
`)
	dns := pkt{src: serverIP, dst: clientIP, proto: 17, sport: 33000, dport: 53}
	expect(t, d, "udp query", dirEgress, dns, tcxNext)
	expect(t, d, "udp answer", dirIngress, dns.reply(0), tcxNext)
	expect(t, d, "udp from the client to another port", dirIngress, pkt{src: clientIP, dst: serverIP, proto: 17, sport: 53, dport: 33001}, tcxDrop)
	ping := pkt{src: serverIP, dst: clientIP, proto: 1, sport: 77}
	expect(t, d, "echo request", dirEgress, ping, tcxNext)
	echoReply := pkt{src: clientIP, dst: serverIP, proto: 1, sport: 77}
	expect(t, d, "echo reply", dirIngress, icmpReply(echoReply), tcxNext)
	expect(t, d, "echo request from the client", dirIngress, pkt{src: clientIP, dst: serverIP, proto: 1, sport: 78}, tcxDrop)
	expect(t, d, "echo request from the client reusing the tracked id", dirIngress, pkt{src: clientIP, dst: serverIP, proto: 1, sport: 77}, tcxDrop)
}

// A program meeting an interface the maps do not know (or know without a policy)
// fails closed.
func TestFailClosedWithoutEndpointOrPolicy(t *testing.T) {
	d := loadTest(t)
	newCluster(t, d) // the server endpoint, no policy selecting it
	p := tcp(clientIP, serverIP, 48000, 80, tcpSYN)
	expect(t, d, "endpoint without policy selecting it", dirIngress, p, tcxNext)

	must(t, d.objs.FnPolicy.Delete(uint32(testIfindex)))
	expect(t, d, "endpoint whose policy map is missing", dirIngress, tcp(clientIP, serverIP, 48001, 80, tcpSYN), tcxDrop)
	must(t, d.objs.FnEndpoints.Delete(uint32(testIfindex)))
	expect(t, d, "interface unknown to the maps", dirIngress, tcp(clientIP, serverIP, 48002, 80, tcpSYN), tcxDrop)

	counters, err := d.Counters(context.Background())
	must(t, err)
	got := map[Code]uint64{}
	for _, c := range counters {
		got[c.Code] += c.Packets
	}
	if got[DropNoPolicy] != 1 || got[DropNoEndpoint] != 1 {
		t.Fatalf("counters %v: want one drop for a missing policy and one for a missing endpoint", got)
	}
}
