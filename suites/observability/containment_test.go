//go:build e2e

package observability

import (
	"context"
	"fmt"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/flatnet/flatnet/fixtures/topology"
	"github.com/flatnet/flatnet/probes/podexec"
	"github.com/flatnet/flatnet/suites/internal/agnhost"
	"github.com/flatnet/flatnet/suites/internal/seedrun"
	"github.com/flatnet/flatnet/suites/internal/workload"
)

var cnpResource = schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumnetworkpolicies"}

// An oversized CiliumNetworkPolicy (valid for the API server: 96 fromCIDR x 16x32
// ports x TCP/UDP/SCTP = 147,456 entries, more than an endpoint's 131,072) selects
// a pod of namespace "odd". On that pod's node, a default-deny in namespace "ok"
// applied after it must be enforced, a new pod of namespace "new" must start,
// the selected pod is isolated (fail closed), and the rejection is visible as a
// Warning Event on the object and in `flatnetctl rejected`. On main the first
// failing write stopped every later one on the node: ok's deny was never
// written and every new pod's CNI ADD failed.
var _ = Describe("an odd policy in one namespace [flatnet]", Label("flatnet", "observability", "containment", "cilium"), Ordered, func() {
	var (
		odd, ok, fresh    topology.Seed
		node              string
		victim, peer      = "victim", "peer"
		hugeName          = "huge"
		suffix            = fmt.Sprintf("%04x", time.Now().UnixNano()&0xffff)
		oddNS, okNS, fnNS = "flatnet-odd-" + suffix, "flatnet-ok-" + suffix, "flatnet-new-" + suffix
	)

	BeforeAll(func(ctx SpecContext) {
		Expect(kc.CiliumCRDs).NotTo(HaveOccurred())
		for _, ns := range []string{oddNS, okNS, fnNS} {
			Expect(kc.CreateNamespace(ctx, corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})).To(Succeed())
		}
		DeferCleanup(func(ctx SpecContext) {
			_ = kc.Dynamic.Resource(cnpResource).Namespace(oddNS).Delete(ctx, hugeName, metav1.DeleteOptions{})
			if kc.Keep() {
				return
			}
			Expect(kc.DeleteNamespaces(ctx, oddNS, okNS, fnNS)).To(Succeed())
		})
		odd, ok, fresh = topology.DefaultSeed(), topology.DefaultSeed(), topology.DefaultSeed()
		odd.Namespace, ok.Namespace, fresh.Namespace = oddNS, okNS, fnNS

		By("odd: a pod the oversized policy will select (app=odd) and a server it talks to")
		v := workload.Prepare(odd.ClientPod(kc.Settings.ProbeImage))
		v.Name, v.Labels["app"] = victim, "odd"
		p := workload.Prepare(odd.ServerPod(kc.Settings.ProbeImage))
		p.Name = peer
		Expect(workload.CreatePods(ctx, kc.Clientset, []corev1.Pod{v})).To(Succeed())
		Expect(workload.WaitPodsReady(ctx, kc.Clientset, []workload.Key{{Namespace: oddNS, Name: victim}}, 3*time.Minute)).To(Succeed())
		got, err := kc.Clientset.CoreV1().Pods(oddNS).Get(ctx, victim, metav1.GetOptions{})
		Expect(err).NotTo(HaveOccurred())
		node = got.Spec.NodeName
		By("ok: server and client on the same node " + node + " (the node whose writes the odd policy breaks)")
		s, c := workload.Prepare(ok.ServerPod(kc.Settings.ProbeImage)), workload.Prepare(ok.ClientPod(kc.Settings.ProbeImage))
		s.Spec.NodeName, c.Spec.NodeName, p.Spec.NodeName = node, node, node
		Expect(workload.CreatePods(ctx, kc.Clientset, []corev1.Pod{p, s, c})).To(Succeed())
		Expect(workload.WaitPodsReady(ctx, kc.Clientset, []workload.Key{{Namespace: oddNS, Name: peer},
			{Namespace: okNS, Name: ok.Server}, {Namespace: okNS, Name: ok.Client}}, 3*time.Minute)).To(Succeed())
	})

	It("isolates only the pods it selects, keeps the others' policies written and new pods starting, and says why", func(ctx SpecContext) {
		peerIP := podIP(ctx, oddNS, peer)
		serverIP := podIP(ctx, okNS, ok.Server)
		By("before: odd's pod reaches its peer, ok's client reaches its server")
		Expect(connectIn(ctx, oddNS, victim, peerIP).Reachable).To(BeTrue())
		Expect(connectIn(ctx, okNS, ok.Client, serverIP).Reachable).To(BeTrue())

		By("applying the oversized CiliumNetworkPolicy " + oddNS + "/" + hugeName + " (accepted by the API server)")
		_, err := kc.Dynamic.Resource(cnpResource).Namespace(oddNS).Create(ctx, oversizedCNP(oddNS, hugeName), metav1.CreateOptions{})
		Expect(err).NotTo(HaveOccurred())

		By("a Warning Event PolicyTooLarge on the object, from the agent of node " + node + ", naming the pod")
		Eventually(func(g Gomega) {
			evs, err := kc.Clientset.CoreV1().Events(oddNS).List(ctx, metav1.ListOptions{FieldSelector: fields.Set{
				"involvedObject.kind": "CiliumNetworkPolicy", "involvedObject.name": hugeName}.String()})
			g.Expect(err).NotTo(HaveOccurred())
			var seen []string
			for _, ev := range evs.Items {
				seen = append(seen, ev.Reason+": "+ev.Message)
				if ev.Reason == "PolicyTooLarge" && ev.Type == corev1.EventTypeWarning && ev.Source.Host == node &&
					strings.Contains(ev.Message, oddNS+"/"+victim) {
					return
				}
			}
			g.Expect(seen).To(ContainElement(ContainSubstring("PolicyTooLarge")), "events on %s/%s", oddNS, hugeName)
		}).WithContext(ctx).WithTimeout(kc.Settings.EnforceTimeout).WithPolling(time.Second).Should(Succeed())

		By("flatnetctl rejected -n " + oddNS + " names node, policy, reason and pod")
		Eventually(func(g Gomega) {
			r := run(ctx, "rejected", "-n", oddNS)
			g.Expect(r.ExitCode).To(Equal(0), "%s", r)
			GinkgoWriter.Print(r.Stdout)
			g.Expect(r.Stdout).To(MatchRegexp(`(?m)^%s\s+CiliumNetworkPolicy\s+%s/%s\s+PolicyTooLarge\s+%s/%s\b`, node, oddNS, hugeName, oddNS, victim))
		}).WithContext(ctx).WithTimeout(kc.Settings.EnforceTimeout).WithPolling(time.Second).Should(Succeed())

		By("the selected pod fails closed: its egress (no egress rule, so allowed if its policy were in force) is cut")
		Eventually(func(g Gomega) {
			a := connectIn(ctx, oddNS, victim, peerIP)
			g.Expect(a.Reachable).To(BeFalse(), "%s", a)
			g.Expect(a.Word).To(Equal("TIMEOUT"), "%s", a)
		}).WithContext(ctx).WithTimeout(kc.Settings.EnforceTimeout).WithPolling(time.Second).Should(Succeed())

		By("a default-deny applied in " + okNS + " afterwards is enforced on the same node")
		dd := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
			"metadata": map[string]any{"name": "default-deny", "namespace": okNS},
			"spec":     map[string]any{"endpointSelector": map[string]any{"matchLabels": map[string]any{"app": "server"}}, "ingress": []any{map[string]any{}}},
		}}
		_, err = kc.Dynamic.Resource(cnpResource).Namespace(okNS).Create(ctx, dd, metav1.CreateOptions{})
		Expect(err).NotTo(HaveOccurred())
		Eventually(func(g Gomega) {
			a := connectIn(ctx, okNS, ok.Client, serverIP)
			g.Expect(a.Reachable).To(BeFalse(), "%s", a)
			g.Expect(a.Word).To(Equal("TIMEOUT"), "%s", a)
		}).WithContext(ctx).WithTimeout(kc.Settings.EnforceTimeout).WithPolling(time.Second).Should(Succeed())

		By("a new pod in " + fnNS + " on node " + node + " starts")
		np := workload.Prepare(fresh.ServerPod(kc.Settings.ProbeImage))
		np.Spec.NodeName = node
		Expect(workload.CreatePods(ctx, kc.Clientset, []corev1.Pod{np})).To(Succeed())
		Expect(workload.WaitPodsReady(ctx, kc.Clientset, []workload.Key{{Namespace: fnNS, Name: fresh.Server}}, 2*time.Minute)).To(Succeed(),
			"a new pod on the node of the odd policy's pod must start (CNI ADD attaches it)")

		By("deleting the oversized policy lifts the isolation and the rejection")
		Expect(kc.Dynamic.Resource(cnpResource).Namespace(oddNS).Delete(ctx, hugeName, metav1.DeleteOptions{})).To(Succeed())
		Eventually(func(g Gomega) {
			a := connectIn(ctx, oddNS, victim, peerIP)
			g.Expect(a.Reachable).To(BeTrue(), "%s", a)
		}).WithContext(ctx).WithTimeout(kc.Settings.EnforceTimeout).WithPolling(time.Second).Should(Succeed())
		r := run(ctx, "rejected", "-n", oddNS)
		Expect(r.ExitCode).To(Equal(0), "%s", r)
		Expect(r.Stdout).NotTo(ContainSubstring(hugeName), "%s", r)
	})
})

