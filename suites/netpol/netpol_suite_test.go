//go:build e2e

// Package netpol is the policy conformance matrix: namespaces x, y, z with pods
// a, b, c serving TCP and UDP on 80 and 81, each behind its own Service. For
// every case of fixtures/policies (and a few seeded random ones) the suite
// applies the policy set, probes every pod from every pod by pod IP and
// through the Services (one `probe batch` exec per source pod, all cells in
// parallel), and compares the observed tables with the oracle's until they
// agree or the enforcement timeout passes.
//
// Against any cluster (another CNI): export KUBECONFIG and PROBE_IMAGE (the
// probe image loaded into, or pullable by, its nodes), FLATNET_NODE_SUBNET if
// the pods' subnet is not kind-configs/network.env's, and run
//
//	bin/ginkgo --tags e2e --label-filter='!flatnet' ./suites/netpol             # Cilium
//	bin/ginkgo --tags e2e --label-filter='!flatnet && !cilium' ./suites/netpol  # no cilium.io CRDs
//
// Settings: FLATNET_SEED (replay the random family), FLATNET_RANDOM_CASES,
// FLATNET_PROBE_TIMEOUT, FLATNET_ENFORCE_TIMEOUT, ARTIFACTS (report directory),
// FLATNET_KEEP=1 (keep the namespaces for debugging).
package netpol

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"

	"github.com/flatnet/flatnet/fixtures/oracle"
	"github.com/flatnet/flatnet/fixtures/policies"
	"github.com/flatnet/flatnet/fixtures/topology"
	"github.com/flatnet/flatnet/probes/batch"
	"github.com/flatnet/flatnet/probes/podexec"
	"github.com/flatnet/flatnet/suites/framework"
	"github.com/flatnet/flatnet/suites/internal/matrix"
	"github.com/flatnet/flatnet/suites/internal/workload"
	"github.com/flatnet/flatnet/suites/reachability"
	"github.com/flatnet/flatnet/suites/report"
)

func TestNetpol(t *testing.T) { cluster.Run(t) }

// worldCIDR is the outside block CIDR rules name (TEST-NET-1, RFC 5737): no
// probe is ever sent to it.
var worldCIDR = netip.MustParsePrefix("192.0.2.0/24")

// Decided while the spec tree is built: the random cases' names carry the
// seed (the settings are read by framework.New), and the namespaces' random
// prefix makes two runs on one cluster distinct (make e2e runs the suite in
// several parts at once).
var (
	cluster = framework.New("netpol", framework.Options{Settings: true, Policies: true, Flows: true, Report: &framework.ReportOptions{
		Title: "flatnet policy conformance matrix",
		Entry: "truth-table report",
	}})
	model = topology.Default(fmt.Sprintf("np-%06x-", rand.Uint32()&0xffffff), false)
)

// Set up by BeforeSuite: runner probes the matrices, watchRunner the
// background rounds while a step is applied.
var runner, watchRunner *podexec.Runner

