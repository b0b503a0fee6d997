//go:build e2e

// Package resilience keeps probing a small matrix in the background (pods
// a, b, c of one namespace, each on its own node, TCP 80 and 81, one `probe
// batch` exec per source and round) while flatnet is disturbed, and holds
// every answer to fixtures/oracle:
//
//   - the agent on a node hosting a probed pod is deleted and its DaemonSet
//     recreates it: the datapath is pinned in bpffs, so no answer may differ
//     from the oracle's table at any time;
//   - a worker node's container is restarted (docker restart; the kind nodes
//     named in FLATNET_NODES): the pods on the other nodes keep their
//     verdicts throughout, the node's pods come back under their policies,
//     and the IPBlocks hold exactly the live pods' addresses, none twice;
//   - 20 policy changes (NetworkPolicy and CiliumNetworkPolicy creations,
//     updates, deletions) one after the other, each as soon as the last
//     converged, under one continuous watch: every answer is the oracle's
//     for a set in force at some time during its round (before or after the
//     change in flight).
//
// On a cluster with a disruptive lane node (kind-configs/default.yaml), the
// process that runs the disruptive specs puts b there and disturbs only that
// node, while the other suites run on the others (suites/README.md).
package resilience

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flatnet/flatnet/dataplane/ipam/cluster"
	"github.com/flatnet/flatnet/fixtures/oracle"
	"github.com/flatnet/flatnet/fixtures/policies"
	"github.com/flatnet/flatnet/fixtures/topology"
	"github.com/flatnet/flatnet/probes/batch"
	"github.com/flatnet/flatnet/probes/podexec"
	"github.com/flatnet/flatnet/suites/framework"
	"github.com/flatnet/flatnet/suites/internal/flatnetctl"
	"github.com/flatnet/flatnet/suites/internal/matrix"
	"github.com/flatnet/flatnet/suites/internal/workload"
	"github.com/flatnet/flatnet/suites/reachability"
	"github.com/flatnet/flatnet/suites/report"
)

func TestResilience(t *testing.T) { kc.Run(t) }

// churnChanges is how many policy changes the churn applies.
const churnChanges = 20

var (
	kc = framework.New("resilience", framework.Options{Settings: true, Policies: true, Flows: true, Report: &framework.ReportOptions{
		Title: "flatnet resilience: verdicts while agents, nodes and policies change",
		Entry: "resilience report",
	}})
	runner *podexec.Runner // matrices converging on the oracle
	watchR *podexec.Runner // background rounds
	ctl    flatnetctl.CLI
	model  = topology.Model{
		Namespaces:      []string{"r"},
		NamespacePrefix: fmt.Sprintf("flatnet-res-%04x-", time.Now().UnixNano()&0xffff),
		Pods:            []string{"a", "b", "c"},
		Ports:           []topology.Port{{Number: 80, Protocol: corev1.ProtocolTCP}, {Number: 81, Protocol: corev1.ProtocolTCP}},
	}
	book      = newPolicyBook(model.Namespace("r"))
	placement = map[string]string{} // pod -> node
	// ipamScope is the node whose IPBlocks are held to its live pods: the lane
	// node when b is there (other suites create and delete pods elsewhere
	// meanwhile), "" (every node) when the disruptive specs run alone.
	ipamScope string
)

