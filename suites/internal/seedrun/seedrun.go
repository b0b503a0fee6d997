// Package seedrun runs the seed article's scenario (a server on port 80 and a
// client, fixtures/topology.Seed) in a namespace of a suite's own, for the
// suites that look at its connects through another lens (observability/
// through flatnetctl, hubble/ through the hubble CLI): the case steps of
// fixtures/policies.SeedCases, the oracle's verdict for client -> server,
// and moving to a policy set until the client's connect answers as the
// oracle decides. Like the framework, it asserts with Gomega: call it from
// specs and setup nodes.
package seedrun

import (
	"context"
	"time"

	"github.com/onsi/ginkgo/v2"
	"github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flatnet/flatnet/fixtures/oracle"
	"github.com/flatnet/flatnet/fixtures/policies"
	"github.com/flatnet/flatnet/fixtures/topology"
	"github.com/flatnet/flatnet/probes/podexec"
	"github.com/flatnet/flatnet/suites/framework"
	"github.com/flatnet/flatnet/suites/internal/agnhost"
	"github.com/flatnet/flatnet/suites/internal/workload"
)

// ConnectTimeout is the article's --timeout=3s.
const ConnectTimeout = "3s"

// Run is the scenario in its namespace (Scenario.Namespace), on the
// suite's framework.
type Run struct {
	F        *framework.Framework
	Scenario topology.Seed
	// Cases are fixtures/policies.SeedCases of the scenario, by name.
	Cases map[string]policies.Case
}

// New makes the scenario's run once its namespace is chosen.
func New(f *framework.Framework, s topology.Seed) *Run {
	r := &Run{F: f, Scenario: s, Cases: map[string]policies.Case{}}
	for _, c := range policies.SeedCases(s) {
		r.Cases[c.Name] = c
	}
	return r
}

// Deploy creates the scenario's namespace with pods in it (workload.Prepare'd,
// in that namespace) and waits until every one is ready.
func (r *Run) Deploy(ctx context.Context, pods ...corev1.Pod) {
	ns := r.Scenario.Namespace
	gomega.Expect(r.F.CreateNamespace(ctx, corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})).To(gomega.Succeed())
	gomega.Expect(workload.CreatePods(ctx, r.F.Clientset, pods)).To(gomega.Succeed())
	keys := make([]workload.Key, len(pods))
	for i, p := range pods {
		keys[i] = workload.Key{Namespace: p.Namespace, Name: p.Name}
	}
	gomega.Expect(workload.WaitPodsReady(ctx, r.F.Clientset, keys, 3*time.Minute)).To(gomega.Succeed())
}

// Step is step i of case name.
func (r *Run) Step(name string, i int) policies.Step {
	c, ok := r.Cases[name]
	gomega.Expect(ok).To(gomega.BeTrue(), "fixtures/policies.SeedCases has no case %s", name)
	gomega.Expect(len(c.Steps)).To(gomega.BeNumerically(">", i), "case %s", name)
	return c.Steps[i]
}

// Pod is the scenario namespace's pod name, as the API server has it now.
func (r *Run) Pod(ctx context.Context, name string) *corev1.Pod {
	p, err := r.F.Clientset.CoreV1().Pods(r.Scenario.Namespace).Get(ctx, name, metav1.GetOptions{})
	gomega.Expect(err).NotTo(gomega.HaveOccurred())
	return p
}

// Verdict is what the oracle decides for client -> server on the scenario's
// port under ps, on the live pods.
func (r *Run) Verdict(ctx context.Context, ps oracle.PolicySet) oracle.Verdict {
	s := r.Scenario
	snap, err := workload.Take(ctx, r.F.Clientset, []string{s.Namespace})
	gomega.Expect(err).NotTo(gomega.HaveOccurred())
	o, err := oracle.New(snap.Cluster, ps)
	gomega.Expect(err).NotTo(gomega.HaveOccurred())
	v, err := o.Decide(oracle.PodPeer(s.Namespace, s.Client), oracle.PodPeer(s.Namespace, s.Server), int(s.Port.Number), oracle.Protocol(s.Port.Protocol))
	gomega.Expect(err).NotTo(gomega.HaveOccurred())
	return v
}

// Connect runs the article's `./agnhost connect <ip>:<port> --timeout=3s
// --protocol=tcp` in the namespace's pod from.
func (r *Run) Connect(ctx context.Context, from, ip string, port int32) agnhost.Result {
	res, err := agnhost.Connect(ctx, r.F.Exec, podexec.Pod{Namespace: r.Scenario.Namespace, Name: from}, ip, port, ConnectTimeout)
	gomega.Expect(err).NotTo(gomega.HaveOccurred())
	ginkgo.GinkgoWriter.Printf("  %s# %s\n", from, res)
	return res
}

// MoveTo applies ps and waits until the client's connect to the server
// answers as the oracle decides (a blocked one with TIMEOUT, a policy drop),
// and returns the oracle's verdict.
func (r *Run) MoveTo(ctx context.Context, ps oracle.PolicySet) oracle.Verdict {
	changed, err := r.F.Policies.Apply(ctx, ps)
	gomega.Expect(err).NotTo(gomega.HaveOccurred())
	for _, ch := range changed {
		ginkgo.GinkgoWriter.Println("  " + ch)
	}
	v := r.Verdict(ctx, ps)
	ip := r.Pod(ctx, r.Scenario.Server).Status.PodIP
	gomega.Eventually(func(g gomega.Gomega) {
		a := r.Connect(ctx, r.Scenario.Client, ip, r.Scenario.Port.Number)
		g.Expect(a.Reachable).To(gomega.Equal(v.Allowed), "%s; the oracle: %s", a, v)
		if !v.Allowed {
			g.Expect(a.Word).To(gomega.Equal("TIMEOUT"), "a policy drop times out: %s", a)
		}
	}).WithContext(ctx).WithTimeout(r.F.Settings.EnforceTimeout).WithPolling(250 * time.Millisecond).Should(gomega.Succeed())
	return v
}
