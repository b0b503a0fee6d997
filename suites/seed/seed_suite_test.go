//go:build e2e

package seed

// The seed article's scenario on the cluster, as written: in namespace default
// (a dedicated one if default already holds objects of the same names or
// labels), a default-deny CiliumNetworkPolicy on app=server, a server running
// `/agnhost serve-hostname --tcp --http=false --port 80` and a client; the
// client's `./agnhost connect <server-ip>:80 --timeout=3s --protocol=tcp` prints
// TIMEOUT; after the cnp is deleted it connects with no output. Then the
// variants of fixtures/policies.SeedCases (allow the client on the port, on the
// wrong port, egress default deny on the client, the same with
// NetworkPolicy), each by pod IP and through a Service. Expectations come from
// the oracle, held to the article's and the docs' tables.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clientexec "k8s.io/client-go/util/exec"

	"github.com/flatnet/flatnet/fixtures/oracle"
	"github.com/flatnet/flatnet/fixtures/policies"
	"github.com/flatnet/flatnet/fixtures/topology"
	"github.com/flatnet/flatnet/probes/podexec"
	"github.com/flatnet/flatnet/suites/framework"
	"github.com/flatnet/flatnet/suites/internal/agnhost"
	"github.com/flatnet/flatnet/suites/internal/flowcheck"
	"github.com/flatnet/flatnet/suites/internal/policyset"
	"github.com/flatnet/flatnet/suites/internal/workload"
	"github.com/flatnet/flatnet/suites/reachability"
	"github.com/flatnet/flatnet/suites/report"
)

func TestSeed(t *testing.T) { cluster.Run(t) }

// connectTimeout is the article's --timeout=3s.
const connectTimeout = "3s"

// articleImage is the image the article runs; scripts/probe-image.sh loads the
// probe image under this name too, and against any other cluster the kubelet
// pulls upstream agnhost, which the scenario works with as well.
const articleImage = "k8s.gcr.io/e2e-test-images/agnhost:2.41"

var (
	cluster = framework.New("seed", framework.Options{Settings: true, Policies: true, Flows: true, Report: &framework.ReportOptions{
		Title:  "flatnet seed scenario",
		Entry:  "seed report",
		Always: true,
	}})
	scenario   = topology.DefaultSeed()
	dedicated  bool // scenario.Namespace was created by the suite
	podsUp     bool
	seedByName = map[string]policies.Case{}
)

func init() {
	for _, c := range policies.SeedCases(scenario) {
		seedByName[c.Name] = c
	}
}

var _ = cluster.BeforeSuite(func(ctx SpecContext) {
	collisions, err := defaultCollisions(ctx)
	Expect(err).NotTo(HaveOccurred())
	if len(collisions) > 0 {
		ns := fmt.Sprintf("flatnet-seed-%04x", time.Now().UnixNano()&0xffff)
		GinkgoWriter.Printf("namespace default already holds %s: the scenario runs in namespace %s instead\n", strings.Join(collisions, ", "), ns)
		scenario.Namespace = ns
		seedByName = map[string]policies.Case{}
		for _, c := range policies.SeedCases(scenario) {
			seedByName[c.Name] = c
		}
		// Deleted after the suite by the framework.
		Expect(cluster.CreateNamespace(ctx, corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})).To(Succeed())
		dedicated = true
	}
	cluster.Notes(
		fmt.Sprintf("API server %s; image %s (the probe image %s, loaded under the article's name)", cluster.Rest.Host, articleImage, cluster.Settings.ProbeImage),
		fmt.Sprintf("namespace %s; probe: ./agnhost connect <ip>:80 --timeout=%s --protocol=tcp by exec in the client", scenario.Namespace, connectTimeout),
	)
})

