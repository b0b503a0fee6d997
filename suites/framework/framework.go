// Package framework is the setup every flatnet suite shares, in the manner of
// Kubernetes' framework.NewDefaultFramework: New, called once at the top of a
// suite, registers the suite's BeforeSuite and AfterSuite. Before the suite's
// own setup (BeforeSuite) they read the run's settings (suites/internal/runenv)
// and connect to the cluster of $KUBECONFIG with every client the suites use;
// after the suite's own teardown (AfterSuite) they remove the policies the suite
// applied, write its truth-table report (suites/internal/artifacts) and delete
// the namespaces it created (unless FLATNET_KEEP=1). A suite keeps only what is
// its own: its pods, its placement, its report's notes.
//
// The cluster side is sigs.k8s.io/e2e-framework's: an envconf.Config holding
// the klient client, namespaces created and deleted by its envfuncs and waited
// for with its klient/wait conditions. Its env.Environment runs Setup and
// Finish functions only from TestMain (Environment.Run(m)), outside Ginkgo and
// its report; here the same env.Funcs run from Ginkgo's BeforeSuite and
// AfterSuite, so a setup that fails is a failed BeforeSuite in the JUnit.
package framework

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/onsi/ginkgo/v2"
	"github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/e2e-framework/klient"
	"sigs.k8s.io/e2e-framework/klient/k8s"
	"sigs.k8s.io/e2e-framework/klient/k8s/resources"
	"sigs.k8s.io/e2e-framework/klient/wait"
	"sigs.k8s.io/e2e-framework/klient/wait/conditions"
	"sigs.k8s.io/e2e-framework/pkg/env"
	"sigs.k8s.io/e2e-framework/pkg/envconf"
	"sigs.k8s.io/e2e-framework/pkg/envfuncs"

	"github.com/flatnet/flatnet/fixtures/oracle"
	"github.com/flatnet/flatnet/probes/podexec"
	"github.com/flatnet/flatnet/suites/internal/artifacts"
	"github.com/flatnet/flatnet/suites/internal/flowcheck"
	"github.com/flatnet/flatnet/suites/internal/notrun"
	"github.com/flatnet/flatnet/suites/internal/policyset"
	"github.com/flatnet/flatnet/suites/internal/runenv"
	"github.com/flatnet/flatnet/suites/internal/workload"
	"github.com/flatnet/flatnet/suites/report"
)

// Timeouts of the namespace work: the ServiceAccount controller is quick; a
// namespace goes only when every pod in it has.
const (
	serviceAccountTimeout  = time.Minute
	namespaceDeleteTimeout = 3 * time.Minute
	// A namespace cases delete is waited for within the spec and every suite
	// waits for its own at the end: a second's poll added half a second to each.
	namespaceDeletePoll = 250 * time.Millisecond
)

// The agents, as dataplane/manifests/agent.yaml deploys them: the suites that
// look at the agents themselves find them so.
const (
	AgentNamespace = "flatnet-system"
	AgentSelector  = "app.kubernetes.io/name=flatnet-agent"
)

// AgentOn returns the live (not terminating) agent pod of node; it is an
// error when there is none or more than one, saying which.
func (f *Framework) AgentOn(ctx context.Context, node string) (corev1.Pod, error) {
	pl, err := f.Clientset.CoreV1().Pods(AgentNamespace).List(ctx, metav1.ListOptions{LabelSelector: AgentSelector, FieldSelector: "spec.nodeName=" + node})
	if err != nil {
		return corev1.Pod{}, fmt.Errorf("listing the agent of node %s: %w", node, err)
	}
	var live []corev1.Pod
	for _, p := range pl.Items {
		if p.DeletionTimestamp == nil {
			live = append(live, p)
		}
	}
	if len(live) != 1 {
		return corev1.Pod{}, fmt.Errorf("node %s has %d live agent pods (-n %s -l %s), want 1", node, len(live), AgentNamespace, AgentSelector)
	}
	return live[0], nil
}

