package compile

import (
	"net/netip"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flatnet/flatnet/dataplane/identity"
)

// TestWorkloadsOf: the workload Hubble reports for pods as Kubernetes' controllers
// create them. Expected values follow Cilium's pkg/k8s/utils workload tests and the
// controllers' naming: a Deployment's ReplicaSet is "<deployment>-<pod-template-hash>",
// a CronJob's Job "<cronjob>-<scheduled minute>".
func TestWorkloadsOf(t *testing.T) {
	yes, no := true, false
	owner := func(kind, name string, controller *bool) []metav1.OwnerReference {
		return []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: kind, Name: name, Controller: controller}}
	}
	for _, tc := range []struct {
		name         string
		generateName string
		labels       map[string]string
		owners       []metav1.OwnerReference
		want         []Workload
	}{
		{"Deployment's pod", "web-5d8f7c9b6-", map[string]string{"pod-template-hash": "5d8f7c9b6"},
			owner("ReplicaSet", "web-5d8f7c9b6", &yes), []Workload{{Name: "web", Kind: "Deployment"}}},
		{"bare ReplicaSet's pod", "rs-", nil, owner("ReplicaSet", "rs", &yes), []Workload{{Name: "rs", Kind: "ReplicaSet"}}},
		{"ReplicaSet whose name lacks the hash", "rs-", map[string]string{"pod-template-hash": "abc"},
			owner("ReplicaSet", "rs", &yes), []Workload{{Name: "rs", Kind: "ReplicaSet"}}},
		{"StatefulSet's pod", "db-", nil, owner("StatefulSet", "db", &yes), []Workload{{Name: "db", Kind: "StatefulSet"}}},
		{"DaemonSet's pod", "agent-", nil, owner("DaemonSet", "agent", &yes), []Workload{{Name: "agent", Kind: "DaemonSet"}}},
		{"CronJob's pod", "backup-29412345-", nil, owner("Job", "backup-29412345", &yes),
			[]Workload{{Name: "backup", Kind: "CronJob"}}},
		{"Job's pod", "migrate-", nil, owner("Job", "migrate", &yes), []Workload{{Name: "migrate", Kind: "Job"}}},
		{"Job with a short number", "run-42-", nil, owner("Job", "run-42", &yes), []Workload{{Name: "run-42", Kind: "Job"}}},
		{"DeploymentConfig's pod", "shop-1-", map[string]string{"deploymentconfig": "shop"},
			owner("ReplicationController", "shop-1", &yes), []Workload{{Name: "shop", Kind: "DeploymentConfig"}}},
		{"owner that is not the controller", "x-", nil, owner("ReplicaSet", "x", &no), nil},
		{"no generated name (a named or static pod)", "", nil, owner("Node", "kind-worker", &yes), nil},
		{"no owner", "y-", nil, nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: tc.generateName + "x1", GenerateName: tc.generateName,
				Labels: tc.labels, OwnerReferences: tc.owners}}
			if got := WorkloadsOf(p); !slices.Equal(got, tc.want) {
				t.Errorf("WorkloadsOf = %+v, want %+v", got, tc.want)
			}
			if got := PodFromCore(p, false).Workloads; !slices.Equal(got, tc.want) {
				t.Errorf("PodFromCore(...).Workloads = %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestSnapshotPeerWorkloads: the published snapshot names a pod's workload, follows
// a change of it, and shares the compiler's slice instead of copying it per lookup.
func TestSnapshotPeerWorkloads(t *testing.T) {
	c := New(identity.NewAllocator())
	ip := netip.MustParseAddr("10.0.0.7")
	pod := Pod{Namespace: "ns", Name: "web-5d8f7c9b6-x1", Labels: map[string]string{"app": "web"}, IP: ip,
		Workloads: []Workload{{Name: "web", Kind: "Deployment"}}}
	mustDo(t, c.UpsertPod(pod))
	c.Flush()
	a, ok := c.Snapshot().PeerOf(ip)
	b, _ := c.Snapshot().PeerOf(ip)
	if !ok || !slices.Equal(a.Workloads, pod.Workloads) {
		t.Fatalf("PeerOf = %+v, %v; want the Deployment web", a, ok)
	}
	if &a.Workloads[0] != &b.Workloads[0] {
		t.Error("two lookups returned two copies of the workloads: flows must share the snapshot's")
	}
	pod.Workloads[0].Name = "changed by the caller" // UpsertPod must have kept its own copy
	if p, _ := c.Snapshot().PeerOf(ip); p.Workloads[0].Name != "web" {
		t.Errorf("the snapshot's workload changed with the caller's slice: %+v", p.Workloads)
	}
	pod.Workloads = []Workload{{Name: "web-canary", Kind: "Deployment"}}
	mustDo(t, c.UpsertPod(pod))
	c.Flush()
	if p, _ := c.Snapshot().PeerOf(ip); !slices.Equal(p.Workloads, pod.Workloads) {
		t.Errorf("after the pod's owner changed: PeerOf = %+v, want %+v", p.Workloads, pod.Workloads)
	}
}

// TestWorkloadsShared: a Deployment's replicas share one workload slice (their
// peers and flows point to it); the table forgets a workload with its last pod,
// whether the pod is deleted or changes owner.
func TestWorkloadsShared(t *testing.T) {
	c := New(identity.NewAllocator())
	web := []Workload{{Name: "web", Kind: "Deployment"}}
	for i := range 3 {
		mustDo(t, c.UpsertPod(Pod{Namespace: "ns", Name: "web-" + string(rune('a'+i)), Labels: map[string]string{"app": "web"},
			IP: netip.AddrFrom4([4]byte{10, 0, 0, byte(1 + i)}), Workloads: slices.Clone(web)}))
	}
	mustDo(t, c.UpsertPod(Pod{Namespace: "ns", Name: "db-0", IP: netip.MustParseAddr("10.0.0.9"),
		Workloads: []Workload{{Name: "db", Kind: "StatefulSet"}}}))
	c.Flush()
	a, _ := c.Snapshot().PeerOf(netip.MustParseAddr("10.0.0.1"))
	b, _ := c.Snapshot().PeerOf(netip.MustParseAddr("10.0.0.3"))
	if !slices.Equal(a.Workloads, web) || &a.Workloads[0] != &b.Workloads[0] {
		t.Errorf("replicas' workloads %v at %p and %v at %p: want web's, one slice", a.Workloads, a.Workloads, b.Workloads, b.Workloads)
	}
	if n := c.workloads.shared[web[0]].refs; n != 3 {
		t.Errorf("web's slice held by %d pods, want 3", n)
	}
	c.DeletePod("ns", "web-a")
	mustDo(t, c.UpsertPod(Pod{Namespace: "ns", Name: "web-b", IP: netip.MustParseAddr("10.0.0.2"),
		Workloads: []Workload{{Name: "web-canary", Kind: "Deployment"}}}))
	mustDo(t, c.UpsertPod(Pod{Namespace: "ns", Name: "web-c", IP: netip.MustParseAddr("10.0.0.3")}))
	c.DeletePod("ns", "db-0")
	if _, ok := c.workloads.shared[web[0]]; ok || len(c.workloads.shared) != 1 {
		t.Errorf("after web's pods left it and db-0 went: table %v, want only web-canary", c.workloads.shared)
	}
}
