package perf

import (
	"fmt"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/flatnet/flatnet/suites/internal/workload"
)

// MaxPolicies bounds --policies: 198.18.0.0/15 (RFC 2544's benchmarking range,
// never a pod's or a node's) holds this many distinct /32 peers.
const MaxPolicies = 1 << 17

// filler is the first address of the filler policies' peers.
var filler = netip.MustParseAddr("198.18.0.0")

// Policies returns n NetworkPolicies in namespace, all selecting the servers
// (RoleLabel=server) on port, TCP and UDP, each distinct: policy 0 admits the
// clients (pods with RoleLabel=client, and the node addresses nodeIPs, for the
// host client), policies 1..n-1 each admit one other /32 of 198.18.0.0/15, where
// no pod or node lives. So with n policies the servers are isolated, carry n
// rules, and still admit the clients and nothing else: the outsider is refused.
// n = 0 is no policy at all.
func Policies(namespace string, n, port int, nodeIPs []string) ([]networkingv1.NetworkPolicy, error) {
	if n < 0 || n > MaxPolicies {
		return nil, fmt.Errorf("--policies=%d: must be between 0 and %d", n, MaxPolicies)
	}
	if n == 0 {
		return nil, nil
	}
	tcp, udp := corev1.ProtocolTCP, corev1.ProtocolUDP
	p := intstr.FromInt(port)
	ports := []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &p}, {Protocol: &udp, Port: &p}}
	mk := func(name string, peers []networkingv1.NetworkPolicyPeer) networkingv1.NetworkPolicy {
		return networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace, Labels: workload.WithManagedBy(nil)},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{RoleLabel: "server"}},
				PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
				Ingress:     []networkingv1.NetworkPolicyIngressRule{{From: peers, Ports: ports}},
			},
		}
	}
	allow := []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{RoleLabel: "client"}}}}
	for _, ip := range nodeIPs {
		a, err := netip.ParseAddr(ip)
		if err != nil {
			return nil, fmt.Errorf("node address %q: %w", ip, err)
		}
		allow = append(allow, networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: netip.PrefixFrom(a, a.BitLen()).String()}})
	}
	out := []networkingv1.NetworkPolicy{mk("perf-allow-clients", allow)}
	base := filler.As4()
	for i := 1; i < n; i++ {
		ip := netip.AddrFrom4([4]byte{base[0], base[1] + byte(i>>16), byte(i >> 8), byte(i)})
		peer := networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: ip.String() + "/32"}}
		out = append(out, mk(fmt.Sprintf("perf-filler-%05d", i), []networkingv1.NetworkPolicyPeer{peer}))
	}
	return out, nil
}
