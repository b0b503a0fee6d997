package enforce

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/flatnet/flatnet/dataplane/bpf"
	"github.com/flatnet/flatnet/dataplane/compile"
	"github.com/flatnet/flatnet/dataplane/endpointapi"
	"github.com/flatnet/flatnet/dataplane/podnet/podnettest"
	"github.com/flatnet/flatnet/dataplane/policy"
)

// burstNode is an agent's Enforcer fed by real informers (over a fake API server)
// with burstPods pods, a third of them attached to veths in a test netns, and the
// servers isolated by a base policy admitting the clients only. stop and start
// stand for the agent stopping and starting again on the same pinned datapath.
type burstNode struct {
	pin      string
	node     ns.NetNS
	kube     *fake.Clientset
	dyn      *dynamicfake.FakeDynamicClient
	local    []endpointapi.Endpoint
	servers  []string // local server pods, by name
	clients  []string // local client pods, by name
	e        *Enforcer
	factory  informers.SharedInformerFactory
	stopping func()
}

const (
	burstPods = 48
	burstNS   = "perf"
	burstPort = 8080
)

var cnpListKinds = map[schema.GroupVersionResource]string{
	CNPResource: "CiliumNetworkPolicyList", CCNPResource: "CiliumClusterwideNetworkPolicyList"}

func newBurstNode(tb testing.TB) *burstNode {
	pin, node := newTestNode(tb)
	bn := &burstNode{pin: pin, node: node}
	objs := []runtime.Object{&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: burstNS}}}
	for i := 1; i <= 3; i++ {
		objs = append(objs, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("n%d", i)},
			Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: fmt.Sprintf("10.224.0.%d", i+1)}}}})
	}
	for i := range burstPods {
		role := []string{"server", "client"}[i%2]
		name, nodeName, ip := fmt.Sprintf("%s-%d", role, i), fmt.Sprintf("n%d", i%3+1), fmt.Sprintf("10.224.1.%d", i+10)
		p := pod(burstNS, name, ip, nodeName, map[string]string{"role": role})
		if nodeName == "n1" {
			p.Status.PodIP = "" // the API learns it after the CNI ADD
			host := fmt.Sprintf("fnb%d", i)
			bn.local = append(bn.local, endpointapi.Endpoint{ContainerID: "c-" + name, PodNamespace: burstNS, PodName: name,
				HostIfName: host, HostIfIndex: podnettest.AddVeth(tb, node, host, host+"p"), PodIfName: "eth0", IP: netip.MustParseAddr(ip)})
			if role == "server" {
				bn.servers = append(bn.servers, name)
			} else {
				bn.clients = append(bn.clients, name)
			}
		}
		objs = append(objs, p)
	}
	base := burstPolicy("base", &metav1.LabelSelector{MatchLabels: map[string]string{"role": "client"}}, nil)
	objs = append(objs, &base)
	bn.kube = fake.NewSimpleClientset(objs...)
	bn.dyn = dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), cnpListKinds)
	bn.start(tb)
	tb.Cleanup(bn.stop)
	return bn
}

// start runs an agent's Enforcer: loaded on the pinned datapath, fed by informers,
// synced, every local endpoint attached.
func (bn *burstNode) start(tb testing.TB) {
	ctx, cancel := context.WithCancel(context.Background())
	e, err := New(ctx, Config{NodeName: "n1", PinDir: bn.pin}, slog.New(slog.DiscardHandler))
	must(tb, err)
	bn.e = e
	bn.factory = informers.NewSharedInformerFactory(bn.kube, 0)
	must(tb, e.Watch(ctx, bn.factory, bn.kube, bn.dyn))
	bn.factory.Start(ctx.Done())
	done := make(chan error, 1)
	go func() { done <- bn.node.Do(func(ns.NetNS) error { return e.Run(ctx) }) }()
	bn.stopping = func() {
		cancel()
		if err := <-done; err != nil {
			tb.Error(err)
		}
		bn.factory.Shutdown()
		e.Close()
	}
	must(tb, e.waitSynced(ctx))
	for _, ep := range bn.local {
		must(tb, bn.node.Do(func(ns.NetNS) error { return e.Attach(ctx, ep) }))
	}
}