var _ = cluster.AfterSuite(func(ctx SpecContext) {
	if cluster.Keep() || dedicated || !podsUp {
		return
	}
	// Only what this run created: default is shared.
	for _, p := range []string{scenario.Server, scenario.Client} {
		Expect(workload.DeletePodAndWait(ctx, cluster.Clientset, workload.Key{Namespace: scenario.Namespace, Name: p}, time.Minute)).To(Succeed())
	}
	err := cluster.Clientset.CoreV1().Services(scenario.Namespace).Delete(ctx, scenario.ServerService().Name, metav1.DeleteOptions{})
	if !apierrors.IsNotFound(err) {
		Expect(err).NotTo(HaveOccurred())
	}
})

// The specs not run (a label filter, a --skip) are listed in the report
// with why, beside what ran.
var _ = ReportAfterSuite("seed: the specs not run, in the report", cluster.AddNotRun)

// defaultCollisions lists what in namespace default the scenario would
// clash with: its pods, Service and policies by name, and pods carrying its
// labels (a policy or Service would select them too).
func defaultCollisions(ctx context.Context) ([]string, error) {
	ns := scenario.Namespace
	var out []string
	for _, name := range []string{scenario.Server, scenario.Client} {
		if _, err := cluster.Clientset.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{}); err == nil {
			out = append(out, "pod "+name)
		} else if !apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("checking namespace %s for pod %s: %w", ns, name, err)
		}
	}
	if _, err := cluster.Clientset.CoreV1().Services(ns).Get(ctx, scenario.ServerService().Name, metav1.GetOptions{}); err == nil {
		out = append(out, "service "+scenario.ServerService().Name)
	} else if !apierrors.IsNotFound(err) {
		return nil, err
	}
	for _, labels := range []map[string]string{scenario.ServerLabels, scenario.ClientLabels} {
		pods, err := cluster.Clientset.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: metav1.FormatLabelSelector(&metav1.LabelSelector{MatchLabels: labels})})
		if err != nil {
			return nil, err
		}
		for _, p := range pods.Items {
			out = append(out, fmt.Sprintf("pod %s labelled %v", p.Name, labels))
		}
	}
	seen := map[oracle.PolicyRef]bool{}
	for _, c := range seedByName {
		for _, s := range c.Steps {
			for _, r := range policies.Refs(s.Policies) {
				if seen[r] {
					continue
				}
				seen[r] = true
				var err error
				if r.Kind == oracle.KindNetworkPolicy {
					_, err = cluster.Clientset.NetworkingV1().NetworkPolicies(ns).Get(ctx, r.Name, metav1.GetOptions{})
				} else if cluster.CiliumCRDs == nil {
					_, err = policyset.Get(ctx, cluster.Dynamic, r)
				} else {
					continue
				}
				if err == nil {
					out = append(out, r.String())
				} else if !apierrors.IsNotFound(err) {
					return nil, err
				}
			}
		}
	}
	return out, nil
}

// ensurePods creates the server, the client and the server's Service, once.
func ensurePods(ctx context.Context) {
	if podsUp {
		return
	}
	By(fmt.Sprintf("creating pod %s (app=server, serve-hostname --tcp on 80), pod %s and Service %s in namespace %s",
		scenario.Server, scenario.Client, scenario.ServerService().Name, scenario.Namespace))
	pods := []corev1.Pod{workload.Prepare(scenario.ServerPod(articleImage)), workload.Prepare(scenario.ClientPod(articleImage))}
	// Set first: after a half-done creation, AfterSuite still removes what was made
	// (the names were free, see defaultCollisions).
	podsUp = true
	Expect(workload.CreatePods(ctx, cluster.Clientset, pods)).To(Succeed())
	Expect(workload.CreateServices(ctx, cluster.Clientset, []corev1.Service{scenario.ServerService()})).To(Succeed())
	keys := []workload.Key{{Namespace: scenario.Namespace, Name: scenario.Server}, {Namespace: scenario.Namespace, Name: scenario.Client}}
	Expect(workload.WaitPodsReady(ctx, cluster.Clientset, keys, 3*time.Minute)).To(Succeed())
	Expect(workload.WaitServiceEndpoints(ctx, cluster.Clientset, []workload.Key{{Namespace: scenario.Namespace, Name: scenario.ServerService().Name}}, time.Minute)).To(Succeed())
}