// LaneLabel, with the value DisruptiveLane, marks the node a cluster keeps for
// the disruptive specs (kind-configs/default.yaml): they restart it, stop its
// agent and fill its pod capacity there while the other suites run on the other
// nodes. The node is tainted with the same key and value (NoSchedule).
const (
	LaneLabel      = "flatnet.io/e2e-lane"
	DisruptiveLane = "disruptive"
)

// NodesByRole lists the cluster's nodes by name, sorted: the workers, and the
// control-plane nodes (labelled node-role.kubernetes.io/control-plane). The
// disruptive lane's node is neither (DisruptiveNode): what other suites place
// there may be disturbed at any time.
func (f *Framework) NodesByRole(ctx context.Context) (workers, controlPlane []string, err error) {
	nodes, err := f.Clientset.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, nil, fmt.Errorf("listing nodes: %w", err)
	}
	for _, n := range nodes.Items {
		if n.Labels[LaneLabel] == DisruptiveLane {
			continue
		}
		if _, cp := n.Labels["node-role.kubernetes.io/control-plane"]; cp {
			controlPlane = append(controlPlane, n.Name)
		} else {
			workers = append(workers, n.Name)
		}
	}
	slices.Sort(workers)
	slices.Sort(controlPlane)
	return workers, controlPlane, nil
}

// DisruptiveNode is the node the cluster keeps for the disruptive specs, ""
// when it has none (a cluster not made from kind-configs/default.yaml: the
// disruptive specs then use the other nodes, and make e2e runs them alone).
func (f *Framework) DisruptiveNode(ctx context.Context) (string, error) {
	nodes, err := f.Clientset.CoreV1().Nodes().List(ctx, metav1.ListOptions{LabelSelector: LaneLabel + "=" + DisruptiveLane})
	if err != nil {
		return "", fmt.Errorf("listing the nodes labelled %s=%s: %w", LaneLabel, DisruptiveLane, err)
	}
	var names []string
	for _, n := range nodes.Items {
		names = append(names, n.Name)
	}
	slices.Sort(names)
	if len(names) > 1 {
		return "", fmt.Errorf("nodes %v are all labelled %s=%s: want one", names, LaneLabel, DisruptiveLane)
	}
	if len(names) == 0 {
		return "", nil
	}
	return names[0], nil
}

// Options say which of the shared parts a suite uses.
type Options struct {
	// Settings: the suite reads the run's settings (PROBE_IMAGE and the rest,
	// see suites/README.md), read when New is called so the spec tree may
	// use them (netpol's random cases carry the seed in their names).
	Settings bool
	// Policies: the suite applies policies through Framework.Policies,
	// removed again after the suite.
	Policies bool
	// Report, when set, is the suite's truth-table report.
	Report *ReportOptions
	// Flows: the suite checks its verdicts against the datapath's flows
	// (Framework.Flows), as --flow-validation / FLATNET_FLOW_VALIDATION say.
	Flows bool
	// PodSecurity is the Pod Security level its namespaces enforce:
	// PodSecurityRestricted when empty; a suite whose pods need more (host
	// network, NET_ADMIN) names the level that admits them.
	PodSecurity string
}

// flowValidation is the suites' --flow-validation (after `--` on the ginkgo
// command line); FLATNET_FLOW_VALIDATION when not given.
var flowValidation = flag.String(flowcheck.FlagName, "", "strict, warn or off: check every verdict against the datapath's flows (default: strict when the cluster runs a Hubble relay, else off)")

// ReportOptions name a suite's truth-table report, written after the suite as
// <ARTIFACTS>/<suite>.html and <suite>.junit.xml.
type ReportOptions struct {
	Title string
	// Entry names the Ginkgo report entry listing the report's files.
	Entry string
	// Always writes the report when no case was recorded; otherwise such a
	// run (only a benchmark ran) leaves any earlier report in place.
	Always bool
}