// oversizedCNP is within every CRD limit and far beyond an endpoint's map.
func oversizedCNP(ns, name string) *unstructured.Unstructured {
	var cidrs []any
	for i := range 96 {
		cidrs = append(cidrs, fmt.Sprintf("198.18.%d.0/24", i))
	}
	var toPorts []any
	for g := range 16 {
		var ports []any
		for i := range 32 {
			ports = append(ports, map[string]any{"port": fmt.Sprint(20000 + g*32 + i)})
		}
		toPorts = append(toPorts, map[string]any{"ports": ports})
	}
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
		"metadata": map[string]any{"name": name, "namespace": ns},
		"spec": map[string]any{
			"endpointSelector": map[string]any{"matchLabels": map[string]any{"app": "odd"}},
			"ingress":          []any{map[string]any{"fromCIDR": cidrs, "toPorts": toPorts}},
		},
	}}
}

func podIP(ctx context.Context, ns, name string) string {
	p, err := kc.Clientset.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	Expect(err).NotTo(HaveOccurred())
	Expect(p.Status.PodIP).NotTo(BeEmpty(), "%s/%s has no IP", ns, name)
	return p.Status.PodIP
}

// connectIn runs the article's connect from pod ns/name to ip:80.
func connectIn(ctx context.Context, ns, name, ip string) agnhost.Result {
	a, err := agnhost.Connect(ctx, kc.Exec, podexec.Pod{Namespace: ns, Name: name}, ip, 80, seedrun.ConnectTimeout)
	Expect(err).NotTo(HaveOccurred())
	GinkgoWriter.Printf("  %s/%s# %s\n", ns, name, a)
	return a
}