// stop stops the agent (its pinned programs and maps keep enforcing).
func (bn *burstNode) stop() {
	if bn.stopping != nil {
		bn.stopping()
		bn.stopping = nil
	}
}

// burstPolicy selects the servers and admits from (a pod selector) or cidr on
// burstPort, TCP and UDP, as the perf suite's policies do.
func burstPolicy(name string, from *metav1.LabelSelector, cidr *networkingv1.IPBlock) networkingv1.NetworkPolicy {
	tcp, udp := corev1.ProtocolTCP, corev1.ProtocolUDP
	p := intstr.FromInt(burstPort)
	return networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: burstNS},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"role": "server"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{PodSelector: from, IPBlock: cidr}},
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &p}, {Protocol: &udp, Port: &p}},
			}},
		},
	}
}

// fillerPeer is the /32 filler policy i admits (198.18.0.0/15, where no pod lives).
func fillerPeer(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{198, 18 + byte(i>>16), byte(i >> 8), byte(i)})
}

func filler(i int, peer netip.Addr) *networkingv1.NetworkPolicy {
	np := burstPolicy(fmt.Sprintf("filler-%05d", i), nil, &networkingv1.IPBlock{CIDR: peer.String() + "/32"})
	return &np
}

// feed creates (or deletes) the filler policies from..to-1 one by one through the
// API, as a user's burst reaches the agent's informer. The fake API's watch
// buffers 100 events: every 50 the informer's cache (not the agent) catches up.
func (bn *burstNode) feed(tb testing.TB, from, to int, del bool) {
	ctx := context.Background()
	api := bn.kube.NetworkingV1().NetworkPolicies(burstNS)
	for i := from; i < to; i++ {
		if del {
			must(tb, api.Delete(ctx, fmt.Sprintf("filler-%05d", i), metav1.DeleteOptions{}))
		} else {
			_, err := api.Create(ctx, filler(i, fillerPeer(i)), metav1.CreateOptions{})
			must(tb, err)
		}
		if i%50 == 49 {
			bn.cached(tb)
		}
	}
}

// cached waits until the informer's cache holds what the API does.
func (bn *burstNode) cached(tb testing.TB) {
	have, err := bn.kube.NetworkingV1().NetworkPolicies(burstNS).List(context.Background(), metav1.ListOptions{})
	must(tb, err)
	lister := bn.factory.Networking().V1().NetworkPolicies().Lister().NetworkPolicies(burstNS)
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(100 * time.Microsecond) {
		cached, err := lister.List(labels.Everything())
		must(tb, err)
		if len(cached) == len(have.Items) {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("the informer's cache holds %d policies a minute after the API had %d", len(cached), len(have.Items))
		}
	}
}

// admits reads from the datapath's maps whether server admits peer on burstPort.
func (bn *burstNode) admits(tb testing.TB, server string, peer netip.Addr) bool {
	md, _, err := bn.e.LookupMaps(burstNS, server, policy.Ingress, peer, policy.ProtoTCP, burstPort)
	must(tb, err)
	return md.Allowed
}

// waitInForce polls the datapath's maps until every local server admits (or, after
// the deletes, refuses) peer. A lookup reads the server's whole map: the poll
// sleeps four times as long as its lookup took, so that it takes at most a fifth
// of a core from the writer it waits for.
func (bn *burstNode) waitInForce(tb testing.TB, peer netip.Addr, admitted bool) {
	tb.Helper()
	deadline := time.Now().Add(5 * time.Minute)
	for _, s := range bn.servers {
		for {
			t0 := time.Now()
			if bn.admits(tb, s, peer) == admitted {
				break
			}
			if t0.After(deadline) {
				tb.Fatalf("%s: admitting %s is not %v after 5 minutes", s, peer, admitted)
			}
			time.Sleep(max(4*time.Since(t0), 100*time.Microsecond))
		}
	}
}

// observations counts what a histogram observed.
func observations(tb testing.TB, h prometheus.Histogram) uint64 {
	var m dto.Metric
	must(tb, h.Write(&m))
	return m.GetHistogram().GetSampleCount()
}

