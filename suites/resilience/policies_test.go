//go:build e2e

package resilience

import (
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/flatnet/flatnet/fixtures/oracle"
)

// The suite's policies over pods a, b and c of namespace ns, each step of the
// churn changing exactly one object, so every answer seen while it applies
// is the oracle's before or after it (two objects changing could show a
// state between them that neither table has).
type policyBook struct {
	isolateB   networkingv1.NetworkPolicy // b takes no ingress
	bFromA80   networkingv1.NetworkPolicy // b takes a on 80
	bFromA81   networkingv1.NetworkPolicy // the same object updated to 81
	cEgressToA networkingv1.NetworkPolicy // c sends only to a
	cFromB81   oracle.CiliumPolicy        // c takes only b, on 81
	cFromB80   oracle.CiliumPolicy        // the same object updated to 80
}

func newPolicyBook(ns string) policyBook {
	sel := func(pod string) metav1.LabelSelector {
		return metav1.LabelSelector{MatchLabels: map[string]string{"pod": pod}}
	}
	np := func(name, pod string, types ...networkingv1.PolicyType) networkingv1.NetworkPolicy {
		return networkingv1.NetworkPolicy{
			TypeMeta:   metav1.TypeMeta{APIVersion: "networking.k8s.io/v1", Kind: "NetworkPolicy"},
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			Spec:       networkingv1.NetworkPolicySpec{PodSelector: sel(pod), PolicyTypes: types},
		}
	}
	tcp := corev1.ProtocolTCP
	bFromA := func(port int32) networkingv1.NetworkPolicy {
		p := np("b-from-a", "b", networkingv1.PolicyTypeIngress)
		p.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{
			From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"pod": "a"}}}},
			Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &intstr.IntOrString{Type: intstr.Int, IntVal: port}}},
		}}
		return p
	}
	cEgress := np("c-egress-to-a", "c", networkingv1.PolicyTypeEgress)
	cEgress.Spec.Egress = []networkingv1.NetworkPolicyEgressRule{{
		To: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"pod": "a"}}}},
	}}
	cFromB := func(port string) oracle.CiliumPolicy {
		return oracle.CiliumPolicy{
			APIVersion: oracle.CiliumAPIVersion, Kind: oracle.KindCNP,
			Metadata: oracle.CiliumObjectMeta{Namespace: ns, Name: "c-from-b"},
			Spec: &oracle.CiliumRule{
				Description:      "c takes only b, on one port",
				EndpointSelector: sel("c"),
				Ingress: []oracle.CiliumIngressRule{{
					FromEndpoints: []metav1.LabelSelector{sel("b")},
					ToPorts:       []oracle.CiliumPortRule{{Ports: []oracle.CiliumPortProtocol{{Port: port, Protocol: "TCP"}}}},
				}},
			},
		}
	}
	return policyBook{
		isolateB: np("isolate-b", "b", networkingv1.PolicyTypeIngress),
		bFromA80: bFromA(80), bFromA81: bFromA(81),
		cEgressToA: cEgress,
		cFromB81:   cFromB("81"), cFromB80: cFromB("80"),
	}
}

// steady is the set in force while an agent or a node goes away: some paths
// open, some shut, on every pod.
func (b policyBook) steady() oracle.PolicySet {
	return set([]networkingv1.NetworkPolicy{b.isolateB, b.bFromA80}, b.cFromB81)
}

// churn is one cycle of policy sets, from none back to none: creations,
// updates and deletions of NetworkPolicies and a CiliumNetworkPolicy.
func (b policyBook) churn() []oracle.PolicySet {
	nps := func(p ...networkingv1.NetworkPolicy) []networkingv1.NetworkPolicy { return p }
	return []oracle.PolicySet{
		{},
		set(nps(b.isolateB)),
		set(nps(b.isolateB, b.bFromA80)),
		set(nps(b.isolateB, b.bFromA80), b.cFromB81),
		set(nps(b.isolateB, b.bFromA81), b.cFromB81),
		set(nps(b.bFromA81), b.cFromB81),
		set(nps(b.bFromA81, b.cEgressToA), b.cFromB81),
		set(nps(b.bFromA81, b.cEgressToA), b.cFromB80),
		set(nps(b.bFromA81, b.cEgressToA)),
		set(nps(b.cEgressToA)),
	}
}

func set(nps []networkingv1.NetworkPolicy, cps ...oracle.CiliumPolicy) oracle.PolicySet {
	return oracle.PolicySet{NetworkPolicies: nps, CiliumPolicies: cps}
}