// Framework is one suite's view of the cluster under test. Its exported
// fields are set by the shared BeforeSuite, before the suite's own setup runs.
type Framework struct {
	// Name names the suite: its report files, its log lines.
	Name    string
	Options Options

	// RepoRoot and Settings are set by New when Options.Settings is.
	RepoRoot    string
	Settings    runenv.Settings
	settingsErr error

	// Config is e2e-framework's configuration of the cluster (its klient
	// client is the one below); Rest, Clientset and Dynamic are client-go's.
	// The pods Clientset creates get the run's defaults (restricted Pod
	// Security settings, the placement of FLATNET_NODE_SELECTOR and
	// FLATNET_TOLERATIONS; see podDefaults).
	Config    *envconf.Config
	Rest      *rest.Config
	Clientset kubernetes.Interface
	Dynamic   dynamic.Interface
	Resources *resources.Resources
	// Exec runs commands in pods through the API server.
	Exec *podexec.APIServerExecutor

	// Policies applies policy sets (Options.Policies); CiliumCRDs says why
	// CiliumNetworkPolicies cannot be applied, nil when they can.
	Policies   *policyset.Applier
	CiliumCRDs error

	// Flows checks verdicts against the flows (Options.Flows); nil when flow
	// validation is off. FlowNote says which mode and why.
	Flows    *flowcheck.Checker
	FlowNote string
	relay    *flowcheck.Relay

	setUps, tearDowns []func(ginkgo.SpecContext)

	mu            sync.Mutex
	namespaces    []string // created by the suite and not deleted yet
	report        *report.Report
	reportWritten bool
}

// New makes a suite's framework and registers its BeforeSuite and AfterSuite;
// call it once, at the top level of the suite. The suite adds its own setup
// and teardown with BeforeSuite and AfterSuite.
func New(name string, opts Options) *Framework {
	f := &Framework{Name: name, Options: opts}
	if opts.Settings {
		f.RepoRoot, f.Settings, f.settingsErr = readSettings()
	}
	if opts.Report != nil {
		f.report = &report.Report{Title: opts.Report.Title, Started: time.Now()}
	}
	ginkgo.BeforeSuite(f.beforeSuite)
	ginkgo.AfterSuite(f.afterSuite)
	return f
}

// Run runs the suite's specs under its name; it is the suite's one Go test:
// `func TestX(t *testing.T) { f.Run(t) }`.
func (f *Framework) Run(t ginkgo.GinkgoTestingT) bool {
	gomega.RegisterFailHandler(ginkgo.Fail)
	return ginkgo.RunSpecs(t, f.Name)
}

// BeforeSuite adds the suite's own setup, run after the shared one; it
// returns true so a suite can register it as `var _ = f.BeforeSuite(...)`.
func (f *Framework) BeforeSuite(body func(ginkgo.SpecContext)) bool {
	f.setUps = append(f.setUps, body)
	return true
}

// AfterSuite adds the suite's own teardown, run before the shared one (which
// runs even when this fails). It runs even when BeforeSuite failed: check
// what it uses.
func (f *Framework) AfterSuite(body func(ginkgo.SpecContext)) bool {
	f.tearDowns = append(f.tearDowns, body)
	return true
}

func readSettings() (string, runenv.Settings, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", runenv.Settings{}, err
	}
	root, err := runenv.RepoRoot(wd)
	if err != nil {
		return "", runenv.Settings{}, err
	}
	s, err := runenv.Read(os.LookupEnv, root, time.Now())
	return root, s, err
}

func (f *Framework) beforeSuite(ctx ginkgo.SpecContext) {
	gomega.Expect(f.settingsErr).NotTo(gomega.HaveOccurred())
	var flowMode flowcheck.Mode
	if f.Options.Flows {
		var err error
		flowMode, err = flowcheck.Choose(*flowValidation, os.Getenv(flowcheck.EnvName))
		gomega.Expect(err).NotTo(gomega.HaveOccurred())
	}
	gomega.Expect(f.connect()).To(gomega.Succeed())
	if f.Options.Flows {
		var err error
		f.Flows, f.relay, f.FlowNote, err = flowcheck.Setup(ctx, f.Rest, f.Clientset, flowMode, os.Getenv(flowcheck.RelayEnv), ginkgo.GinkgoWriter)
		gomega.Expect(err).NotTo(gomega.HaveOccurred())
		ginkgo.GinkgoWriter.Println(f.FlowNote)
		ginkgo.DeferCleanup(f.relay.Close)
	}
	if f.Options.Policies {
		f.Policies = policyset.New(f.Clientset, f.Dynamic)
		f.CiliumCRDs = policyset.CheckCiliumCRDs(f.Clientset.Discovery(), oracle.KindCNP)
	}
	for _, s := range f.setUps {
		s(ctx)
	}
}