var _ = kc.BeforeSuite(func(ctx SpecContext) {
	opts := batch.DefaultOptions()
	opts.Timeout = kc.Settings.ProbeTimeout
	// The converging matrices keep one exec per source pod (a session broken by a
	// restart is replaced); the background rounds make an exec each, so a stream
	// cut by a restarting node never stalls the rounds that time the disruption.
	sessions := podexec.NewSessions()
	DeferCleanup(func() {
		fmt.Fprintf(os.Stderr, "resilience: probe sessions: %s\n", sessions.Stats())
		sessions.Close()
	})
	runner = &podexec.Runner{Exec: kc.Exec, Options: opts, Sessions: sessions}
	// A background answer is judged alone: a SYN lost once on a busy machine
	// (retransmitted after 1 s) must not read as a drop.
	wopts := opts
	wopts.Timeout = max(3*time.Second, 2*kc.Settings.ProbeTimeout)
	watchR = &podexec.Runner{Exec: kc.Exec, Options: wopts}

	By("building flatnetctl from this tree")
	var err error
	ctl, err = flatnetctl.Build(ctx, kc.RepoRoot, GinkgoT().TempDir(), os.Getenv("KUBECONFIG"))
	Expect(err).NotTo(HaveOccurred())

	workers, others, err := kc.NodesByRole(ctx)
	Expect(err).NotTo(HaveOccurred())
	Expect(len(workers)).To(BeNumerically(">=", 2), "the suite restarts one worker while pods on the others are probed: it needs two workers (nodes %v)", workers)
	// a, b and c each on a node of its own, b on the one disturbed (its agent
	// deleted, then the node restarted), so every disruption leaves traffic
	// crossing nodes. A process that runs the disruptive specs puts b on the
	// cluster's disruptive lane node when it has one: the other suites, running
	// meanwhile, have nothing there.
	lane, err := kc.DisruptiveNode(ctx)
	Expect(err).NotTo(HaveOccurred())
	if lane != "" && Label("disruptive").MatchesLabelFilter(GinkgoLabelFilter()) {
		placement["a"], placement["b"], placement["c"] = workers[0], lane, workers[1]
		ipamScope = lane
	} else {
		third := append(workers[2:], others...)
		Expect(third).NotTo(BeEmpty(), "the suite needs a third node for pod c")
		placement["a"], placement["b"], placement["c"] = workers[0], workers[1], third[0]
	}
	notes := []string{
		fmt.Sprintf("API server %s; probe image %s; namespace %s", kc.Rest.Host, kc.Settings.ProbeImage, model.Namespace("r")),
		fmt.Sprintf("pods: a on %s, b on %s, c on %s; ports TCP 80, 81 by pod IP", placement["a"], placement["b"], placement["c"]),
		fmt.Sprintf("background probe timeout %s, matrix probe timeout %s, enforcement timeout %s", wopts.Timeout, opts.Timeout, kc.Settings.EnforceTimeout),
	}
	kc.Notes(notes...)
	for _, n := range notes {
		GinkgoWriter.Println(n)
	}

	By("creating namespace " + model.Namespace("r") + " and pods a, b, c, one per node")
	Expect(kc.CreateNamespace(ctx, model.NamespaceObjects()[0])).To(Succeed())
	var pods []corev1.Pod
	for _, r := range model.AllPods() {
		p := workload.Prepare(model.PodObject(r, kc.Settings.ProbeImage))
		p.Spec.NodeName = placement[r.Pod]
		// The control plane's and the lane's NoSchedule taints: c or b may sit there.
		p.Spec.Tolerations = []corev1.Toleration{{Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule}}
		pods = append(pods, p)
	}
	Expect(workload.CreatePods(ctx, kc.Clientset, pods)).To(Succeed())
	Expect(workload.WaitPodsReady(ctx, kc.Clientset, podKeys(), 3*time.Minute)).To(Succeed())
})

// The specs not run (a label filter, a --skip) are listed in the report
// with why, beside what ran.
var _ = ReportAfterSuite("resilience: the specs not run, in the report", kc.AddNotRun)

func podKeys() []workload.Key {
	var out []workload.Key
	for _, r := range model.AllPods() {
		out = append(out, workload.Key{Namespace: model.Namespace(r.Namespace), Name: r.Pod})
	}
	return out
}

// plan probes from every pod to every pod, except those on the skipped node.
func plan(title, skipNode string) matrix.Plan {
	var pods []reachability.Endpoint
	for _, e := range reachability.ModelEndpoints(model, false) {
		if placement[e.Peer.Name] != skipNode {
			pods = append(pods, e)
		}
	}
	return matrix.Plan{Title: title, From: pods, Views: []matrix.View{{Name: "pod IP", To: pods}}, Ports: reachability.ModelPorts(model)}
}

