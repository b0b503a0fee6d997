package compile_test

import (
	"fmt"
	"net/netip"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flatnet/flatnet/dataplane/compile"
	"github.com/flatnet/flatnet/dataplane/compile/compiletest"
	"github.com/flatnet/flatnet/dataplane/identity"
	"github.com/flatnet/flatnet/dataplane/policy"
)

// BenchmarkPolicyBurstShape measures one policy change with n policies of issue
// 19/20's burst present (each selecting every server, admitting one /32, as
// dataplane/enforce's BenchmarkPolicyBurst and `make perf --policies n` create
// them), on 16 local pods, half of them servers:
//
//   - change=upsert-delete: one more such policy upserted and deleted, no Flush:
//     the repository's and prefixes' share, which must not grow with n;
//   - change=unrelated: a policy selecting the clients applied and flushed: it
//     shares nothing with the n policies, so its cost must not grow with n either;
//   - change=related: one more burst policy applied and flushed: the servers'
//     policies are rebuilt from the n+1 policies selecting them, once per endpoint.
func BenchmarkPolicyBurstShape(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		c := compile.New(identity.NewAllocator())
		for i := range 16 {
			role := []string{"server", "client"}[i%2]
			must(b, c.UpsertPod(compile.Pod{Namespace: "burst", Name: fmt.Sprintf("%s-%d", role, i),
				Labels: map[string]string{"role": role}, Local: true,
				IP: netip.AddrFrom4([4]byte{10, 224, 0, byte(10 + i)})}))
		}
		for i := range n {
			upsert(b, c, burstPolicy(i, "server"))
		}
		c.Flush()
		extra := burstPolicy(n, "server")
		for _, v := range []struct {
			name  string
			np    *networkingv1.NetworkPolicy
			flush bool
		}{{"upsert-delete", extra, false}, {"unrelated", burstPolicy(n, "client"), true}, {"related", extra, true}} {
			b.Run(fmt.Sprintf("policies=%d/change=%s", n, v.name), func(b *testing.B) {
				for range b.N {
					upsert(b, c, v.np)
					if v.flush {
						c.Flush()
					}
					c.DeletePolicy(compiletest.Key(v.np))
					if v.flush {
						b.StopTimer()
						c.Flush()
						b.StartTimer()
					}
				}
			})
		}
	}
}

// burstPolicy i selects role and admits ingress from 198.18.0.0/15's i-th address.
func burstPolicy(i int, role string) *networkingv1.NetworkPolicy {
	peer := netip.AddrFrom4([4]byte{198, 18 + byte(i>>16), byte(i >> 8), byte(i)})
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "burst", Name: fmt.Sprintf("filler-%05d-%s", i, role)},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"role": role}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{
				{IPBlock: &networkingv1.IPBlock{CIDR: peer.String() + "/32"}}}}},
		},
	}
}

func upsert(b *testing.B, c *compile.Compiler, np *networkingv1.NetworkPolicy) {
	p, err := policy.FromNetworkPolicy(np)
	must(b, err)
	must(b, c.UpsertPolicy(compiletest.Key(np), []*policy.Policy{p}))
}

func must(b testing.TB, err error) {
	if err != nil {
		b.Fatal(err)
	}
}