// connect builds every client from $KUBECONFIG (make e2e sets it to the kind
// cluster's file; `make conformance KUBECONFIG=...` to any other cluster).
func (f *Framework) connect() error {
	path := os.Getenv("KUBECONFIG")
	if path == "" {
		return fmt.Errorf("KUBECONFIG is not set: run the suites through `make e2e`, or export KUBECONFIG=<file of the cluster to test>")
	}
	restCfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return fmt.Errorf("reading KUBECONFIG %s: %w", path, err)
	}
	// Suites issue bursts of execs and watches; client-go's defaults (5 qps) would pace them.
	restCfg.QPS, restCfg.Burst = 50, 100
	cs, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return fmt.Errorf("building a clientset from %s: %w", path, err)
	}
	f.Clientset = defaultingClientset{Interface: cs, d: podDefaults{placement: f.Settings.Placement}}
	if f.Dynamic, err = dynamic.NewForConfig(restCfg); err != nil {
		return fmt.Errorf("building a dynamic client from %s: %w", path, err)
	}
	kl, err := klient.New(restCfg)
	if err != nil {
		return fmt.Errorf("building e2e-framework's client from %s: %w", path, err)
	}
	if f.Exec, err = podexec.NewExecutor(restCfg, f.Clientset); err != nil {
		return err
	}
	f.Rest, f.Resources = restCfg, kl.Resources()
	f.Config = envconf.NewWithKubeConfig(path).WithClient(kl)
	return nil
}

func (f *Framework) afterSuite(ctx ginkgo.SpecContext) {
	// Cleanups run last-registered first, and even when what follows fails.
	ginkgo.DeferCleanup(f.deleteNamespaces)
	ginkgo.DeferCleanup(f.writeReport)
	if f.Policies != nil {
		gomega.Expect(f.Policies.Reset(ctx)).To(gomega.Succeed())
	}
	for _, t := range f.tearDowns {
		t(ctx)
	}
}

// Keep says FLATNET_KEEP=1: leave the suite's namespaces and pods for debugging.
func (f *Framework) Keep() bool { return os.Getenv("FLATNET_KEEP") == "1" }

// run applies e2e-framework environment functions in order, stopping at the
// first error.
func (f *Framework) run(ctx context.Context, funcs ...env.Func) error {
	var err error
	for _, fn := range funcs {
		if ctx, err = fn(ctx, f.Config); err != nil {
			return err
		}
	}
	return nil
}

// CreateNamespace creates ns (with its labels, which namespace selectors
// match, the suites' managed-by label and the suite's Pod Security level
// unless ns names one) through e2e-framework and waits for
// its default ServiceAccount: pods created before the controller makes it are
// refused by admission. The namespace is deleted after the suite, if the suite
// does not delete it before (DeleteNamespaces).
func (f *Framework) CreateNamespace(ctx context.Context, ns corev1.Namespace) error {
	labels := workload.WithManagedBy(ns.Labels)
	if _, set := labels[PodSecurityEnforceLabel]; !set {
		labels[PodSecurityEnforceLabel] = cmp.Or(f.Options.PodSecurity, PodSecurityRestricted)
	}
	if err := f.run(ctx, envfuncs.CreateNamespace(ns.Name, envfuncs.WithLabels(labels))); err != nil {
		return fmt.Errorf("creating namespace %s: %w", ns.Name, err)
	}
	f.mu.Lock()
	f.namespaces = append(f.namespaces, ns.Name)
	f.mu.Unlock()
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns.Name, Name: "default"}}
	err := wait.For(conditions.New(f.Resources).ResourceMatch(sa, func(k8s.Object) bool { return true }),
		wait.WithContext(ctx), wait.WithImmediate(), wait.WithInterval(250*time.Millisecond), wait.WithTimeout(serviceAccountTimeout))
	if err != nil {
		return fmt.Errorf("waiting for ServiceAccount %s/default (made by kube-controller-manager): %w", ns.Name, err)
	}
	return nil
}

