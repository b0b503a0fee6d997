package enforce

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flatnet/flatnet/dataplane/endpointapi"
	"github.com/flatnet/flatnet/dataplane/podnet/podnettest"
)

// attachNode is a synced Enforcer with n pods of this node not attached yet,
// alternately servers and clients, the servers admitting the clients only.
func attachNode(tb testing.TB, n int) (*Enforcer, ns.NetNS, []endpointapi.Endpoint) {
	ctx := context.Background()
	pin, node := newTestNode(tb)
	e, err := New(ctx, Config{NodeName: "n1", PinDir: pin}, slog.New(slog.DiscardHandler))
	must(tb, err)
	tb.Cleanup(func() { e.Close() })
	must(tb, e.UpsertNamespace(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: burstNS}}))
	must(tb, e.UpsertNode(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "10.224.0.2"}}}}))
	base := burstPolicy("base", &metav1.LabelSelector{MatchLabels: map[string]string{"role": "client"}}, nil)
	must(tb, e.UpsertNetworkPolicy(ctx, &base))
	var eps []endpointapi.Endpoint
	for i := range n {
		role := []string{"server", "client"}[i%2]
		name := fmt.Sprintf("%s-%d", role, i)
		must(tb, e.UpsertPod(ctx, pod(burstNS, name, "", "n1", map[string]string{"role": role})))
		host := fmt.Sprintf("fna%d", i)
		eps = append(eps, endpointapi.Endpoint{ContainerID: "c-" + name, PodNamespace: burstNS, PodName: name,
			HostIfName: host, HostIfIndex: podnettest.AddVeth(tb, node, host, host+"p"), PodIfName: "eth0",
			IP: netip.AddrFrom4([4]byte{10, 224, 1, byte(10 + i)})})
	}
	must(tb, node.Do(func(ns.NetNS) error { return e.Synced(ctx) }))
	return e, node, eps
}

// attachAll attaches eps concurrently, as a burst of CNI ADDs does, and returns
// each call's wall time.
func attachAll(tb testing.TB, e *Enforcer, node ns.NetNS, eps []endpointapi.Endpoint) []time.Duration {
	return concurrently(tb, node, eps, e.Attach)
}

// detachAll detaches eps concurrently, as a burst of CNI DELs does, and returns
// each call's wall time.
func detachAll(tb testing.TB, e *Enforcer, node ns.NetNS, eps []endpointapi.Endpoint) []time.Duration {
	return concurrently(tb, node, eps, e.Detach)
}

// concurrently calls op for every endpoint at once in node's netns and
// returns each call's wall time.
func concurrently(tb testing.TB, node ns.NetNS, eps []endpointapi.Endpoint, op func(context.Context, endpointapi.Endpoint) error) []time.Duration {
	took := make([]time.Duration, len(eps))
	var wg sync.WaitGroup
	for i, ep := range eps {
		wg.Go(func() {
			t0 := time.Now()
			if err := node.Do(func(ns.NetNS) error { return op(context.Background(), ep) }); err != nil {
				tb.Error(err)
			}
			took[i] = time.Since(t0)
		})
	}
	wg.Wait()
	return took
}

// BenchmarkConcurrentDetach measures a burst of 30 pod deletions in the agent:
// their CNI DELs reaching Detach at once, each call's wall time (p50-ms,
// p99-ms: what a DEL waits for the agent, and what ADDs meanwhile queue
// behind). The pods are attached again between ops (untimed).
func BenchmarkConcurrentDetach(b *testing.B) {
	e, node, eps := attachNode(b, 30)
	var walls []time.Duration
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		attachAll(b, e, node, eps)
		b.StartTimer()
		walls = append(walls, detachAll(b, e, node, eps)...)
	}
	slices.Sort(walls)
	q := func(p float64) float64 { return float64(walls[int(p*float64(len(walls)-1))].Microseconds()) / 1000 }
	b.ReportMetric(q(0.5), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
}

// BenchmarkConcurrentAttach measures issue 20's pod burst in the agent: 30 pods'
// CNI ADDs reaching Attach at once, each call's wall time from its start to its
// return (p50-ms, p99-ms: the share of a pod's start-up the agent adds, queueing
// behind the others included). The pods are detached between ops (untimed).
func BenchmarkConcurrentAttach(b *testing.B) {
	e, node, eps := attachNode(b, 30)
	var walls []time.Duration
	b.ResetTimer()
	for range b.N {
		walls = append(walls, attachAll(b, e, node, eps)...)
		b.StopTimer()
		for _, ep := range eps {
			must(b, node.Do(func(ns.NetNS) error { return e.Detach(context.Background(), ep) }))
		}
		b.StartTimer()
	}
	slices.Sort(walls)
	q := func(p float64) float64 { return float64(walls[int(p*float64(len(walls)-1))].Microseconds()) / 1000 }
	b.ReportMetric(q(0.5), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
}