var _ = Describe("the seed scenario", Ordered, ContinueOnFailure, func() {
	It("as written: default-deny cnp, then server and client; connect prints TIMEOUT; kubectl delete cnp; connect prints nothing", Label("cilium"), func(ctx SpecContext) {
		Expect(cluster.CiliumCRDs).NotTo(HaveOccurred())
		c := seedByName["seed-default-deny"]
		Expect(c.Steps).To(HaveLen(2), "fixtures/policies seed-default-deny: apply, then delete")
		res := report.CaseResult{Name: c.Name, Family: c.Family, Description: c.Description}
		defer record(&res)
		DeferCleanup(func(ctx SpecContext) {
			_, err := cluster.Policies.Apply(ctx, oracle.PolicySet{})
			Expect(err).NotTo(HaveOccurred())
		})

		By("kubectl apply the default-deny CiliumNetworkPolicy (endpointSelector app=server, ingress [{}], egress [{}])")
		_, err := cluster.Policies.Apply(ctx, c.Steps[0].Policies)
		Expect(err).NotTo(HaveOccurred())
		expectStoredAsSent(ctx, c.Steps[0].Policies)
		ensurePods(ctx)
		first := runStep(ctx, &res, c.Steps[0])

		By("kubectl delete cnp default-deny")
		failIf([]string{first, runStep(ctx, &res, c.Steps[1])})
	})

	for _, name := range []string{"seed-allow-client-port", "seed-allow-wrong-port", "seed-client-egress-deny", "seed-networkpolicy"} {
		c, ok := seedByName[name]
		if !ok {
			panic("fixtures/policies.SeedCases has no case " + name)
		}
		labels := Labels{}
		for _, s := range c.Steps {
			if len(s.Policies.CiliumPolicies) > 0 {
				labels = Label("cilium")
			}
		}
		It(c.Name+": "+c.Description, labels, func(ctx SpecContext) {
			c := seedByName[name] // rebuilt if the namespace changed
			for _, s := range c.Steps {
				if len(s.Policies.CiliumPolicies) > 0 {
					Expect(cluster.CiliumCRDs).NotTo(HaveOccurred())
				}
			}
			ensurePods(ctx)
			res := report.CaseResult{Name: c.Name, Family: c.Family, Description: c.Description}
			defer record(&res)
			DeferCleanup(func(ctx SpecContext) {
				_, err := cluster.Policies.Apply(ctx, oracle.PolicySet{})
				Expect(err).NotTo(HaveOccurred())
			})
			var failures []string
			for _, s := range c.Steps {
				for _, part := range gradually(s) {
					failures = append(failures, runStep(ctx, &res, part))
				}
			}
			failIf(failures)
		})
	}
})

// gradually splits a step that applies several policies into one step per
// policy added, in order, each judged by the oracle: an allow is then seen
// to open a path the policies before it had shut, not merely a path nothing
// had shut yet (enforcement that never happened would pass the last step
// alone).
func gradually(step policies.Step) []policies.Step {
	ps := step.Policies
	n := len(ps.NetworkPolicies) + len(ps.CiliumPolicies)
	if n < 2 {
		return []policies.Step{step}
	}
	var out []policies.Step
	for k := 1; k < n; k++ {
		var part oracle.PolicySet
		part.NetworkPolicies = ps.NetworkPolicies[:min(k, len(ps.NetworkPolicies))]
		if k > len(ps.NetworkPolicies) {
			part.CiliumPolicies = ps.CiliumPolicies[:k-len(ps.NetworkPolicies)]
		}
		// Documented tables describe the full step only.
		out = append(out, policies.Step{Name: fmt.Sprintf("%s (%d of %d policies)", step.Name, k, n), Policies: part})
	}
	return append(out, step)
}