// DeleteNamespaces deletes namespaces through e2e-framework and waits for them
// to go, so the next run starts clean; one already gone is fine.
func (f *Framework) DeleteNamespaces(ctx context.Context, names ...string) error {
	var gone corev1.NamespaceList
	for _, n := range names {
		if err := f.run(ctx, envfuncs.DeleteNamespace(n)); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("deleting namespace %s: %w", n, err)
		}
		gone.Items = append(gone.Items, corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: n}})
	}
	f.mu.Lock()
	f.namespaces = slices.DeleteFunc(f.namespaces, func(n string) bool { return slices.Contains(names, n) })
	f.mu.Unlock()
	deleted := conditions.New(f.Resources).ResourcesDeleted(&gone)
	var lastErr error
	err := wait.For(func(ctx context.Context) (bool, error) {
		// An API server slow to answer (a loaded machine) is asked again; the
		// condition remembers which namespaces are already gone.
		done, err := deleted(ctx)
		if err != nil {
			lastErr = err
		}
		return done, nil
	}, wait.WithContext(ctx), wait.WithImmediate(), wait.WithInterval(namespaceDeletePoll), wait.WithTimeout(namespaceDeleteTimeout))
	if err != nil {
		return fmt.Errorf("waiting %s for namespaces %v to be deleted: %w (last API error: %v)", namespaceDeleteTimeout, names, err, lastErr)
	}
	return nil
}

func (f *Framework) deleteNamespaces(ctx ginkgo.SpecContext) {
	f.mu.Lock()
	names := slices.Clone(f.namespaces)
	f.mu.Unlock()
	if len(names) == 0 {
		return
	}
	if f.Keep() {
		ginkgo.GinkgoWriter.Printf("FLATNET_KEEP=1: namespaces %v kept\n", names)
		return
	}
	gomega.Expect(f.DeleteNamespaces(ctx, names...)).To(gomega.Succeed())
}

// Notes sets the notes at the top of the suite's report: the cluster, the
// image, the random seed (so a failure can be replayed).
func (f *Framework) Notes(notes ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.report.Notes = notes
	if f.FlowNote != "" {
		f.report.Notes = append(slices.Clone(notes), f.FlowNote)
	}
}

// Record adds a case to the suite's report; specs may call it concurrently.
func (f *Framework) Record(c report.CaseResult) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.report.Cases = append(f.report.Cases, c)
}

// Cases are the cases recorded so far (nil without a report).
func (f *Framework) Cases() []report.CaseResult {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.report == nil {
		return nil
	}
	return slices.Clone(f.report.Cases)
}

func (f *Framework) writeReport() {
	if f.report == nil || f.settingsErr != nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.report.Cases) == 0 && !f.Options.Report.Always {
		return // only a benchmark ran (or nothing): keep any earlier report
	}
	paths, err := artifacts.Write(f.Settings.ArtifactsDir, f.Name, f.report)
	gomega.Expect(err).NotTo(gomega.HaveOccurred())
	f.reportWritten = true
	ginkgo.GinkgoWriter.Printf("%s: %s\n", f.Options.Report.Entry, strings.Join(paths, ", "))
	ginkgo.AddReportEntry(f.Options.Report.Entry, strings.Join(paths, ", "))
}

// AddNotRun adds to the suite's report the specs that did not run, and why (a
// known divergence, a label filter, a --skip...), and writes it again: pass it
// to the suite's ReportAfterSuite, which runs after AfterSuite wrote it.
func (f *Framework) AddNotRun(r ginkgo.Report) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.reportWritten {
		return // AfterSuite wrote no report to add to
	}
	n, err := notrun.Add(f.report, r, filepath.Join(f.RepoRoot, "suites", "known-divergences"))
	gomega.Expect(err).NotTo(gomega.HaveOccurred())
	if n > 0 {
		_, err = artifacts.Write(f.Settings.ArtifactsDir, f.Name, f.report)
		gomega.Expect(err).NotTo(gomega.HaveOccurred())
	}
}