// expect snapshots the pods and asks the oracle for p's tables under ps.
func expect(ctx context.Context, p matrix.Plan, ps oracle.PolicySet) (workload.Snapshot, []*reachability.Table) {
	snap, err := workload.Take(ctx, kc.Clientset, []string{model.Namespace("r")})
	Expect(err).NotTo(HaveOccurred())
	o, err := oracle.New(snap.Cluster, ps)
	Expect(err).NotTo(HaveOccurred(), "the oracle refuses the policy set")
	tables, err := matrix.Expect(o, p)
	Expect(err).NotTo(HaveOccurred())
	return snap, tables
}

// settle moves to ps and probes p until it agrees with the oracle; a
// disagreement fails the spec before anything is disturbed.
func settle(ctx context.Context, res *report.CaseResult, name string, p matrix.Plan, ps oracle.PolicySet) (workload.Snapshot, []*reachability.Table) {
	started := time.Now()
	changed, err := kc.Policies.Apply(ctx, ps)
	Expect(err).NotTo(HaveOccurred())
	for _, ch := range changed {
		GinkgoWriter.Println("  " + ch)
	}
	snap, expected := expect(ctx, p, ps)
	out, err := matrix.Converge(ctx, runner, p, snap, expected, matrix.Options{Timeout: kc.Settings.EnforceTimeout, Pause: 250 * time.Millisecond, Verify: kc.Flows.Verify(GinkgoWriter)})
	Expect(err).NotTo(HaveOccurred())
	record(res, name, started, ps, out)
	Expect(out.OK()).To(BeTrue(), "%s: the cluster does not agree with the oracle:\n%s", name, grids(out))
	GinkgoWriter.Printf("  %s: as the oracle says after %d poll(s), %s\n", name, out.Polls, out.Converged.Round(10*time.Millisecond))
	return snap, expected
}

func record(res *report.CaseResult, name string, started time.Time, ps oracle.PolicySet, out matrix.Outcome) {
	manifest, _ := policies.Manifests(ps)
	res.Steps = append(res.Steps, report.StepResult{Name: name, Duration: time.Since(started), Policies: refs(ps), Manifest: string(manifest), Comparisons: out.Comparisons})
}

func grids(out matrix.Outcome) string {
	var b strings.Builder
	for _, c := range out.Comparisons {
		_ = report.WriteComparison(&b, c)
	}
	return b.String()
}

func refs(ps oracle.PolicySet) []string {
	var out []string
	for _, r := range policies.Refs(ps) {
		out = append(out, r.String())
	}
	return out
}

// save records the case as it is when the spec ends (deferred with a pointer).
func save(res *report.CaseResult) { kc.Record(*res) }

// watch is a background watch that prints each round and counts them.
type watch struct {
	name    string
	started time.Time
	w       *matrix.Watcher
	rounds  atomic.Int64
}

// startWatch starts a background watch; roundEnd, when set, hears of each
// round after it is judged.
func startWatch(ctx context.Context, name string, p matrix.Plan, snap workload.Snapshot, accept matrix.Accept, roundEnd func(matrix.Round)) *watch {
	wt := &watch{name: name, started: time.Now()}
	wt.w = matrix.WatchAccepting(ctx, watchR, p, snap, accept, func(r matrix.Round) {
		if roundEnd != nil {
			roundEnd(r)
		}
		if r.Err != nil {
			GinkgoWriter.Printf("  [%s] +%s: no verdict, exec lost (%v)\n", name, r.At.Round(100*time.Millisecond), r.Err)
			return
		}
		wt.rounds.Store(int64(r.N))
		GinkgoWriter.Printf("  [%s] round %d +%s: %d answers, %d not as the oracle allows\n", name, r.N, r.At.Round(100*time.Millisecond), r.Cells, r.Refused)
	})
	return wt
}

// awaitRounds waits until n more rounds than now have completed: traffic
// was judged across whatever happened meanwhile.
func (wt *watch) awaitRounds(ctx context.Context, n int64) {
	target := wt.rounds.Load() + n
	Eventually(wt.rounds.Load).WithContext(ctx).WithTimeout(2*time.Minute).WithPolling(200*time.Millisecond).
		Should(BeNumerically(">=", target), "[%s] background rounds", wt.name)
}

