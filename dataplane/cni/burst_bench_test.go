package cni_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	flatnetagent "github.com/flatnet/flatnet/dataplane/agent"
	"github.com/flatnet/flatnet/dataplane/endpointapi"
	"github.com/flatnet/flatnet/dataplane/enforce"
	"github.com/flatnet/flatnet/dataplane/ipam"
	"github.com/flatnet/flatnet/dataplane/podnet"
	"github.com/flatnet/flatnet/dataplane/podnet/podnettest"
	"github.com/flatnet/flatnet/internal/testenv"
)

// burstPods is issue 20's burst: 30 pods starting at once.
const burstPods = 30

// nodeAgent serves the real agent's endpoint registry (over the real policy
// enforcer) from the node's netns, timing each PUT: the agent's share of an ADD.
type nodeAgent struct {
	eps  *flatnetagent.Endpoints
	node ns.NetNS
	mu   sync.Mutex
	puts []time.Duration
}

func (a *nodeAgent) PutEndpoint(ctx context.Context, ep endpointapi.Endpoint) error {
	t0 := time.Now()
	err := a.node.Do(func(ns.NetNS) error { return a.eps.PutEndpoint(ctx, ep) })
	a.mu.Lock()
	a.puts = append(a.puts, time.Since(t0))
	a.mu.Unlock()
	return err
}

func (a *nodeAgent) DeleteEndpoint(ctx context.Context, id string) error {
	return a.node.Do(func(ns.NetNS) error { return a.eps.DeleteEndpoint(ctx, id) })
}

// burstNode is a node with the real agent (endpoint API, policy enforcer synced
// with burstPods pods of this node, half of them servers admitting the others)
// and a warm pool of size interface indexes.
func burstNode(b *testing.B, size int) (*node, *nodeAgent, *flatnetagent.Pool) {
	testenv.RequireRoot(b)
	ctx := context.Background()
	n := newNode(b, "n1", "10.224.0.2/16", ipam.Block{Index: -1, First: netip.MustParseAddr("10.224.1.0"), Size: 100})
	e, err := enforce.New(ctx, enforce.Config{NodeName: "n1", PinDir: filepath.Join(testenv.BPFFS(b), "flatnet")}, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { e.Close() })
	check := func(err error) {
		if err != nil {
			b.Fatal(err)
		}
	}
	check(e.UpsertNamespace(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "default"}}))
	check(e.UpsertNode(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "10.224.0.2"}}}}))
	check(e.UpsertNetworkPolicy(ctx, &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "servers", Namespace: "default"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"role": "server"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{
				{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"role": "client"}}}}}},
		}}))
	for i := range burstPods {
		role := []string{"server", "client"}[i%2]
		check(e.UpsertPod(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: fmt.Sprintf("pod-b%03d", i),
			Labels: map[string]string{"role": role}}, Spec: corev1.PodSpec{NodeName: "n1"}}))
	}
	check(n.NS.Do(func(ns.NetNS) error { return e.Synced(ctx) }))
	eps, err := flatnetagent.NewEndpoints(b.TempDir(), e, flatnetagent.NewMetrics())
	check(err)
	a := &nodeAgent{eps: eps, node: n.NS}
	n.socket = filepath.Join(b.TempDir(), "agent.sock")
	l, err := endpointapi.ListenUnix(n.socket)
	check(err)
	srv := &http.Server{Handler: endpointapi.NewHTTPHandler(a), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(l)
	b.Cleanup(func() { srv.Close() })
	pool := flatnetagent.NewPool(podnet.PoolDir(n.dataDir), size, e.Datapath(), slog.New(slog.DiscardHandler), flatnetagent.NewMetrics())
	return n, a, pool
}

// refill fills the pool to its size, as the agent does between bursts.
func refill(b *testing.B, n *node, pool *flatnetagent.Pool, size int) {
	for {
		free, _, err := podnet.FreePoolIndexes(podnet.PoolDir(n.dataDir))
		if err != nil {
			b.Fatal(err)
		}
		if len(free) >= size {
			return
		}
		if err := n.NS.Do(func(ns.NetNS) error { return pool.Refill(context.Background()) }); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBurstAdd is issue 20's CNI ADD under a 30-pod burst, in process on
// real netns: 30 ADDs of the real plugin binary started at once against the real
// agent (endpoint registry, policy enforcer, eBPF datapath), with a warm pool of
// 0 (every pod's maps installed on attach) or 30 indexes. Reported:
// each ADD's wall time (add-p50/p99-ms, from the runtime's call to its return),
// the agent's share of it (agent-p50/p99-ms, the PUT, queueing included) and the
// whole burst (burst-ms). The pods are deleted and the pool refilled between ops
// (untimed). Run with:
//
//	go test -run XXX -bench BurstAdd -benchtime 1x -count 6 ./dataplane/cni
func BenchmarkBurstAdd(b *testing.B) {
	for _, size := range []int{0, burstPods} {
		b.Run(fmt.Sprintf("pool=%d", size), func(b *testing.B) {
			n, a, pool := burstNode(b, size)
			list := n.conflist(nil)
			netnses := make([]ns.NetNS, burstPods)
			ids := make([]string, burstPods)
			for i := range netnses {
				netnses[i], ids[i] = podnettest.NewNS(b), fmt.Sprintf("b%03d", i)
			}
			var adds, bursts []time.Duration
			for range b.N {
				b.StopTimer()
				refill(b, n, pool, size)
				walls := make([]time.Duration, burstPods)
				errs := make([]error, burstPods)
				var wg sync.WaitGroup
				b.StartTimer()
				t0 := time.Now()
				for i := range burstPods {
					wg.Go(func() {
						errs[i] = n.NS.Do(func(ns.NetNS) error {
							start := time.Now()
							_, err := n.cniConfig().AddNetworkList(context.Background(), list, rt(ids[i], netnses[i]))
							walls[i] = time.Since(start)
							return err
						})
					})
				}
				wg.Wait()
				bursts = append(bursts, time.Since(t0))
				b.StopTimer()
				for i, err := range errs {
					if err != nil {
						b.Fatalf("ADD %d: %v", i, err)
					}
				}
				adds = append(adds, walls...)
				for i, err := range n.delAll(ids, netnses) {
					if err != nil {
						b.Fatalf("DEL %d: %v", i, err)
					}
				}
				b.StartTimer()
			}
			b.StopTimer()
			a.mu.Lock()
			puts := slices.Clone(a.puts)
			a.mu.Unlock()
			reportPercentiles(b, "add", adds)
			reportPercentiles(b, "agent", puts)
			slices.Sort(bursts)
			b.ReportMetric(ms(pct(bursts, 50)), "burst-ms")
		})
	}
}
