//go:build e2e

package netpol

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flatnet/flatnet/fixtures/oracle"
	"github.com/flatnet/flatnet/fixtures/policies"
	"github.com/flatnet/flatnet/fixtures/topology"
	"github.com/flatnet/flatnet/suites/internal/flowcheck"
	"github.com/flatnet/flatnet/suites/internal/matrix"
	"github.com/flatnet/flatnet/suites/reachability"
	"github.com/flatnet/flatnet/suites/report"
)

// A test of the harness itself: under a policy that denies x/a -> y/b, the
// cell is blocked as the oracle says, and proven by the policy drop in the
// flows; once x/a's route to y/b is broken by hand (a /32 route into its own
// loopback, so the SYN never leaves the pod), the same TIMEOUT must fail the
// cell as "blocked for the wrong reason", not pass it.
var _ = Describe("flow validation", Serial, Label("flatnet", "flow-validation", family("flow-validation")), func() {
	It("fails a denied cell blocked by a broken route as blocked for the wrong reason", func(ctx SpecContext) {
		Expect(cluster.Flows).NotTo(BeNil(), "this spec needs flow validation on: %s", cluster.FlowNote)
		x, y := model.Namespace("x"), model.Namespace("y")
		client, server := topology.PodRef{Namespace: "x", Pod: "a"}, topology.PodRef{Namespace: "y", Pod: "b"}
		deny := networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: y, Name: "deny-b-ingress"},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: model.PodLabels(server)},
				PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			},
		}
		ps := oracle.PolicySet{NetworkPolicies: []networkingv1.NetworkPolicy{deny}}
		DeferCleanup(func(ctx SpecContext) {
			_, err := cluster.Policies.Apply(ctx, oracle.PolicySet{})
			Expect(err).NotTo(HaveOccurred(), "removing the spec's policy")
		})
		_, err := cluster.Policies.Apply(ctx, ps)
		Expect(err).NotTo(HaveOccurred())

		from := reachability.Endpoint{Label: client.String(), Peer: model.Peer(client)}
		to := reachability.Endpoint{Label: server.String(), Peer: model.Peer(server)}
		plan := matrix.Plan{Title: "broken route", From: []reachability.Endpoint{from}, Views: []matrix.View{{Name: "pod IP", To: []reachability.Endpoint{to}}},
			Ports: []reachability.PortProtocol{{Port: 80, Protocol: oracle.TCP}}}
		snap, expected := expect(ctx, policies.Step{Name: "deny y/b ingress", Policies: ps}, model.Initial(), plan, func(f string, a ...any) { Fail(fmt.Sprintf(f, a...)) })
		k := reachability.Key{From: from.Label, To: to.Label, PortProtocol: plan.Ports[0]}
		want, _ := expected[0].Get(k)
		Expect(want.Reachable).To(BeFalse(), "the oracle must deny %s: %s", k, want.Detail)
		GinkgoWriter.Printf("  oracle: %s\n", want.Detail)

		converge := func(timeout time.Duration) matrix.Outcome {
			out, err := matrix.Converge(ctx, runner, plan, snap, expected, matrix.Options{
				Timeout: timeout, Pause: 250 * time.Millisecond,
				Progress: func(p matrix.Poll) { GinkgoWriter.Printf("  %s\n", p) },
				Verify:   cluster.Flows.Verify(GinkgoWriter),
			})
			Expect(err).NotTo(HaveOccurred())
			Expect(report.WriteComparison(GinkgoWriter, out.Comparisons[0])).To(Succeed())
			return out
		}
		By("probing x/a -> y/b:80 under the deny: blocked, and proven by the policy drop")
		Expect(converge(cluster.Settings.EnforceTimeout).OK()).To(BeTrue(), "the control: with the route intact the drop must prove the verdict")

		By("breaking x/a's route to y/b by hand: ip route add <y/b>/32 dev lo in x/a's netns, from its node container")
		pod, err := cluster.Clientset.CoreV1().Pods(x).Get(ctx, client.Pod, metav1.GetOptions{})
		Expect(err).NotTo(HaveOccurred())
		node := pod.Spec.NodeName
		Expect(strings.Fields(os.Getenv("FLATNET_NODES"))).To(ContainElement(node), "the client's node %s must be a kind node container named in FLATNET_NODES", node)
		route := snap.PodIPs[to.Peer.String()].String() + "/32"
		inPod := fmt.Sprintf(`set -e
pid=$(crictl inspect -o go-template --template '{{.info.pid}}' $(crictl ps -q --pod $(crictl pods -q --namespace %s --name %s --state ready) | head -1))
nsenter -t "$pid" -n ip route %%s %s dev lo`, x, client.Pod, route)
		Expect(dockerExec(ctx, node, fmt.Sprintf(inPod, "add"))).To(Succeed())
		DeferCleanup(func(ctx SpecContext) {
			Expect(dockerExec(ctx, node, fmt.Sprintf(inPod, "del"))).To(Succeed(), "restoring x/a's route")
		})

		By("probing again: the same blocked answer must now fail, blocked for the wrong reason")
		out := converge(6 * time.Second)
		cmp := out.Comparisons[0]
		Expect(cmp.Mismatches).To(BeEmpty(), "the answer itself is still the oracle's (blocked)")
		Expect(cmp.OK()).To(BeFalse(), "a TIMEOUT without a policy drop must fail the cell")
		Expect(cmp.WrongReason).To(HaveLen(1))
		wrong := cmp.WrongReason[0]
		Expect(wrong.Key).To(Equal(k))
		Expect(wrong.Observed.Detail).To(HavePrefix("TIMEOUT"), "the broken route makes the probe time out, as a drop would")
		Expect(wrong.Why).To(ContainSubstring("blocked for the wrong reason"))
		var grid bytes.Buffer
		Expect(report.WriteGrid(&grid, cmp.Observed, cmp.Expected, k.PortProtocol)).To(Succeed())
		Expect(report.WriteComparison(&grid, cmp)).To(Succeed())
		Expect(grid.String()).To(ContainSubstring(report.MarkBlocked+report.MarkWrongReason), "the grid marks the cell apart from a wrong verdict")
		Expect(slices.ContainsFunc(wrong.Flows, func(s string) bool { return strings.Contains(s, "no flow") || strings.Contains(s, "DROPPED") })).To(BeTrue(), "the cell carries what the flows showed: %v", wrong.Flows)
		GinkgoWriter.Printf("  as intended: %s %s: %s\n", flowcheck.WrongReason, wrong.Key, wrong.Why)
	})
})

// dockerExec runs script with sh in a kind node container.
func dockerExec(ctx context.Context, node, script string) error {
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, "docker", "exec", node, "sh", "-c", script)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("docker exec %s: %w: %s", node, err, strings.TrimSpace(out.String()))
	}
	return nil
}