// inMapsAsCompiled checks that every attached endpoint's map holds exactly what
// the compiler computes from scratch for the state it was fed (all of it
// recompiled, not the incremental updates the writes carried), or deny-all where
// that cannot be written, and the CIDR prefixes exactly the compiler's.
func inMapsAsCompiled(t *testing.T, e *Enforcer, attached int) {
	t.Helper()
	e.wmu.Lock()
	defer e.wmu.Unlock()
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.pending != 0 {
		t.Fatalf("%d changes still pending", e.pending)
	}
	e.c.Invalidate()
	up := e.c.Flush()
	compiled := 0
	for _, u := range up.Endpoints {
		ep, ok := e.attached[u.Namespace+"/"+u.Name]
		if !ok || u.Policy == nil {
			continue
		}
		compiled++
		want := u.Policy
		if f, failed := e.epFail[u.Namespace+"/"+u.Name]; failed && f.isolated {
			want = bpf.DenyAll()
		}
		inMap, err := e.d.EndpointPolicy(context.Background(), ep.HostIfIndex)
		must(t, err)
		if !inMap.Equal(want) {
			t.Errorf("%s/%s: the map holds %d entries (enforced %v), want %d (enforced %v)",
				u.Namespace, u.Name, len(inMap.Entries), inMap.Enforce, len(want.Entries), want.Enforce)
		}
	}
	if compiled != attached {
		t.Errorf("compared %d endpoints, want the %d attached", compiled, attached)
	}
	_, wantCIDRs := e.c.Emitted()
	cidrs, err := e.d.CIDRs(context.Background())
	must(t, err)
	if !maps.Equal(cidrs, wantCIDRs) {
		t.Errorf("the datapath holds %d CIDR prefixes, the compiler %d", len(cidrs), len(wantCIDRs))
	}
}

// oversizedFor is a CNP selecting the pods with role=client whose compiled policy
// does not fit an endpoint's map (see oversized).
func oversizedFor(namespace string) *unstructured.Unstructured {
	u := oversized(namespace)
	spec := u.Object["spec"].(map[string]any)
	spec["endpointSelector"] = map[string]any{"matchLabels": map[string]any{"role": "client"}}
	return u
}

