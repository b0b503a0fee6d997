//go:build e2e

// Package cluster checks the offline kind cluster itself before anything of
// flatnet's runs on it: the API answers, every node kind made registered with the
// pinned kubelet version, and the control plane runs from the preloaded images.
package cluster

import (
	"os"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flatnet/flatnet/suites/framework"
)

func TestCluster(t *testing.T) { cluster.Run(t) }

var cluster = framework.New("cluster", framework.Options{})

var _ = Describe("the kind cluster [flatnet]", func() {
	It("answers on /readyz", func(ctx SpecContext) {
		body, err := cluster.Clientset.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		Expect(err).NotTo(HaveOccurred())
		Expect(string(body)).To(Equal("ok"))
	})

	It("registers every node container with the pinned kubelet version", func(ctx SpecContext) {
		want := expectedNodes()
		version := os.Getenv("KUBERNETES_VERSION")
		Expect(version).NotTo(BeEmpty(), "KUBERNETES_VERSION (from versions.env) must be set")
		nodes, err := cluster.Clientset.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		Expect(err).NotTo(HaveOccurred())
		got := map[string]string{}
		for _, n := range nodes.Items {
			got[n.Name] = n.Status.NodeInfo.KubeletVersion
		}
		for _, name := range want {
			Expect(got).To(HaveKeyWithValue(name, version), "node %s", name)
		}
		Expect(got).To(HaveLen(len(want)))
	})

	It("runs etcd, apiserver, controller-manager and scheduler from the node image's preloaded images", func(ctx SpecContext) {
		Eventually(func(g Gomega) {
			pods, err := cluster.Clientset.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{LabelSelector: "tier=control-plane"})
			g.Expect(err).NotTo(HaveOccurred())
			running := map[string]bool{}
			for _, p := range pods.Items {
				if p.Status.Phase == corev1.PodRunning {
					running[p.Labels["component"]] = true
				}
				for _, c := range p.Spec.Containers {
					g.Expect(c.ImagePullPolicy).NotTo(Equal(corev1.PullAlways), "%s would need a registry", p.Name)
				}
			}
			for _, c := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"} {
				g.Expect(running).To(HaveKey(c), "%s is not Running", c)
			}
		}).WithContext(ctx).WithTimeout(2 * time.Minute).WithPolling(2 * time.Second).Should(Succeed())
	})

	It("runs kube-proxy on every node", func(ctx SpecContext) {
		want := len(expectedNodes())
		Eventually(func(g Gomega) {
			ds, err := cluster.Clientset.AppsV1().DaemonSets("kube-system").Get(ctx, "kube-proxy", metav1.GetOptions{})
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(int(ds.Status.NumberReady)).To(Equal(want))
		}).WithContext(ctx).WithTimeout(2 * time.Minute).WithPolling(2 * time.Second).Should(Succeed())
	})
})

// expectedNodes is the node list kind reports for the cluster (FLATNET_NODES, set by
// scripts/e2e.sh from `kind get nodes`), so a node that never registered fails here.
func expectedNodes() []string {
	raw := strings.Fields(os.Getenv("FLATNET_NODES"))
	Expect(raw).NotTo(BeEmpty(), "FLATNET_NODES (the cluster's node names) must be set; make e2e sets it")
	return raw
}