var _ = cluster.BeforeSuite(func(ctx SpecContext) {
	Expect(model.Validate()).To(Succeed())

	seedHow := "from the clock"
	if cluster.Settings.SeedFromEnv {
		seedHow = "from FLATNET_SEED"
	}
	notes := []string{
		fmt.Sprintf("API server %s; probe image %s", cluster.Rest.Host, cluster.Settings.ProbeImage),
		fmt.Sprintf("random family: seed %d (%s); replay with FLATNET_SEED=%d", cluster.Settings.Seed, seedHow, cluster.Settings.Seed),
		fmt.Sprintf("probe timeout %s, enforcement timeout %s; namespaces %s", cluster.Settings.ProbeTimeout, cluster.Settings.EnforceTimeout, strings.Join(namespaces(), ", ")),
	}
	cluster.Notes(notes...)
	for _, n := range notes {
		GinkgoWriter.Println(n)
	}
	// The seed must survive a failed run's output: straight to the terminal too.
	fmt.Fprintf(os.Stderr, "netpol: %s\n", notes[1])
	AddReportEntry("random seed", fmt.Sprintf("%d (replay: FLATNET_SEED=%d)", cluster.Settings.Seed, cluster.Settings.Seed))

	By("creating namespaces " + strings.Join(namespaces(), ", ") + " through e2e-framework")
	for _, ns := range model.NamespaceObjects() {
		Expect(cluster.CreateNamespace(ctx, ns)).To(Succeed())
	}

	By("creating pods a, b, c in each namespace (TCP and UDP on 80 and 81) and their Services")
	var pods []corev1.Pod
	for _, p := range model.PodObjects(cluster.Settings.ProbeImage) {
		pods = append(pods, workload.Prepare(p))
	}
	Expect(workload.CreatePods(ctx, cluster.Clientset, pods)).To(Succeed())
	Expect(workload.CreateServices(ctx, cluster.Clientset, model.ServiceObjects())).To(Succeed())
	Expect(workload.WaitPodsReady(ctx, cluster.Clientset, podKeys(model.AllPods()), 3*time.Minute)).To(Succeed())
	Expect(workload.WaitServiceEndpoints(ctx, cluster.Clientset, serviceKeys(model.AllPods()), time.Minute)).To(Succeed())

	opts := batch.DefaultOptions()
	opts.Timeout = cluster.Settings.ProbeTimeout
	// Retries stay at zero: Converge polls the whole matrix again instead, and
	// a retry of every blocked cell would double each table's time.
	// One exec per source pod for the whole suite, not one per pod and poll.
	sessions := podexec.NewSessions()
	DeferCleanup(func() {
		fmt.Fprintf(os.Stderr, "netpol: probe sessions: %s\n", sessions.Stats())
		sessions.Close()
	})
	runner = &podexec.Runner{Exec: cluster.Exec, Options: opts, Sessions: sessions}
	// The background rounds get sessions of their own: a session answers one
	// request at a time, so on shared ones each poll of a step waited for the
	// watch's batch in every pod (a 3 s timeout) and the watch's next round
	// then waited for the poll: 8 s a watched step where 3 do.
	watchSessions := podexec.NewSessions()
	DeferCleanup(func() {
		fmt.Fprintf(os.Stderr, "netpol: background probe sessions: %s\n", watchSessions.Stats())
		watchSessions.Close()
	})
	// A longer timeout than the matrices': a gap must be a path that stayed
	// shut, not a probe starved of CPU on a busy node or one lost SYN
	// (retransmitted after 1 s). Rounds take longer for it, and only cells
	// open before and after the change are judged.
	watchOpts := opts
	watchOpts.Timeout = max(3*time.Second, 2*cluster.Settings.ProbeTimeout)
	watchRunner = &podexec.Runner{Exec: cluster.Exec, Options: watchOpts, Sessions: watchSessions}
	if cluster.CiliumCRDs != nil {
		GinkgoWriter.Printf("every case with a CiliumNetworkPolicy will fail: %v\n", cluster.CiliumCRDs)
	}
})

// The specs not run (a known divergence, a label filter, a --skip) are listed
// in the report with why, beside what ran.
var _ = ReportAfterSuite("netpol: the specs not run, in the truth-table report", cluster.AddNotRun)

// namespaces are the model's namespaces, by real name.
func namespaces() []string { return namespacesOf(model.Initial()) }

func namespacesOf(state topology.State) []string {
	var out []string
	for _, ns := range state.Namespaces() {
		out = append(out, model.Namespace(ns))
	}
	return out
}

func podKeys(pods []topology.PodRef) []workload.Key {
	var out []workload.Key
	for _, r := range pods {
		out = append(out, workload.Key{Namespace: model.Namespace(r.Namespace), Name: r.Pod})
	}
	return out
}