// TestPolicyBurstEndsInTheFinalState: a burst of policies through the informers,
// with a policy deleted and one changed mid-burst, a policy too large for the
// clients' maps, and a write that fails in the middle (its context ends), ends with
// exactly the compiler's state in every map: the deleted policy's peer refused, the
// changed one's new peer admitted and old one refused, the servers unaffected by
// the clients' oversized policy, the clients isolated and the policy reported.
func TestPolicyBurstEndsInTheFinalState(t *testing.T) {
	bn := newBurstNode(t)
	ctx := context.Background()
	api := bn.kube.NetworkingV1().NetworkPolicies(burstNS)
	const n = 400
	moved := netip.MustParseAddr("198.19.200.1")

	bn.feed(t, 0, 150, false)
	_, err := bn.dyn.Resource(CNPResource).Namespace(burstNS).Create(ctx, oversizedFor(burstNS), metav1.CreateOptions{})
	must(t, err)
	must(t, api.Delete(ctx, "filler-00020", metav1.DeleteOptions{}))
	_, err = api.Update(ctx, filler(30, moved), metav1.UpdateOptions{})
	must(t, err)
	bn.feed(t, 150, 250, false)
	// A write that fails as a whole (its context ends) in the middle of the burst,
	// carrying a new policy: the next write rewrites everything.
	bn.e.wmu.Lock() // the writer waits
	_, err = api.Create(ctx, filler(n, fillerPeer(n)), metav1.CreateOptions{})
	must(t, err)
	key := compile.PolicyKey(policy.Ref{Kind: policy.KindNetworkPolicy, Namespace: burstNS, Name: filler(n, fillerPeer(n)).Name})
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(time.Millisecond) {
		bn.e.mu.Lock()
		_, fed := bn.e.objects[key]
		bn.e.mu.Unlock()
		if fed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the informer did not deliver %s within a minute", key)
		}
	}
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	err = bn.e.writePendingLocked(canceled, false)
	bn.e.wmu.Unlock()
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("write with an ended context: %v, want it to fail", err)
	}
	bn.feed(t, 250, n, false)
	bn.waitInForce(t, fillerPeer(n-1), true)
	bn.waitInForce(t, fillerPeer(20), false)
	must(t, bn.e.writePending(ctx, false)) // whatever the informers delivered since
	inMapsAsCompiled(t, bn.e, len(bn.local))

	for _, s := range bn.servers {
		if !bn.admits(t, s, fillerPeer(0)) || !bn.admits(t, s, fillerPeer(249)) || !bn.admits(t, s, fillerPeer(n)) || !bn.admits(t, s, moved) {
			t.Errorf("%s refuses a peer of a policy in force", s)
		}
		if bn.admits(t, s, fillerPeer(20)) || bn.admits(t, s, fillerPeer(30)) || bn.admits(t, s, fillerPeer(n+1)) {
			t.Errorf("%s admits a peer no policy admits (deleted, moved away, never created)", s)
		}
	}
	for _, c := range bn.clients {
		if bn.admits(t, c, netip.MustParseAddr("192.168.3.3")) {
			t.Errorf("client %s, whose policy does not fit its map, is not isolated", c)
		}
	}
	rej := bn.e.RejectedPolicies()
	if len(rej) != 1 || rej[0].Object.Ref.Name != "huge" || rej[0].Reason != ReasonTooLarge || len(rej[0].Pods) != len(bn.clients) {
		t.Errorf("rejected = %+v, want the oversized policy, too large for the %d clients", rej, len(bn.clients))
	}
	if b := observations(t, bn.e.Metrics().Sync); b >= n {
		t.Errorf("%d writes for a burst of %d changes: the burst was not folded", b, n)
	}

	// Deleting it lifts the clients' isolation.
	must(t, bn.dyn.Resource(CNPResource).Namespace(burstNS).Delete(ctx, "huge", metav1.DeleteOptions{}))
	deadline := time.Now().Add(time.Minute)
	for _, c := range bn.clients {
		for !bn.admits(t, c, netip.MustParseAddr("192.168.3.3")) {
			if time.Now().After(deadline) {
				t.Fatalf("client %s still isolated a minute after the oversized policy's deletion", c)
			}
			time.Sleep(time.Millisecond)
		}
	}
	// The report follows the write that lifted the isolation (the maps are
	// written before the writer takes the lock the report is read under).
	for rej := bn.e.RejectedPolicies(); len(rej) != 0; rej = bn.e.RejectedPolicies() {
		if time.Now().After(deadline) {
			t.Fatalf("rejected a minute after the oversized policy's deletion: %+v", rej)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestAgentStoppedMidBurst: the agent stops in the middle of a burst (what it had
// not written is lost with it) and the API goes on changing; the next agent on the
// same pinned datapath ends with every policy in force and the deleted ones gone.
func TestAgentStoppedMidBurst(t *testing.T) {
	bn := newBurstNode(t)
	ctx := context.Background()
	bn.feed(t, 0, 200, false)
	bn.stop()
	must(t, bn.kube.NetworkingV1().NetworkPolicies(burstNS).Delete(ctx, "filler-00010", metav1.DeleteOptions{}))
	for i := 200; i < 300; i++ {
		_, err := bn.kube.NetworkingV1().NetworkPolicies(burstNS).Create(ctx, filler(i, fillerPeer(i)), metav1.CreateOptions{})
		must(t, err)
	}
	bn.start(t)
	// Synced wrote everything before the endpoints were attached again: no wait.
	inMapsAsCompiled(t, bn.e, len(bn.local))
	for _, s := range bn.servers {
		if !bn.admits(t, s, fillerPeer(0)) || !bn.admits(t, s, fillerPeer(199)) || !bn.admits(t, s, fillerPeer(299)) {
			t.Errorf("%s refuses a peer of a policy in force after the restart", s)
		}
		if bn.admits(t, s, fillerPeer(10)) {
			t.Errorf("%s admits the peer of a policy deleted while the agent was down", s)
		}
	}
}
