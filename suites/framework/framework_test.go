package framework

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/onsi/ginkgo/v2"
	"github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/flatnet/flatnet/internal/apiservertest"
	"github.com/flatnet/flatnet/suites/internal/workload"
	"github.com/flatnet/flatnet/suites/report"
)

// TestFrameworkOnAnAPIServer runs a Ginkgo suite on the framework against a
// real kube-apiserver (envtest): the shared BeforeSuite connects from
// KUBECONFIG before the suite's own setup, a namespace is created with its
// labels and waited for, the suite's teardown runs before the shared one,
// the report is written with the specs not run, and the namespace is
// deleted and waited for. envtest has no kube-controller-manager: a small
// stand-in makes each namespace's default ServiceAccount and finalizes
// namespaces being deleted, as its controllers do.
func TestFrameworkOnAnAPIServer(t *testing.T) {
	dir := apiservertest.Require(t)
	te := &envtest.Environment{BinaryAssetsDirectory: dir}
	cfg, err := te.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer te.Stop()
	user, err := te.AddUser(envtest.User{Name: "suites", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	kubeconfig, err := user.KubeConfig()
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	path := filepath.Join(tmp, "kubeconfig")
	if err := os.WriteFile(path, kubeconfig, 0o600); err != nil {
		t.Fatal(err)
	}
	artifacts := filepath.Join(tmp, "artifacts")
	t.Setenv("KUBECONFIG", path)
	t.Setenv("PROBE_IMAGE", "flatnet/probe:test")
	t.Setenv("ARTIFACTS", artifacts)
	t.Setenv("FLATNET_KEEP", "")
	t.Setenv("FLATNET_NODE_SELECTOR", "pool=e2e")
	t.Setenv("FLATNET_TOLERATIONS", "dedicated=e2e:NoSchedule")
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go controllerStandIn(ctx, t, cs)

	const ns = "fw-selftest"
	var mu sync.Mutex
	var order []string
	note := func(s string) {
		mu.Lock()
		defer mu.Unlock()
		order = append(order, s)
	}
	f := New("selftest", Options{Settings: true, Policies: true, Report: &ReportOptions{Title: "self-test", Entry: "self-test report"}})
	f.BeforeSuite(func(ctx ginkgo.SpecContext) {
		gomega.Expect(f.Clientset).NotTo(gomega.BeNil(), "the shared setup runs first")
		note("setup")
		gomega.Expect(f.CreateNamespace(ctx, corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: map[string]string{"ns": "x"}}})).To(gomega.Succeed())
	})
	f.AfterSuite(func(ginkgo.SpecContext) {
		gomega.Expect(f.namespaces).To(gomega.ConsistOf(ns), "the suite's teardown runs before the namespaces go")
		note("teardown")
	})
	ginkgo.Describe("a suite", func() {
		ginkgo.It("has its namespace, labelled, with its ServiceAccount", func(ctx ginkgo.SpecContext) {
			got, err := f.Clientset.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
			gomega.Expect(err).NotTo(gomega.HaveOccurred())
			gomega.Expect(got.Labels).To(gomega.HaveKeyWithValue("ns", "x"))
			gomega.Expect(got.Labels).To(gomega.HaveKeyWithValue(workload.ManagedByLabel, workload.ManagedByValue))
			_, err = f.Clientset.CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{})
			gomega.Expect(err).NotTo(gomega.HaveOccurred())
			gomega.Expect(f.CiliumCRDs).To(gomega.HaveOccurred(), "envtest has no cilium.io CRDs")
			f.Record(report.CaseResult{Name: "ran", Family: "selftest"})
		})
		ginkgo.It("creates pods that the restricted Pod Security level admits, placed as the run says", func(ctx ginkgo.SpecContext) {
			got, err := f.Clientset.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
			gomega.Expect(err).NotTo(gomega.HaveOccurred())
			gomega.Expect(got.Labels).To(gomega.HaveKeyWithValue(PodSecurityEnforceLabel, PodSecurityRestricted))
			server := func(name string) *corev1.Pod {
				return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: corev1.PodSpec{
					Containers: []corev1.Container{{Name: "c", Image: "flatnet/probe:test", Command: []string{"/probe", "serve-hostname", "--port", "80"}}},
				}}
			}
			// The API server's PodSecurity admission judges: a pod as a fixture writes it is refused...
			_, err = cs.CoreV1().Pods(ns).Create(ctx, server("as-written"), metav1.CreateOptions{})
			gomega.Expect(err).To(gomega.MatchError(gomega.ContainSubstring(`violates PodSecurity "restricted`)))
			// ...and admitted once the framework's clientset creates it.
			p, err := f.Clientset.CoreV1().Pods(ns).Create(ctx, server("defaulted"), metav1.CreateOptions{})
			gomega.Expect(err).NotTo(gomega.HaveOccurred())
			gomega.Expect(p.Spec.NodeSelector).To(gomega.Equal(map[string]string{"pool": "e2e"}))
			gomega.Expect(p.Spec.Tolerations).To(gomega.ContainElement(corev1.Toleration{Key: "dedicated", Operator: corev1.TolerationOpEqual, Value: "e2e", Effect: corev1.TaintEffectNoSchedule}))
			// A pod pinned to a node keeps its node and gets no selector; one that sets its own security keeps it.
			own := server("own-security")
			own.Spec.NodeName = "node-a"
			own.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{Capabilities: &corev1.Capabilities{Add: []corev1.Capability{"NET_ADMIN"}}}
			_, err = f.Clientset.CoreV1().Pods(ns).Create(ctx, own, metav1.CreateOptions{})
			gomega.Expect(err).To(gomega.MatchError(gomega.ContainSubstring(`violates PodSecurity "restricted`)), "NET_ADMIN is the suite's to ask for, in a namespace that admits it")
		})
		ginkgo.It("keeps the disruptive lane's node out of the nodes by role, and names it", func(ctx ginkgo.SpecContext) {
			node := func(name string, labels map[string]string) *corev1.Node {
				return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
			}
			lone, err := f.DisruptiveNode(ctx)
			gomega.Expect(err).NotTo(gomega.HaveOccurred())
			gomega.Expect(lone).To(gomega.BeEmpty(), "a cluster without a lane node")
			for _, n := range []*corev1.Node{
				node("n-cp", map[string]string{"node-role.kubernetes.io/control-plane": ""}),
				node("n-w2", nil), node("n-w1", nil),
				node("n-lane", map[string]string{LaneLabel: DisruptiveLane}),
			} {
				_, err := cs.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{})
				gomega.Expect(err).NotTo(gomega.HaveOccurred())
				ginkgo.DeferCleanup(cs.CoreV1().Nodes().Delete, n.Name, metav1.DeleteOptions{})
			}
			workers, cp, err := f.NodesByRole(ctx)
			gomega.Expect(err).NotTo(gomega.HaveOccurred())
			gomega.Expect(workers).To(gomega.Equal([]string{"n-w1", "n-w2"}))
			gomega.Expect(cp).To(gomega.Equal([]string{"n-cp"}))
			lane, err := f.DisruptiveNode(ctx)
			gomega.Expect(err).NotTo(gomega.HaveOccurred())
			gomega.Expect(lane).To(gomega.Equal("n-lane"))
			_, err = cs.CoreV1().Nodes().Create(ctx, node("n-lane2", map[string]string{LaneLabel: DisruptiveLane}), metav1.CreateOptions{})
			gomega.Expect(err).NotTo(gomega.HaveOccurred())
			ginkgo.DeferCleanup(cs.CoreV1().Nodes().Delete, "n-lane2", metav1.DeleteOptions{})
			_, err = f.DisruptiveNode(ctx)
			gomega.Expect(err).To(gomega.MatchError(gomega.ContainSubstring("want one")))
		})
		ginkgo.It("skips itself", func() { ginkgo.Skip("no SCTP in this kernel") })
	})
	ginkgo.ReportAfterSuite("selftest: the specs not run", f.AddNotRun)
	gomega.RegisterFailHandler(ginkgo.Fail)
	if !ginkgo.RunSpecs(t, "framework self-test") {
		return
	}

	if want := []string{"setup", "teardown"}; !slices.Equal(order, want) {
		t.Errorf("hooks ran %v, want %v", order, want)
	}
	if _, err := cs.CoreV1().Namespaces().Get(context.Background(), ns, metav1.GetOptions{}); err == nil {
		t.Errorf("namespace %s is still there after the suite", ns)
	}
	junit, err := os.ReadFile(filepath.Join(artifacts, "selftest.junit.xml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`name="ran"`, `name="skips itself"`, `message="no SCTP in this kernel"`} {
		if !strings.Contains(string(junit), want) {
			t.Errorf("the report lacks %s:\n%s", want, junit)
		}
	}
	if _, err := os.Stat(filepath.Join(artifacts, "selftest.html")); err != nil {
		t.Error(err)
	}
}

// controllerStandIn does what kube-controller-manager would for the test:
// a default ServiceAccount in each new namespace, and a namespace being
// deleted finalized (it holds nothing to delete first).
func controllerStandIn(ctx context.Context, t *testing.T, cs kubernetes.Interface) {
	w, err := cs.CoreV1().Namespaces().Watch(ctx, metav1.ListOptions{})
	if err != nil {
		t.Errorf("watching namespaces: %v", err)
		return
	}
	defer w.Stop()
	for ev := range w.ResultChan() {
		ns, ok := ev.Object.(*corev1.Namespace)
		if !ok || ev.Type == watch.Deleted {
			continue
		}
		if ns.DeletionTimestamp != nil {
			ns.Spec.Finalizers = nil
			_, _ = cs.CoreV1().Namespaces().Finalize(ctx, ns, metav1.UpdateOptions{})
			continue
		}
		if ev.Type == watch.Added {
			// A short delay, as the real controller has one: the framework waits.
			time.Sleep(100 * time.Millisecond)
			_, _ = cs.CoreV1().ServiceAccounts(ns.Name).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{})
		}
	}
}
