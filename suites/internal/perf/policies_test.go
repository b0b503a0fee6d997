package perf

import (
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flatnet/flatnet/fixtures/oracle"
)

// cluster is the run's placement as the oracle models it: the pods podSpecs
// makes (host-network ones are their nodes) at made-up addresses.
func cluster(t *testing.T) oracle.Cluster {
	t.Helper()
	c := oracle.Cluster{
		Namespaces: []oracle.Namespace{{Name: "perf-x", Labels: map[string]string{"kubernetes.io/metadata.name": "perf-x"}}},
		Nodes:      []oracle.Node{{Name: "a", IP: netip.MustParseAddr("10.226.0.2")}, {Name: "b", IP: netip.MustParseAddr("10.226.0.3")}},
	}
	ip := 10
	for _, p := range podSpecs("perf-x", "img", 12865, "a", "b") {
		if p.Spec.HostNetwork {
			continue
		}
		c.Pods = append(c.Pods, oracle.Pod{Namespace: p.Namespace, Name: p.Name, Labels: p.Labels, Node: p.Spec.NodeName,
			IP: netip.AddrFrom4([4]byte{10, 226, 1, byte(ip)})})
		ip++
	}
	return c
}

// TestPoliciesAdmitTheClientsOnly asks the oracle (written from the
// NetworkPolicy spec, independent of this package) what the generated sets do:
// with 1 and 1,000 policies every server is isolated and admits the pod client
// and the host client of the other node on TCP and UDP, and refuses the
// outsider; so the datapath carries n rules and the measured paths stay open.
func TestPoliciesAdmitTheClientsOnly(t *testing.T) {
	c := cluster(t)
	for _, n := range []int{1, 1000} {
		nps, err := Policies("perf-x", n, 12865, []string{"10.226.0.2", "10.226.0.3"})
		if err != nil {
			t.Fatal(err)
		}
		if len(nps) != n {
			t.Fatalf("%d policies for n=%d", len(nps), n)
		}
		names, cidrs := map[string]bool{}, map[string]bool{}
		for _, np := range nps {
			names[np.Name] = true
			for _, peer := range np.Spec.Ingress[0].From {
				if peer.IPBlock != nil {
					cidrs[peer.IPBlock.CIDR] = true
				}
			}
		}
		if len(names) != n || len(cidrs) != n+1 { // the node addresses, then one per filler
			t.Errorf("n=%d: %d distinct names, %d distinct CIDRs: every policy must be distinct", n, len(names), len(cidrs))
		}
		o, err := oracle.New(c, oracle.PolicySet{NetworkPolicies: nps})
		if err != nil {
			t.Fatalf("n=%d: the oracle refuses the generated policies: %v", n, err)
		}
		for _, want := range []struct {
			from, to oracle.Peer
			allowed  bool
		}{
			{oracle.PodPeer("perf-x", clientPod), oracle.PodPeer("perf-x", serverAPod), true},
			{oracle.PodPeer("perf-x", clientPod), oracle.PodPeer("perf-x", serverBPod), true},
			{oracle.NodePeer("a"), oracle.PodPeer("perf-x", serverBPod), true},
			{oracle.PodPeer("perf-x", outsiderPod), oracle.PodPeer("perf-x", serverAPod), false},
			{oracle.PodPeer("perf-x", outsiderPod), oracle.PodPeer("perf-x", serverBPod), false},
		} {
			for _, proto := range []oracle.Protocol{oracle.TCP, oracle.UDP} {
				v, err := o.Decide(want.from, want.to, 12865, proto)
				if err != nil {
					t.Fatal(err)
				}
				if v.Allowed != want.allowed || !v.Ingress.Isolated {
					t.Errorf("n=%d %s → %s %s: %s; want allowed=%v with the server isolated", n, want.from, want.to, proto, v, want.allowed)
				}
			}
		}
	}
}

func TestPoliciesBadCount(t *testing.T) {
	if nps, err := Policies("perf-x", 0, 12865, nil); err != nil || nps != nil {
		t.Errorf("n=0: %v, %v; want no policy", nps, err)
	}
	for _, n := range []int{-1, MaxPolicies + 1} {
		if _, err := Policies("perf-x", n, 12865, nil); err == nil || !strings.Contains(err.Error(), "--policies") {
			t.Errorf("n=%d: %v; want an error naming --policies", n, err)
		}
	}
	if _, err := Policies("perf-x", 2, 12865, []string{"not-an-ip"}); err == nil {
		t.Error("a bad node address was accepted")
	}
}

func TestNodesSkipsTaintedAndNotReady(t *testing.T) {
	node := func(name string, ready bool, taint corev1.TaintEffect) corev1.Node {
		n := corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
		status := corev1.ConditionFalse
		if ready {
			status = corev1.ConditionTrue
		}
		n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: status}}
		if taint != "" {
			n.Spec.Taints = []corev1.Taint{{Key: "k", Effect: taint}}
		}
		return n
	}
	a, b, err := Nodes([]corev1.Node{
		node("w3", true, ""), node("cp", true, corev1.TaintEffectNoSchedule), node("w1", false, ""),
		node("w2", true, corev1.TaintEffectPreferNoSchedule), node("w4", true, corev1.TaintEffectNoExecute),
	})
	if err != nil || a != "w2" || b != "w3" {
		t.Errorf("Nodes: %q %q %v; want w2 and w3", a, b, err)
	}
	if a, b, err := Nodes([]corev1.Node{node("w1", true, "")}); err != nil || a != "w1" || b != "" {
		t.Errorf("one node: %q %q %v", a, b, err)
	}
	if _, _, err := Nodes([]corev1.Node{node("cp", true, corev1.TaintEffectNoSchedule)}); err == nil {
		t.Error("no schedulable node: no error")
	}
}
