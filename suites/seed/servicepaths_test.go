//go:build e2e

package seed

// Service paths other than the ClusterIP (issue 13, item 6; dataplane/POLICY.md,
// "Service paths"): kube-proxy DNATs a Service's externalIPs on the client's own
// node, so the client's egress policy must be judged on the backend there too. A
// client whose egress allows only world must not reach the server through the
// externalIP; one allowed to the server must. Expectations come from the oracle
// (Oracle.DecideServicePath); the unpoliced first step shows that kube-proxy does
// route the externalIP to the server here, so a TIMEOUT later is the policy's.

import (
	"fmt"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flatnet/flatnet/fixtures/oracle"
	"github.com/flatnet/flatnet/suites/internal/agnhost"
	"github.com/flatnet/flatnet/suites/internal/workload"
)

// externalIP is an address of TEST-NET-3 (RFC 5737): nothing outside answers it, so
// a connection that works went through kube-proxy's DNAT.
const externalIP = "203.0.113.80"

var _ = Describe("service paths", func() {
	It("externalIP: a client allowed egress to world only gets TIMEOUT through the server's externalIP, a client allowed to the server connects", Label("cilium", "service-paths"), func(ctx SpecContext) {
		Expect(cluster.CiliumCRDs).NotTo(HaveOccurred())
		ensurePods(ctx)
		svc := scenario.ServerService()
		svc.Name = scenario.Server + "-external"
		svc.Spec.ExternalIPs = []string{externalIP}
		By(fmt.Sprintf("creating Service %s/%s (selector %v, port %d) with externalIPs [%s]", svc.Namespace, svc.Name, svc.Spec.Selector, scenario.Port.Number, externalIP))
		Expect(workload.CreateServices(ctx, cluster.Clientset, []corev1.Service{svc})).To(Succeed())
		DeferCleanup(func(ctx SpecContext) {
			_, err := cluster.Policies.Apply(ctx, oracle.PolicySet{})
			Expect(err).NotTo(HaveOccurred())
			err = cluster.Clientset.CoreV1().Services(svc.Namespace).Delete(ctx, svc.Name, metav1.DeleteOptions{})
			if !apierrors.IsNotFound(err) {
				Expect(err).NotTo(HaveOccurred())
			}
		})
		Expect(workload.WaitServiceEndpoints(ctx, cluster.Clientset, []workload.Key{{Namespace: svc.Namespace, Name: svc.Name}}, time.Minute)).To(Succeed())

		clientEgress := func(name, to string) oracle.PolicySet {
			cp, err := oracle.ParseCiliumPolicy([]byte(fmt.Sprintf(`
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: %s, namespace: %s}
spec:
  endpointSelector: {matchLabels: %s}
  egress:
  - %s
`, name, scenario.Namespace, flowMap(scenario.ClientLabels), to)))
			Expect(err).NotTo(HaveOccurred())
			return oracle.PolicySet{CiliumPolicies: []oracle.CiliumPolicy{cp}}
		}
		client := oracle.PodPeer(scenario.Namespace, scenario.Client)
		cmdline := fmt.Sprintf("./agnhost connect %s:%d --timeout=%s --protocol=tcp", externalIP, scenario.Port.Number, connectTimeout)
		for _, step := range []struct {
			name     string
			policies oracle.PolicySet
		}{
			{"no policy", oracle.PolicySet{}},
			{"client egress to world only", clientEgress("client-world-only", "toEntities: [world]")},
			{"client egress to the server only", clientEgress("client-server-only", "toEndpoints: [{matchLabels: "+flowMap(scenario.ServerLabels)+"}]")},
		} {
			By(step.name)
			_, err := cluster.Policies.Apply(ctx, step.policies)
			Expect(err).NotTo(HaveOccurred())
			expectStoredAsSent(ctx, step.policies)
			snap, err := workload.Take(ctx, cluster.Clientset, []string{scenario.Namespace})
			Expect(err).NotTo(HaveOccurred())
			o, err := oracle.New(snap.Cluster, step.policies)
			Expect(err).NotTo(HaveOccurred())
			want, backend, err := o.DecideServicePath(client, svc.Namespace, svc.Name, int(scenario.Port.Number), oracle.Protocol(scenario.Port.Protocol), oracle.PathExternalIP)
			Expect(err).NotTo(HaveOccurred())
			GinkgoWriter.Printf("  oracle: %s -> %s via externalIP %s (backend %s:%d): allowed=%t\n", client, svc.Name, externalIP, backend.Pod, backend.Port, want.Allowed)
			Eventually(func(g Gomega) {
				a, err := connect(ctx, cmdline)
				g.Expect(err).NotTo(HaveOccurred())
				reachable, word, err := agnhost.Judge(a)
				g.Expect(err).NotTo(HaveOccurred(), "%s in %s", cmdline, scenario.Client)
				GinkgoWriter.Printf("  %s: bash-5.0# %s -> reachable=%t %s\n", step.name, cmdline, reachable, word)
				g.Expect(reachable).To(Equal(want.Allowed), "%s: %s (the oracle: allowed=%t)", step.name, cmdline, want.Allowed)
				if !want.Allowed {
					g.Expect(word).To(Equal("TIMEOUT"), "%s: blocked with %s instead of a policy drop's TIMEOUT", step.name, word)
				}
			}).WithContext(ctx).WithTimeout(cluster.Settings.EnforceTimeout).WithPolling(250 * time.Millisecond).Should(Succeed())
		}
	})
})

// flowMap writes labels as a YAML flow mapping.
func flowMap(m map[string]string) string {
	s := "{"
	first := true
	for k, v := range m {
		if !first {
			s += ", "
		}
		first = false
		s += fmt.Sprintf("%q: %q", k, v)
	}
	return s + "}"
}