func serviceKeys(pods []topology.PodRef) []workload.Key {
	var out []workload.Key
	for _, r := range pods {
		out = append(out, workload.Key{Namespace: model.Namespace(r.Namespace), Name: model.ServiceName(r)})
	}
	return out
}

// plannedCases lists the cases while the spec tree is built, from the model
// as the oracle would see it scheduled: only names, families and kinds are
// used; each spec builds its case again from the live cluster.
func plannedCases() []policies.Case {
	c, err := model.PlannedCluster(cluster.Settings.NodeSubnet, 3)
	if err != nil {
		c, _ = model.PlannedCluster(netip.MustParsePrefix("10.224.0.0/16"), 3)
	}
	subnet := cluster.Settings.NodeSubnet
	if !subnet.IsValid() {
		subnet = netip.MustParsePrefix("10.224.0.0/16")
	}
	cases, err := allCases(policies.Env{Model: model, Cluster: c, NodeSubnet: subnet, WorldCIDR: worldCIDR})
	if err != nil {
		panic(fmt.Sprintf("listing the policy cases for the spec tree: %v", err))
	}
	return cases
}

// allCases is every named case and this run's random ones.
func allCases(e policies.Env) ([]policies.Case, error) {
	cases, err := policies.All(e)
	if err != nil {
		return nil, err
	}
	random, err := policies.Random(e, cluster.Settings.Seed, cluster.Settings.RandomCases)
	if err != nil {
		return nil, err
	}
	return append(cases, random...), nil
}

// liveCase builds the named case again from the running pods (CIDR and
// random cases use their addresses).
func liveCase(ctx context.Context, name string) (policies.Case, error) {
	snap, err := workload.Take(ctx, cluster.Clientset, namespaces())
	if err != nil {
		return policies.Case{}, err
	}
	cases, err := allCases(policies.Env{Model: model, Cluster: snap.Cluster, NodeSubnet: cluster.Settings.NodeSubnet, WorldCIDR: worldCIDR})
	if err != nil {
		return policies.Case{}, err
	}
	for _, c := range cases {
		if c.Name == name {
			return c, nil
		}
	}
	return policies.Case{}, fmt.Errorf("case %q is not among the live cases", name)
}

func usesCilium(c policies.Case) bool {
	for _, s := range c.Steps {
		if len(s.Policies.CiliumPolicies) > 0 {
			return true
		}
	}
	return false
}

var _ = Describe("policy conformance matrix", Serial, func() {
	It("with no policy, every pod reaches every pod and Service on every port", Label("baseline", family("baseline")), func(ctx SpecContext) {
		runCase(ctx, policies.Case{
			Name: "baseline-no-policy", Family: "baseline",
			Description: "No policy in force: the oracle expects every path open; a failure here is the CNI, not policy.",
			Steps:       []policies.Step{{Name: "no policy"}},
		})
	})

	It("gives every pod an address of the node subnet, beside the nodes (node-subnet IPAM)", Label("flatnet", family("baseline")), func(ctx SpecContext) {
		snap, err := workload.Take(ctx, cluster.Clientset, namespaces())
		Expect(err).NotTo(HaveOccurred())
		Expect(snap.Cluster.Pods).To(HaveLen(len(model.AllPods())))
		for _, n := range snap.Cluster.Nodes {
			Expect(cluster.Settings.NodeSubnet.Contains(n.IP)).To(BeTrue(), "node %s has %s, outside the node subnet %s", n.Name, n.IP, cluster.Settings.NodeSubnet)
		}
		for _, p := range snap.Cluster.Pods {
			Expect(cluster.Settings.NodeSubnet.Contains(p.IP)).To(BeTrue(), "pod %s has %s, outside the node subnet %s", p.Ref(), p.IP, cluster.Settings.NodeSubnet)
		}
	})

	for _, c := range plannedCases() {
		labels := Label(c.Family, family(c.Family))
		if usesCilium(c) {
			labels = append(labels, "cilium")
		}
		It(c.Name+": "+c.Description, labels, func(ctx SpecContext) {
			live, err := liveCase(ctx, c.Name)
			Expect(err).NotTo(HaveOccurred())
			runCase(ctx, live)
		})
	}

	It("SCTP on 80 and 81", Label("sctp", family("sctp")), func() {
		reason := "SCTP is not probed: this kernel is built without CONFIG_IP_SCTP and the probe image has no SCTP server (agnhost porter); not counted as passing"
		record(report.CaseResult{Name: "sctp", Family: "sctp", Description: "The model's SCTP ports, as in the upstream suite.", Skipped: reason})
		Skip(reason)
	})
})