// stop ends the watch and says what it saw that it should not have.
func (wt *watch) stop(expected ...[]*reachability.Table) (problem string, rounds int) {
	gaps, rounds, err := wt.w.Stop()
	Expect(err).NotTo(HaveOccurred(), "[%s] no background round completed", wt.name)
	if len(gaps) == 0 {
		return "", rounds
	}
	var b strings.Builder
	fmt.Fprintf(&b, "[%s] %d answer(s) in %d round(s) were none the oracle allowed at the time:\n", wt.name, len(gaps), rounds)
	for i, g := range gaps {
		if i == 10 {
			fmt.Fprintf(&b, "    ... and %d more\n", len(gaps)-i)
			break
		}
		var want []string
		for _, tables := range expected {
			if c, ok := tables[0].Get(g.Key); ok {
				want = append(want, c.Detail)
			}
		}
		fmt.Fprintf(&b, "    round ending +%s %s: observed %s", g.At.Round(10*time.Millisecond), g.Key, g.Detail)
		if len(want) > 0 {
			fmt.Fprintf(&b, "; oracle: %s", strings.Join(want, " | "))
		}
		b.WriteString("\n")
	}
	return b.String(), rounds
}

// agentOn returns the agent pod of node.
func agentOn(ctx context.Context, node string) (corev1.Pod, error) { return kc.AgentOn(ctx, node) }

func ready(p corev1.Pod) bool {
	return slices.ContainsFunc(p.Status.Conditions, func(c corev1.PodCondition) bool {
		return c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue
	})
}

func restarts(p corev1.Pod) int32 {
	var n int32
	for _, c := range p.Status.ContainerStatuses {
		n += c.RestartCount
	}
	return n
}

