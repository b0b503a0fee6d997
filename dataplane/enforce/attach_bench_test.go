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

// BenchmarkConcurrentAttach measures issue 20's pod burst in the agent: 30 pods'
// CNI ADDs reaching Attach at once, each call's wall time from its start to its
// return (p50-ms, p99-ms: the share of a pod's start-up the agent adds, queueing
// behind the others included). The pods are detached between ops (untimed).
func BenchmarkConcurrentAttach(b *testing.B) {
	const pods = 30
	ctx := context.Background()
	pin, node := newTestNode(b)
	e, err := New(ctx, Config{NodeName: "n1", PinDir: pin}, slog.New(slog.DiscardHandler))
	must(b, err)
	defer e.Close()
	must(b, e.UpsertNamespace(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: burstNS}}))
	must(b, e.UpsertNode(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "10.224.0.2"}}}}))
	base := burstPolicy("base", &metav1.LabelSelector{MatchLabels: map[string]string{"role": "client"}}, nil)
	must(b, e.UpsertNetworkPolicy(ctx, &base))
	var eps []endpointapi.Endpoint
	for i := range pods {
		role := []string{"server", "client"}[i%2]
		name := fmt.Sprintf("%s-%d", role, i)
		must(b, e.UpsertPod(ctx, pod(burstNS, name, "", "n1", map[string]string{"role": role})))
		host := fmt.Sprintf("fna%d", i)
		eps = append(eps, endpointapi.Endpoint{ContainerID: "c-" + name, PodNamespace: burstNS, PodName: name,
			HostIfName: host, HostIfIndex: podnettest.AddVeth(b, node, host, host+"p"), PodIfName: "eth0",
			IP: netip.AddrFrom4([4]byte{10, 224, 1, byte(10 + i)})})
	}
	must(b, node.Do(func(ns.NetNS) error { return e.Synced(ctx) }))

	var walls []time.Duration
	b.ResetTimer()
	for range b.N {
		took := make([]time.Duration, pods)
		var wg sync.WaitGroup
		for i, ep := range eps {
			wg.Go(func() {
				t0 := time.Now()
				must(b, node.Do(func(ns.NetNS) error { return e.Attach(ctx, ep) }))
				took[i] = time.Since(t0)
			})
		}
		wg.Wait()
		walls = append(walls, took...)
		b.StopTimer()
		for _, ep := range eps {
			must(b, node.Do(func(ns.NetNS) error { return e.Detach(ctx, ep) }))
		}
		b.StartTimer()
	}
	slices.Sort(walls)
	q := func(p float64) float64 { return float64(walls[int(p*float64(len(walls)-1))].Microseconds()) / 1000 }
	b.ReportMetric(q(0.5), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
}