func record(r report.CaseResult) { cluster.Record(r) }

// family is the label set entry naming a spec's family, one per spec:
// `make e2e` runs the suite in parts by it (`--label-filter='family:
// containsAny {update, random}'`), each part a process with its own
// namespaces.
func family(name string) string { return "family:" + name }

// The pass-rate table by family, as policy-assistant prints one, straight to
// the terminal like the seed: it is the run's summary.
var _ = cluster.AfterSuite(func(SpecContext) {
	recorded := cluster.Cases()
	if len(recorded) == 0 {
		return
	}
	var b strings.Builder
	Expect(report.WriteFamilyTable(&b, recorded)).To(Succeed())
	fmt.Fprintf(os.Stderr, "netpol: pass rate by family\n%s", b.String())
	GinkgoWriter.Print(b.String())
})

// runCase applies each step's policies and identity changes (relabels,
// namespaces created and deleted), probes the matrix until it agrees with the
// oracle or the enforcement timeout passes, records the tables and fails
// listing the policies of any step that disagreed. From the second step on,
// the matrix is also probed in the background while the step is applied.
func runCase(ctx context.Context, c policies.Case) {
	res := report.CaseResult{Name: c.Name, Family: c.Family, Description: c.Description}
	defer func() { record(res) }()
	setupFail := func(format string, args ...any) {
		res.Error = fmt.Sprintf(format, args...)
		Fail(res.Error)
	}
	if usesCilium(c) && cluster.CiliumCRDs != nil {
		setupFail("case %s needs CiliumNetworkPolicy: %v", c.Name, cluster.CiliumCRDs)
	}
	DeferCleanup(func(ctx SpecContext) {
		_, err := cluster.Policies.Apply(ctx, oracle.PolicySet{})
		Expect(err).NotTo(HaveOccurred(), "removing the case's policies")
	})
	// The workload as the case's changes left it, so far as they were made;
	// put back as the model made it for the next case.
	state := model.Initial()
	DeferCleanup(func(ctx SpecContext) {
		if back := state.Revert(); len(back) > 0 {
			Expect(applyChanges(ctx, &state, back)).To(Succeed(), "putting the workload back as the model made it")
		}
	})
	var failures []string
	var policiesBefore oracle.PolicySet
	for i, step := range c.Steps {
		started := time.Now()
		By(fmt.Sprintf("%s step %d/%d %q: %s", c.Name, i+1, len(c.Steps), step.Name, strings.Join(append(refs(step.Policies), changeNames(step.Changes)...), ", ")))
		moments, err := policies.Moments(policiesBefore, state, step)
		if err != nil {
			setupFail("%v", err)
		}
		// Traffic flows on the paths every moment of the change keeps open
		// while it is applied (pods that come or go are left out).
		var watcher *matrix.Watcher
		if len(step.RecreatePods) == 0 && i > 0 {
			watcher = startWatch(ctx, c.Name+" / "+step.Name, moments, setupFail)
		}
		changed, err := cluster.Policies.Apply(ctx, step.Policies)
		if err != nil {
			stopWatch(watcher)
			setupFail("step %q: applying the policies: %v", step.Name, err)
		}
		for _, ch := range changed {
			GinkgoWriter.Println("  " + ch)
		}
		for _, r := range step.RecreatePods {
			By(fmt.Sprintf("recreating pod %s under the policy", r))
			if err := workload.RecreatePod(ctx, cluster.Clientset, workload.Prepare(state.PodObject(r, cluster.Settings.ProbeImage)), 2*time.Minute); err != nil {
				stopWatch(watcher)
				setupFail("step %q: recreating %s: %v", step.Name, r, err)
			}
		}
		if err := applyChanges(ctx, &state, step.Changes); err != nil {
			stopWatch(watcher)
			setupFail("step %q: %v", step.Name, err)
		}
		if len(step.RecreatePods) > 0 {
			if err := workload.WaitServiceEndpoints(ctx, cluster.Clientset, serviceKeys(state.Pods()), time.Minute); err != nil {
				setupFail("step %q: %v", step.Name, err)
			}
		}
		plan := statePlan(c.Name+" / "+step.Name, state.Pods())
		snap, expected := expect(ctx, step, state, plan, setupFail)
		out, err := matrix.Converge(ctx, runner, plan, snap, expected, matrix.Options{
			Timeout: cluster.Settings.EnforceTimeout, Pause: 250 * time.Millisecond,
			Progress: func(p matrix.Poll) { GinkgoWriter.Printf("  %s: %s\n", step.Name, p) },
			Verify:   cluster.Flows.Verify(GinkgoWriter),
		})
		gaps, rounds, werr := stopWatch(watcher)
		if err != nil {
			setupFail("step %q: probing: %v", step.Name, err)
		}
		if werr != nil {
			setupFail("step %q: probing while the change was applied: %v", step.Name, werr)
		}
		policiesBefore = step.Policies
		manifest, _ := policies.Manifests(step.Policies)
		res.Steps = append(res.Steps, report.StepResult{
			Name: step.Name, Duration: time.Since(started), Policies: refs(step.Policies),
			Manifest: changesComment(step.Changes) + string(manifest), Comparisons: out.Comparisons,
		})
		for _, cmp := range out.Comparisons {
			Expect(report.WriteComparison(GinkgoWriter, cmp)).To(Succeed())
		}
		if out.OK() {
			GinkgoWriter.Printf("  %s: enforced as expected after %d poll(s), %s\n", step.Name, out.Polls, out.Converged.Round(10*time.Millisecond))
		} else {
			failures = append(failures, describeFailure(step, out))
		}
		if watcher != nil {
			GinkgoWriter.Printf("  %s: %d background round(s) while the change was applied, %d blocked answer(s) on paths every moment of it keeps open\n", step.Name, rounds, len(gaps))
		}
		if len(gaps) > 0 {
			msg := describeGaps(step, gaps)
			failures = append(failures, msg)
			res.Problems = append(res.Problems, msg)
		}
	}
	if len(failures) > 0 {
		Fail(fmt.Sprintf("case %s: the cluster did not do what the oracle expects (enforcement timeout %s)\n%s", c.Name, cluster.Settings.EnforceTimeout, strings.Join(failures, "\n")))
	}
}