var _ = Describe("verdicts while flatnet is disturbed [flatnet]", Label("flatnet", "resilience", "cilium", "disruptive"), Ordered, func() {
	BeforeAll(func() {
		Expect(kc.CiliumCRDs).NotTo(HaveOccurred(), "the steady policy set has a CiliumNetworkPolicy")
	})

	It("keeps every verdict while the agent of a probed pod's node is deleted and recreated", func(ctx SpecContext) {
		res := &report.CaseResult{Name: "agent-restart", Family: "resilience",
			Description: "The agent on " + placement["b"] + " (pod b's node) is deleted; the DaemonSet recreates it. The datapath stays pinned in bpffs: no answer may differ from the oracle's table, before, during or after."}
		defer save(res)
		node := placement["b"]
		p := plan("agent restart", "")
		snap, expected := settle(ctx, res, "steady policies", p, book.steady())
		old, err := agentOn(ctx, node)
		Expect(err).NotTo(HaveOccurred())

		wt := startWatch(ctx, "agent restart", p, snap, matrix.OneOf(expected), nil)
		wt.awaitRounds(ctx, 2)
		By(fmt.Sprintf("deleting agent pod %s on node %s while probing", old.Name, node))
		deleted := time.Now()
		Expect(kc.Clientset.CoreV1().Pods(framework.AgentNamespace).Delete(ctx, old.Name, metav1.DeleteOptions{})).To(Succeed())
		var fresh corev1.Pod
		Eventually(func(g Gomega) {
			a, err := agentOn(ctx, node)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(a.UID).NotTo(Equal(old.UID), "the old agent is still there")
			g.Expect(ready(a)).To(BeTrue(), "agent %s not Ready yet", a.Name)
			fresh = a
		}).WithContext(ctx).WithTimeout(3 * time.Minute).WithPolling(500 * time.Millisecond).Should(Succeed())
		back := time.Since(deleted)
		GinkgoWriter.Printf("  agent %s replaced by %s, Ready %s after the delete\n", old.Name, fresh.Name, back.Round(100*time.Millisecond))
		AddReportEntry("agent restart: deleted to Ready", back.Round(100*time.Millisecond).String())
		// Rounds wholly after the new agent took over its endpoints.
		wt.awaitRounds(ctx, 3)
		problem, rounds := wt.stop(expected)
		GinkgoWriter.Printf("  %d background rounds over %s\n", rounds, time.Since(deleted).Round(100*time.Millisecond))
		if problem != "" {
			res.Problems = append(res.Problems, problem)
			Fail(problem)
		}
	})

	It("keeps the other nodes' verdicts while a worker node restarts, and comes back under policy with no address leaked or shared", func(ctx SpecContext) {
		res := &report.CaseResult{Name: "node-restart", Family: "resilience",
			Description: "docker restart of " + placement["b"] + " (pod b's node) while a and c are probed; then b is probed again and the IPBlocks must hold exactly the live pods' addresses."}
		defer save(res)
		node := placement["b"]
		Expect(strings.Fields(os.Getenv("FLATNET_NODES"))).To(ContainElement(node),
			"FLATNET_NODES (set by scripts/e2e.sh: the kind node containers) must name %s for the suite to restart it with docker", node)
		usageBefore := usage(ctx)
		Eventually(ipamAgrees).WithArguments(ipamScope).WithContext(ctx).WithTimeout(time.Minute).WithPolling(2*time.Second).Should(Succeed(), "before the restart")
		b, err := kc.Clientset.CoreV1().Pods(model.Namespace("r")).Get(ctx, "b", metav1.GetOptions{})
		Expect(err).NotTo(HaveOccurred())
		agent, err := agentOn(ctx, node)
		Expect(err).NotTo(HaveOccurred())

		survivors := plan("node restart: pods on the other nodes", node)
		snap, expected := settle(ctx, res, "steady policies, pods on the other nodes", survivors, book.steady())
		wt := startWatch(ctx, "node restart", survivors, snap, matrix.OneOf(expected), nil)
		wt.awaitRounds(ctx, 2)

		By("docker restart " + node + " while probing the pods on the other nodes")
		started := time.Now()
		out, err := exec.CommandContext(ctx, "docker", "restart", node).CombinedOutput()
		Expect(err).NotTo(HaveOccurred(), "docker restart %s: %s", node, out)
		GinkgoWriter.Printf("  docker restart %s took %s\n", node, time.Since(started).Round(100*time.Millisecond))

		By("waiting for node " + node + ", its agent and pod b to be back")
		Eventually(func(g Gomega) {
			n, err := kc.Clientset.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
			g.Expect(err).NotTo(HaveOccurred())
			i := slices.IndexFunc(n.Status.Conditions, func(c corev1.NodeCondition) bool { return c.Type == corev1.NodeReady })
			g.Expect(i).To(BeNumerically(">=", 0))
			c := n.Status.Conditions[i]
			g.Expect(c.Status).To(Equal(corev1.ConditionTrue), "node %s: %s", node, c.Message)
			g.Expect(c.LastHeartbeatTime.Time).To(BeTemporally(">", started), "node %s: no kubelet heartbeat since the restart", node)
			a, err := agentOn(ctx, node)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(ready(a) && (a.UID != agent.UID || restarts(a) > restarts(agent))).To(BeTrue(), "agent %s on %s has not restarted and become Ready", a.Name, node)
			nb, err := kc.Clientset.CoreV1().Pods(model.Namespace("r")).Get(ctx, "b", metav1.GetOptions{})
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(ready(*nb) && restarts(*nb) > restarts(*b)).To(BeTrue(), "pod b has not restarted and become Ready (restarts %d, was %d)", restarts(*nb), restarts(*b))
			b = nb
		}).WithContext(ctx).WithTimeout(4 * time.Minute).WithPolling(time.Second).Should(Succeed())
		back := time.Since(started)
		GinkgoWriter.Printf("  node %s, its agent and pod b (%s, restarts %d) back %s after the restart\n", node, b.Status.PodIP, restarts(*b), back.Round(100*time.Millisecond))
		AddReportEntry("node restart: docker restart to pod b Ready", back.Round(100*time.Millisecond).String())
		problem, rounds := wt.stop(expected)
		GinkgoWriter.Printf("  %d background rounds on the other nodes' pods over %s\n", rounds, back.Round(100*time.Millisecond))
		if problem != "" {
			res.Problems = append(res.Problems, problem)
		}

		By("probing every pod again, b included, under the same policies")
		all := plan("node restart: every pod", "")
		snapAll, after := expect(ctx, all, book.steady())
		conv, err := matrix.Converge(ctx, runner, all, snapAll, after, matrix.Options{Timeout: kc.Settings.EnforceTimeout, Pause: 250 * time.Millisecond, Verify: kc.Flows.Verify(GinkgoWriter)})
		Expect(err).NotTo(HaveOccurred())
		record(res, "every pod after the restart", started, book.steady(), conv)
		if !conv.OK() {
			res.Problems = append(res.Problems, "after the restart the cluster does not agree with the oracle:\n"+grids(conv))
		} else {
			GinkgoWriter.Printf("  every pod as the oracle says after %d poll(s), %s\n", conv.Polls, conv.Converged.Round(10*time.Millisecond))
		}

		By("checking the IPBlocks hold exactly the live pods' addresses")
		Eventually(ipamAgrees).WithArguments(ipamScope).WithContext(ctx).WithTimeout(2*time.Minute).WithPolling(2*time.Second).Should(Succeed(), "after the restart")
		Expect(usage(ctx)).To(Equal(usageBefore), "flatnetctl usage: the restarted node must not claim another block")
		if len(res.Problems) > 0 {
			Fail(strings.Join(res.Problems, "\n"))
		}
	})
})

