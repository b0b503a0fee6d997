package kindcluster

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// client returns a clientset for the kubeconfig at path; each request gives up
// after 20 s, so a cluster that does not answer is told apart from a slow one.
func client(path string) (kubernetes.Interface, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return nil, fmt.Errorf("loading kubeconfig %s: %w", path, err)
	}
	cfg.Timeout = 20 * time.Second
	return kubernetes.NewForConfig(cfg)
}

// answers reports whether the API server of the kubeconfig at path is ready.
func answers(ctx context.Context, path string) bool {
	if _, err := os.Stat(path); err != nil {
		return false
	}
	cs, err := client(path)
	if err != nil {
		return false
	}
	_, err = cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
	return err == nil
}

// controlPlaneRunning reports whether the control plane's four static pods (API
// server, controller manager, scheduler, etcd) are Running.
func controlPlaneRunning(ctx context.Context, cs kubernetes.Interface) bool {
	pods, err := cs.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{LabelSelector: "tier=control-plane"})
	if err != nil {
		return false
	}
	running := 0
	for _, p := range pods.Items {
		if p.Status.Phase == corev1.PodRunning {
			running++
		}
	}
	return running == 4
}

// registeredNodes counts the Node objects.
func registeredNodes(ctx context.Context, cs kubernetes.Interface) int {
	nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return 0
	}
	return len(nodes.Items)
}

// offlineDNS makes CoreDNS answer cluster.local only. The cluster has no upstream
// resolver (the node's is Docker's 127.0.0.11, which inside a pod is the pod's own
// loopback: CoreDNS would forward to itself and its loop plugin stops it); refusing
// the rest at once makes an outside name fail fast instead of timing out.
// changed is false when CoreDNS already has no upstream.
func offlineDNS(ctx context.Context, cs kubernetes.Interface) (changed bool, err error) {
	cms := cs.CoreV1().ConfigMaps("kube-system")
	cm, err := cms.Get(ctx, "coredns", metav1.GetOptions{})
	if err != nil {
		return false, fmt.Errorf("reading CoreDNS's Corefile: %w", err)
	}
	corefile, ok := withoutUpstream(cm.Data["Corefile"])
	if !ok {
		return false, nil
	}
	cm.Data["Corefile"] = corefile
	if _, err := cms.Update(ctx, cm, metav1.UpdateOptions{FieldManager: "flatnet-cluster"}); err != nil {
		return false, fmt.Errorf("writing CoreDNS's Corefile: %w", err)
	}
	// What `kubectl rollout restart` does: a new template annotation rolls the pods.
	patch := fmt.Sprintf(`{"spec":{"template":{"metadata":{"annotations":{"kubectl.kubernetes.io/restartedAt":%q}}}}}`,
		time.Now().Format(time.RFC3339))
	if _, err := cs.AppsV1().Deployments("kube-system").Patch(ctx, "coredns", types.StrategicMergePatchType,
		[]byte(patch), metav1.PatchOptions{FieldManager: "flatnet-cluster"}); err != nil {
		return true, fmt.Errorf("restarting CoreDNS: %w", err)
	}
	return true, nil
}

// withoutUpstream returns corefile without its `forward . /etc/resolv.conf` block
// (the forward line through the next line holding a `}`) and its `loop` line; ok is
// false when it has no such forward.
func withoutUpstream(corefile string) (string, bool) {
	if !strings.Contains(corefile, "forward . /etc/resolv.conf") {
		return corefile, false
	}
	var kept []string
	inForward := false
	for _, line := range strings.Split(strings.TrimRight(corefile, "\n"), "\n") {
		switch {
		case inForward:
			inForward = !strings.Contains(line, "}")
		case strings.Contains(line, "forward . /etc/resolv.conf"):
			inForward = true
		case strings.TrimLeft(line, " ") == "loop":
			// the loop plugin guards forwarding, and nothing forwards now
		default:
			kept = append(kept, line)
		}
	}
	return strings.Join(kept, "\n"), true
}
