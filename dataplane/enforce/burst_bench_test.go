package enforce

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	dto "github.com/prometheus/client_model/go"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/flatnet/flatnet/dataplane/endpointapi"
	"github.com/flatnet/flatnet/dataplane/podnet/podnettest"
	"github.com/flatnet/flatnet/dataplane/policy"
)

// burstNode is an agent's Enforcer fed by real informers (over a fake API server)
// with burstPods pods, a third of them attached to veths in a test netns, and the
// servers isolated by a base policy admitting the clients only.
type burstNode struct {
	e       *Enforcer
	kube    *fake.Clientset
	factory informers.SharedInformerFactory
	servers []string // local server pods, by name
}

const (
	burstPods = 48
	burstNS   = "perf"
	burstPort = 8080
)

func newBurstNode(b *testing.B) *burstNode {
	ctx, cancel := context.WithCancel(context.Background())
	pin, node := newTestNode(b)
	e, err := New(ctx, Config{NodeName: "n1", PinDir: pin}, slog.New(slog.DiscardHandler))
	must(b, err)
	objs := []runtime.Object{&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: burstNS}}}
	for i := 1; i <= 3; i++ {
		objs = append(objs, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("n%d", i)},
			Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: fmt.Sprintf("10.224.0.%d", i+1)}}}})
	}
	bn := &burstNode{e: e}
	var local []endpointapi.Endpoint
	for i := range burstPods {
		role := []string{"server", "client"}[i%2]
		name, nodeName, ip := fmt.Sprintf("%s-%d", role, i), fmt.Sprintf("n%d", i%3+1), fmt.Sprintf("10.224.1.%d", i+10)
		p := pod(burstNS, name, ip, nodeName, map[string]string{"role": role})
		if nodeName == "n1" {
			p.Status.PodIP = "" // the API learns it after the CNI ADD
			host := fmt.Sprintf("fnb%d", i)
			local = append(local, endpointapi.Endpoint{ContainerID: "c-" + name, PodNamespace: burstNS, PodName: name,
				HostIfName: host, HostIfIndex: podnettest.AddVeth(b, node, host, host+"p"), PodIfName: "eth0", IP: netip.MustParseAddr(ip)})
			if role == "server" {
				bn.servers = append(bn.servers, name)
			}
		}
		objs = append(objs, p)
	}
	base := burstPolicy("base", &metav1.LabelSelector{MatchLabels: map[string]string{"role": "client"}}, nil)
	objs = append(objs, &base)
	bn.kube = fake.NewSimpleClientset(objs...)
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{
		CNPResource: "CiliumNetworkPolicyList", CCNPResource: "CiliumClusterwideNetworkPolicyList"})
	bn.factory = informers.NewSharedInformerFactory(bn.kube, 0)
	must(b, e.Watch(ctx, bn.factory, bn.kube, dyn))
	bn.factory.Start(ctx.Done())
	done := make(chan error, 1)
	go func() { done <- node.Do(func(ns.NetNS) error { return e.Run(ctx) }) }()
	b.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			b.Error(err)
		}
		bn.factory.Shutdown()
		e.Close()
	})
	must(b, e.waitSynced(ctx))
	for _, ep := range local {
		must(b, node.Do(func(ns.NetNS) error { return e.Attach(ctx, ep) }))
	}
	return bn
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

// feed creates (or deletes) the n filler policies one by one through the API, as a
// user's burst reaches the agent's informer. The fake API's watch buffers 100
// events: every 50 the informer's cache (not the agent) is let catch up.
func (bn *burstNode) feed(b *testing.B, n int, del bool) {
	ctx := context.Background()
	api := bn.kube.NetworkingV1().NetworkPolicies(burstNS)
	cached := bn.factory.Networking().V1().NetworkPolicies().Lister().NetworkPolicies(burstNS)
	for i := range n {
		name := fmt.Sprintf("filler-%05d", i)
		if del {
			must(b, api.Delete(ctx, name, metav1.DeleteOptions{}))
		} else {
			np := burstPolicy(name, nil, &networkingv1.IPBlock{CIDR: fillerPeer(i).String() + "/32"})
			_, err := api.Create(ctx, &np, metav1.CreateOptions{})
			must(b, err)
		}
		if i%50 == 49 {
			want := i + 2 // the base policy and the fillers so far
			if del {
				want = n - i
			}
			for {
				have, err := cached.List(labels.Everything())
				must(b, err)
				if len(have) == want {
					break
				}
				time.Sleep(100 * time.Microsecond)
			}
		}
	}
}

// waitInForce polls the datapath's maps until every local server admits (or, after
// the deletes, refuses) the peer of filler policy i.
func (bn *burstNode) waitInForce(b *testing.B, i int, admitted bool) {
	for _, s := range bn.servers {
		for {
			md, _, err := bn.e.LookupMaps(burstNS, s, policy.Ingress, fillerPeer(i), policy.ProtoTCP, burstPort)
			must(b, err)
			if md.Allowed == admitted {
				break
			}
			time.Sleep(time.Millisecond)
		}
	}
}

func (bn *burstNode) writes(b *testing.B) uint64 {
	var m dto.Metric
	must(b, bn.e.Metrics().Sync.Write(&m))
	return m.GetHistogram().GetSampleCount()
}

// BenchmarkPolicyBurst measures issue 19/20's policy burst in the agent: the time
// from the first of n NetworkPolicies created one by one (each selecting every
// server, admitting one /32, as `make perf --policies n` does) to all of them in
// force in the datapath's maps of the node's servers, with 48 pods (16 on this
// node). writes/op counts the datapath writes (bpf.Apply) the burst cost. Between
// ops the policies are deleted again (untimed).
func BenchmarkPolicyBurst(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("policies=%d", n), func(b *testing.B) {
			bn := newBurstNode(b)
			var writes uint64
			b.ResetTimer()
			for range b.N {
				w0 := bn.writes(b)
				bn.feed(b, n, false)
				bn.waitInForce(b, n-1, true)
				writes += bn.writes(b) - w0
				b.StopTimer()
				bn.feed(b, n, true)
				bn.waitInForce(b, n-1, false)
				bn.waitInForce(b, 0, false)
				b.StartTimer()
			}
			b.ReportMetric(float64(writes)/float64(b.N), "writes/op")
		})
	}
}