// The policy churn disturbs no node and no agent: only the policies of the
// suite's own namespace change. So it is not disruptive and make e2e runs it
// beside the other suites, not in the phase where nothing else may run.
var _ = Describe("verdicts while policies churn [flatnet]", Label("flatnet", "resilience", "cilium"), func() {
	It(fmt.Sprintf("answers as the oracle before or after each of %d policy changes while probing", churnChanges), func(ctx SpecContext) {
		res := &report.CaseResult{Name: "policy-churn", Family: "resilience",
			Description: fmt.Sprintf("%d changes, one object each (NetworkPolicy and CiliumNetworkPolicy creations, updates, deletions), one after the other as each converges, with the matrix probed continuously in the background; every answer must be the oracle's for a policy set in force at some time during its round.", churnChanges)}
		defer save(res)
		Expect(kc.CiliumCRDs).NotTo(HaveOccurred(), "the churn has a CiliumNetworkPolicy")
		p := plan("policy churn", "")
		cycle := book.churn()
		snap, start := settle(ctx, res, "start: no policy", p, cycle[0])
		// One watch over every change: its rounds fall at any phase of them.
		win := matrix.NewWindow(start)
		wt := startWatch(ctx, "churn", p, snap, win.Accept, win.RoundEnd)
		var problems, timeline []string
		var slowest time.Duration
		for i := 1; i <= churnChanges; i++ {
			from, to := cycle[(i-1)%len(cycle)], cycle[i%len(cycle)]
			_, after := expect(ctx, p, to)
			name := fmt.Sprintf("change %d/%d", i, churnChanges)
			started := time.Now()
			win.Begin(after)
			changed, err := kc.Policies.Apply(ctx, to)
			Expect(err).NotTo(HaveOccurred(), "%s: applying %v", name, refs(to))
			Expect(changed).To(HaveLen(1), "%s: one object per change (%v -> %v)", name, refs(from), refs(to))
			out, err := matrix.Converge(ctx, runner, p, snap, after, matrix.Options{Timeout: kc.Settings.EnforceTimeout, Pause: 250 * time.Millisecond, Verify: kc.Flows.Verify(GinkgoWriter)})
			Expect(err).NotTo(HaveOccurred(), "%s: probing", name)
			record(res, name+": "+changed[0], started, to, out)
			step := fmt.Sprintf("+%s %s %s: converged %v after %d poll(s), %s", started.Sub(wt.started).Round(10*time.Millisecond),
				name, changed[0], out.OK(), out.Polls, out.Converged.Round(10*time.Millisecond))
			timeline = append(timeline, step)
			GinkgoWriter.Println("  " + step)
			if !out.OK() {
				// Left pending: from now on either side is accepted, and the
				// failure is this one.
				problems = append(problems, fmt.Sprintf("%s (%s) never agreed with the oracle within %s:\n%s", name, changed[0], kc.Settings.EnforceTimeout, grids(out)))
				continue
			}
			win.Settle(after)
			slowest = max(slowest, out.Converged)
		}
		// A whole round begun after the last change settled.
		wt.awaitRounds(ctx, 2)
		problem, rounds := wt.stop()
		if problem != "" {
			problems = append(problems, problem+"  changes (since the watch began):\n    "+strings.Join(timeline, "\n    "))
		}
		summary := fmt.Sprintf("%d changes in %s, %d background rounds of %d answers, slowest convergence %s",
			churnChanges, time.Since(wt.started).Round(100*time.Millisecond), rounds, len(p.From)*len(p.From)*len(p.Ports), slowest.Round(10*time.Millisecond))
		GinkgoWriter.Println("  " + summary)
		AddReportEntry("policy churn", summary)
		res.Problems = problems
		if len(problems) > 0 {
			Fail(strings.Join(problems, "\n"))
		}
	})
})

