package agent

import (
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flatnet/flatnet/dataplane/endpointapi"
	"github.com/flatnet/flatnet/dataplane/ipam/nodealloc"
)

func TestLeakFinderGivesEveryAllocationItsGracePeriod(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	grace := time.Minute
	alloc := func(id, ip string) nodealloc.Allocation {
		return nodealloc.Allocation{IP: netip.MustParseAddr(ip), Attachment: nodealloc.Attachment{ContainerID: id, IfName: "eth0"}}
	}
	pod := func(name, ip string, phase corev1.PodPhase) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name}, Status: corev1.PodStatus{Phase: phase, PodIP: ip}}
	}
	allocs := []nodealloc.Allocation{
		alloc("running", "10.224.0.40"),  // a live pod carries it
		alloc("starting", "10.224.0.41"), // its pod exists, no address reported yet
		alloc("replaced", "10.224.0.42"), // its pod runs with another address now
		alloc("finished", "10.224.0.43"), // its pod Succeeded
		alloc("orphan", "10.224.0.44"),   // no endpoint, no pod
		alloc("fresh", "10.224.0.45"),    // endpoint just registered, pod not seen yet
	}
	pods := []*corev1.Pod{
		pod("p-running", "10.224.0.40", corev1.PodRunning),
		pod("p-starting", "", corev1.PodPending),
		pod("p-replaced", "10.224.0.50", corev1.PodRunning),
		pod("p-finished", "10.224.0.43", corev1.PodSucceeded),
	}
	created := map[string]time.Time{"starting": t0.Add(-time.Hour), "replaced": t0.Add(-time.Hour), "finished": t0.Add(-time.Hour), "fresh": t0}
	endpoint := func(id string) (Record, bool) {
		c, ok := created[id]
		if !ok {
			return Record{}, false
		}
		return Record{Endpoint: endpointapi.Endpoint{ContainerID: id, PodNamespace: "ns", PodName: "p-" + id}, Created: c}, true
	}
	f := LeakFinder{Grace: grace}
	ids := func(l []nodealloc.Allocation) map[string]bool {
		m := map[string]bool{}
		for _, a := range l {
			m[a.ContainerID] = true
		}
		return m
	}
	// First sight: nothing is a leak yet, however old.
	if got := f.Find(t0, allocs, pods, endpoint); len(got) != 0 {
		t.Fatalf("leaks at first sight: %v", got)
	}
	// Within the grace period: still nothing.
	if got := f.Find(t0.Add(grace/2), allocs, pods, endpoint); len(got) != 0 {
		t.Fatalf("leaks within the grace period: %v", got)
	}
	// After it: exactly the unexplained ones.
	got := ids(f.Find(t0.Add(grace+time.Second), allocs, pods, endpoint))
	want := map[string]bool{"replaced": true, "finished": true, "orphan": true}
	if len(got) != len(want) {
		t.Fatalf("leaks %v, want %v", got, want)
	}
	for id := range want {
		if !got[id] {
			t.Fatalf("leaks %v, want %v", got, want)
		}
	}
	// An allocation explained again (its pod reports the address) starts over.
	pods[2].Status.PodIP = "10.224.0.42"
	if got := ids(f.Find(t0.Add(2*grace), allocs, pods, endpoint)); got["replaced"] {
		t.Fatal("an allocation whose pod now carries it is still a leak")
	}
}