// expect snapshots the pods of state and asks the oracle for the step's
// tables, on the cluster as state says it is labelled.
func expect(ctx context.Context, step policies.Step, state topology.State, plan matrix.Plan, setupFail func(string, ...any)) (workload.Snapshot, []*reachability.Table) {
	snap, err := workload.Take(ctx, cluster.Clientset, namespacesOf(state))
	if err != nil {
		setupFail("step %q: %v", step.Name, err)
	}
	c, missing := state.Predict(snap.Cluster)
	if len(missing) > 0 {
		setupFail("step %q: pods %v of the case's workload are not running", step.Name, missing)
	}
	o, err := oracle.New(c, step.Policies)
	if err != nil {
		setupFail("step %q: the oracle refuses the policy set: %v", step.Name, err)
	}
	if err := checkDocumented(o, step); err != nil {
		setupFail("step %q: %v", step.Name, err)
	}
	expected, err := matrix.Expect(o, plan)
	if err != nil {
		setupFail("step %q: expected tables: %v", step.Name, err)
	}
	return snap, expected
}

func stopWatch(w *matrix.Watcher) ([]matrix.Gap, int, error) {
	if w == nil {
		return nil, 0, nil
	}
	return w.Stop()
}

// describeGaps lists blocked answers on paths open before the change, after
// it and in every mix of its parts: the change broke traffic it should not
// touch.
func describeGaps(step policies.Step, gaps []matrix.Gap) string {
	var b strings.Builder
	fmt.Fprintf(&b, "step %q: %d probe(s) on paths open before and after the change (and in every mix of its parts) were blocked while it was applied (policies now: %s%s)\n",
		step.Name, len(gaps), strings.Join(refs(step.Policies), ", "), strings.TrimSuffix("; "+strings.Join(changeNames(step.Changes), "; "), "; "))
	for i, g := range gaps {
		if i == 10 {
			fmt.Fprintf(&b, "    ... and %d more\n", len(gaps)-i)
			break
		}
		fmt.Fprintf(&b, "    +%s %s %s: %s\n", g.At.Round(10*time.Millisecond), g.Table, g.Key, g.Detail)
	}
	return b.String()
}