// ipamAgrees says whether every address the IPBlocks hold is a live pod's
// on the block's node, and every live pod's address is held, once each: on
// node only, when node is not "" (no address is held twice on any).
func ipamAgrees(ctx context.Context, node string) error {
	blocks, err := cluster.New(kc.Dynamic).List(ctx)
	if err != nil {
		return err
	}
	held, anywhere := map[string]string{}, map[string]string{} // ip -> node: owner
	for _, b := range blocks {
		for _, a := range b.Status.Allocations {
			who := fmt.Sprintf("%s: %s/%s", b.Spec.Node, a.PodNamespace, a.PodName)
			if prev, dup := anywhere[a.IP]; dup {
				return fmt.Errorf("address %s is held twice: %s and %s", a.IP, prev, who)
			}
			anywhere[a.IP] = who
			if node == "" || b.Spec.Node == node {
				held[a.IP] = who
			}
		}
	}
	pl, err := kc.Clientset.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("listing pods: %w", err)
	}
	live := map[string]string{}
	for _, p := range pl.Items {
		if p.Spec.HostNetwork || p.Status.PodIP == "" || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed ||
			(node != "" && p.Spec.NodeName != node) {
			continue
		}
		who := fmt.Sprintf("%s: %s/%s", p.Spec.NodeName, p.Namespace, p.Name)
		if prev, dup := live[p.Status.PodIP]; dup {
			return fmt.Errorf("pods %s and %s share %s", prev, who, p.Status.PodIP)
		}
		live[p.Status.PodIP] = who
	}
	var diffs []string
	for ip, who := range held {
		if live[ip] != who {
			diffs = append(diffs, fmt.Sprintf("%s held for %s, live pod: %q", ip, who, live[ip]))
		}
	}
	for ip, who := range live {
		if _, ok := held[ip]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s of pod %s is held by no block", ip, who))
		}
	}
	if len(diffs) > 0 {
		sort.Strings(diffs)
		return fmt.Errorf("the IPBlocks and the live pods disagree:\n  %s", strings.Join(diffs, "\n  "))
	}
	return nil
}

// usage is `flatnetctl usage -o json`'s currentValue: the nodes plus every
// address pre-allocated to their blocks.
func usage(ctx context.Context) int {
	r, err := ctl.Run(ctx, "usage", "-o", "json", "--subnet", kc.Settings.NodeSubnet.String())
	Expect(err).NotTo(HaveOccurred())
	Expect(r.ExitCode).To(Equal(0), "%s", r)
	var u struct {
		Value []struct {
			CurrentValue int `json:"currentValue"`
			Limit        int `json:"limit"`
		} `json:"value"`
	}
	Expect(json.Unmarshal([]byte(r.Stdout), &u)).To(Succeed(), "%s", r)
	Expect(u.Value).To(HaveLen(1), "%s", r)
	GinkgoWriter.Printf("  flatnetctl usage: %d of %d addresses\n", u.Value[0].CurrentValue, u.Value[0].Limit)
	return u.Value[0].CurrentValue
}
