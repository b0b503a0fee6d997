// Package compiletest builds a simulated cluster in a compiler from real
// NetworkPolicy objects, for the benchmarks of a policy change's way from the
// informer to the datapath (dataplane/compile, and dataplane/bpf for the writes).
package compiletest

import (
	"fmt"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/flatnet/flatnet/dataplane/compile"
	"github.com/flatnet/flatnet/dataplane/policy"
)

// Shape is the size of a simulated cluster: Pods spread evenly over Namespaces
// (Apps distinct app labels in each), Policies spread likewise, and every
// LocalEvery-th pod an endpoint of the node being compiled for.
type Shape struct {
	Namespaces, Pods, Policies, Apps, LocalEvery int
}

// Issue20 is the cluster of issue 20's policy-apply goal: 1,000 policies and 500
// pods present, on a node holding a third of the pods.
var Issue20 = Shape{Namespaces: 50, Pods: 500, Policies: 1000, Apps: 5, LocalEvery: 3}

// Namespace is the name of namespace i.
func Namespace(i int) string { return fmt.Sprintf("ns%d", i) }

// Build feeds s's namespaces, pods and policies to c and flushes once, as an agent
// does after its first sync.
func Build(c *compile.Compiler, s Shape) error {
	for n := 0; n < s.Namespaces; n++ {
		ns := compile.Namespace{Name: Namespace(n), Labels: map[string]string{"team": fmt.Sprintf("team%d", n%10)}}
		if err := c.UpsertNamespace(ns); err != nil {
			return err
		}
	}
	for i := 0; i < s.Pods; i++ {
		if err := c.UpsertPod(s.Pod(i)); err != nil {
			return err
		}
	}
	for i := 0; i < s.Policies; i++ {
		np := s.NetworkPolicy(i)
		p, err := policy.FromNetworkPolicy(np)
		if err != nil {
			return fmt.Errorf("background policy %d: %w", i, err)
		}
		if err := c.UpsertPolicy(Key(np), []*policy.Policy{p}); err != nil {
			return err
		}
	}
	c.Flush()
	return nil
}

// Pod is pod i: in namespace i mod Namespaces, one of Apps app labels, a named port.
func (s Shape) Pod(i int) compile.Pod {
	return compile.Pod{
		Namespace: Namespace(i % s.Namespaces), Name: fmt.Sprintf("pod%d", i),
		Labels: map[string]string{"app": fmt.Sprintf("app%d", (i/s.Namespaces)%s.Apps)},
		IP:     netip.AddrFrom4([4]byte{10, 64, byte(i >> 8), byte(i)}),
		Local:  s.LocalEvery > 0 && i%s.LocalEvery == 0,
		Ports:  []compile.NamedPort{{Name: "http", Protocol: policy.ProtoTCP, Port: 8080}},
	}
}

// NetworkPolicy is background policy i: it selects one app of its namespace and
// allows ingress on the named port from another app of the namespace and from the
// namespaces of one team, egress to that app and to an ipBlock on 443.
func (s Shape) NetworkPolicy(i int) *networkingv1.NetworkPolicy {
	app := func(k int) *metav1.LabelSelector {
		return &metav1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("app%d", k%s.Apps)}}
	}
	tcp := ptr(corev1.ProtocolTCP)
	http, https := intstr.FromString("http"), intstr.FromInt32(443)
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: Namespace(i % s.Namespaces), Name: fmt.Sprintf("bg%d", i)},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: *app(i),
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From: []networkingv1.NetworkPolicyPeer{{PodSelector: app(i + 1)},
					{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": fmt.Sprintf("team%d", i%10)}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: tcp, Port: &http}},
			}},
			Egress: []networkingv1.NetworkPolicyEgressRule{
				{To: []networkingv1.NetworkPolicyPeer{{PodSelector: app(i + 1)}}},
				{To: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: fmt.Sprintf("172.%d.0.0/16", 16+i%16)}}},
					Ports: []networkingv1.NetworkPolicyPort{{Protocol: tcp, Port: &https}}},
			},
		},
	}
}

// DenyIngress is the change the cluster's apply -> enforced benchmark makes
// (suites/netpol): a default-deny ingress policy on every pod of namespace.
func DenyIngress(namespace string) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: "deny-ingress"},
		Spec:       networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}},
	}
}

// Key is the compiler's key of a NetworkPolicy, as the agent feeds it.
func Key(np *networkingv1.NetworkPolicy) string {
	return compile.PolicyKey(policy.Ref{Kind: policy.KindNetworkPolicy, Namespace: np.Namespace, Name: np.Name})
}

func ptr[T any](v T) *T { return &v }