// checkDocumented holds the oracle to the tables written by hand from the
// documentation, on the live cluster: if they disagree the fixtures are wrong,
// and no probe result could be judged.
func checkDocumented(o *oracle.Oracle, step policies.Step) error {
	for _, d := range step.Documented {
		for i, from := range d.From {
			for j, to := range d.To {
				want, err := d.Reachable(i, j)
				if err != nil {
					return err
				}
				v, err := o.Decide(from, to, d.Port, d.Protocol)
				if err != nil {
					return err
				}
				if v.Allowed != want {
					return fmt.Errorf("the oracle says %s -> %s %d/%s is %s, the documented table (%s) says the opposite", from, to, d.Port, d.Protocol, v, d.Source)
				}
			}
		}
	}
	return nil
}

func refs(ps oracle.PolicySet) []string {
	var out []string
	for _, r := range policies.Refs(ps) {
		out = append(out, r.String())
	}
	return out
}

// describeFailure is a step's failure for people: the summaries, the
// policies in force, and the mismatched cells with the policies each involves.
func describeFailure(step policies.Step, out matrix.Outcome) string {
	var b strings.Builder
	fmt.Fprintf(&b, "step %q after %d poll(s); policies in force: %s\n", step.Name, out.Polls, strings.Join(refs(step.Policies), ", "))
	var involved []string
	for _, cmp := range out.Comparisons {
		if cmp.OK() {
			continue
		}
		fmt.Fprintf(&b, "  %s\n", cmp.Summary())
		for i, m := range cmp.Mismatches {
			if i == 10 {
				fmt.Fprintf(&b, "    ... and %d more (see the grids above and the HTML report)\n", len(cmp.Mismatches)-i)
				break
			}
			fmt.Fprintf(&b, "    %s: expected %s, observed %s; oracle: %s\n", m.Key, reach(m.Expected.Reachable), m.Observed.Detail, m.Expected.Detail)
		}
		for _, m := range cmp.Mismatches {
			for _, p := range m.Expected.Policies {
				if !slices.Contains(involved, p) {
					involved = append(involved, p)
				}
			}
		}
		for _, k := range cmp.Missing {
			fmt.Fprintf(&b, "    %s: not probed (the probe could not run, or its attempts disagreed)\n", k)
		}
	}
	if len(involved) > 0 {
		slices.Sort(involved)
		fmt.Fprintf(&b, "  policies involved in the mismatched cells: %s\n", strings.Join(involved, ", "))
	}
	return b.String()
}

func reach(r bool) string {
	if r {
		return "reachable"
	}
	return "blocked"
}