// record records the case as it is when the spec ends (deferred with a pointer).
func record(r *report.CaseResult) { cluster.Record(*r) }

// expectStoredAsSent reads each Cilium policy back: a CRD schema that
// dropped a field (ingressDeny, toPorts...) would leave the datapath
// enforcing less than the oracle assumes.
func expectStoredAsSent(ctx context.Context, ps oracle.PolicySet) {
	for _, cp := range ps.CiliumPolicies {
		sent, err := cp.Unstructured()
		Expect(err).NotTo(HaveOccurred())
		got, err := policyset.Get(ctx, cluster.Dynamic, cp.Ref())
		Expect(err).NotTo(HaveOccurred())
		same, err := policyset.SameSpec(got.Object["spec"], sent.Object["spec"])
		Expect(err).NotTo(HaveOccurred())
		Expect(same).To(BeTrue(),
			"%s: the API server stored spec %v, the suite sent %v: the CRD schema prunes fields", cp.Ref(), got.Object["spec"], sent.Object["spec"])
	}
}

// runStep moves to the step's policies and runs the article's connect from
// the client to the server's pod IP and to its Service, until both answers
// are the oracle's or the enforcement timeout passes. It returns the step's
// failure for people, empty when the cluster did what the oracle expects.
func runStep(ctx context.Context, res *report.CaseResult, step policies.Step) string {
	started := time.Now()
	changed, err := cluster.Policies.Apply(ctx, step.Policies)
	if err != nil {
		res.Error = err.Error()
		Fail(fmt.Sprintf("step %q: %v", step.Name, err))
	}
	for _, ch := range changed {
		GinkgoWriter.Println("  " + ch)
	}
	expectStoredAsSent(ctx, step.Policies)
	snap, err := workload.Take(ctx, cluster.Clientset, []string{scenario.Namespace})
	Expect(err).NotTo(HaveOccurred())
	o, err := oracle.New(snap.Cluster, step.Policies)
	Expect(err).NotTo(HaveOccurred())
	client, server := oracle.PodPeer(scenario.Namespace, scenario.Client), oracle.PodPeer(scenario.Namespace, scenario.Server)
	svc := scenario.ServerService()
	from := []reachability.Endpoint{{Label: client.String(), Peer: client}}
	to := []reachability.Endpoint{
		{Label: server.String(), Peer: server},
		{Label: "svc:" + server.String(), Peer: server, Service: &reachability.ServiceRef{Namespace: svc.Namespace, Name: svc.Name}},
	}
	port := reachability.PortProtocol{Port: int(scenario.Port.Number), Protocol: oracle.Protocol(scenario.Port.Protocol)}
	title := step.Name
	expected, err := reachability.Expected(o, title, from, to, []reachability.PortProtocol{port})
	Expect(err).NotTo(HaveOccurred())
	// The article's words and the docs' tables, against the oracle.
	for _, d := range step.Documented {
		want, err := d.Reachable(0, 0)
		Expect(err).NotTo(HaveOccurred())
		cell, _ := expected.Get(reachability.Key{From: from[0].Label, To: to[0].Label, PortProtocol: port})
		Expect(cell.Reachable).To(Equal(want), "the oracle (%s) disagrees with %s", cell.Detail, d.Source)
	}
	addrs := []string{snap.PodIPs[server.String()].String(), snap.ClusterIPs[svc.Namespace+"/"+svc.Name].String()}

	var observed *reachability.Table
	var cmp *reachability.Comparison
	var problems []string
	deadline := time.Now().Add(cluster.Settings.EnforceTimeout)
	for attempt := 1; ; attempt++ {
		began := time.Now()
		observed, err = reachability.NewTable(title, []string{from[0].Label}, []string{to[0].Label, to[1].Label}, []reachability.PortProtocol{port})
		Expect(err).NotTo(HaveOccurred())
		problems = problems[:0]
		for i, addr := range addrs {
			cmdline := fmt.Sprintf("./agnhost connect %s:%d --timeout=%s --protocol=tcp", addr, port.Port, connectTimeout)
			a, err := connect(ctx, cmdline)
			Expect(err).NotTo(HaveOccurred())
			reachable, word, err := agnhost.Judge(a)
			Expect(err).NotTo(HaveOccurred(), "%s in %s", cmdline, scenario.Client)
			detail := "no output (exit 0)"
			if !reachable {
				detail = fmt.Sprintf("%s (exit %d)", strings.TrimSpace(a.Stderr+a.Stdout), a.ExitCode)
			}
			GinkgoWriter.Printf("  attempt %d: bash-5.0# %s -> %s\n", attempt, cmdline, detail)
			key := reachability.Key{From: from[0].Label, To: to[i].Label, PortProtocol: port}
			Expect(observed.Set(key, reachability.Cell{Reachable: reachable, Detail: detail})).To(Succeed())
			// A policy drops: the article's blocked connect prints TIMEOUT.
			// REFUSED would mean the server's kernel answered, past the policy.
			if want, _ := expected.Get(key); !want.Reachable && !reachable && word != "TIMEOUT" {
				problems = append(problems, fmt.Sprintf("%s: blocked, but with %s instead of the article's TIMEOUT (a policy drop)", key, word))
			}
		}
		cmp, err = reachability.Compare(title, expected, observed)
		Expect(err).NotTo(HaveOccurred())
		last := time.Now().After(deadline)
		if (cmp.OK() && len(problems) == 0) || last {
			// The answers are the oracle's (or the last): the datapath's
			// flows must show why, else the step goes on until they do.
			w := flowcheck.Window{Start: began, End: time.Now()}
			Expect(cluster.Flows.Judge(ctx, GinkgoWriter, snap, w, cmp, from[0].Label, snap.PodIPs[client.String()], to)).To(Succeed())
		}
		if (cmp.OK() && len(problems) == 0) || last {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	res.Steps = append(res.Steps, report.StepResult{Name: step.Name, Duration: time.Since(started), Policies: stepRefs(step), Comparisons: []*reachability.Comparison{cmp}})
	res.Problems = append(res.Problems, problems...)
	var grid bytes.Buffer
	Expect(report.WriteComparison(&grid, cmp)).To(Succeed())
	GinkgoWriter.Print(grid.String())
	// A wrong answer does not stop the case: the next step (the article's
	// delete) says whether the path comes back, which is worth knowing too.
	if !cmp.OK() || len(problems) > 0 {
		return fmt.Sprintf("step %q, policies %v:\n%s%s", step.Name, stepRefs(step), grid.String(), strings.Join(problems, "\n"))
	}
	return ""
}

// failIf fails the spec with every step's failure, if any.
func failIf(failures []string) {
	var msgs []string
	for _, f := range failures {
		if f != "" {
			msgs = append(msgs, f)
		}
	}
	if len(msgs) > 0 {
		Fail(strings.Join(msgs, "\n"))
	}
}

func stepRefs(step policies.Step) []string {
	var out []string
	for _, r := range policies.Refs(step.Policies) {
		out = append(out, r.String())
	}
	if len(out) == 0 {
		out = []string{"none"}
	}
	return out
}

// connect runs the article's command line in the client's bash, through the
// API server's exec, and returns its output and exit code.
func connect(ctx context.Context, cmdline string) (agnhost.Answer, error) {
	var stdout, stderr bytes.Buffer
	pod := podexec.Pod{Namespace: scenario.Namespace, Name: scenario.Client}
	err := cluster.Exec.Exec(ctx, pod, []string{"bash", "-c", cmdline}, nil, &stdout, &stderr)
	a := agnhost.Answer{Stdout: stdout.String(), Stderr: stderr.String()}
	var exit clientexec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit):
		a.ExitCode = exit.ExitStatus()
	default:
		return a, fmt.Errorf("exec %q in %s: %w", cmdline, pod, err)
	}
	return a, nil
}
