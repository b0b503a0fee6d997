package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// agents reaches the flatnet agents through the API server's pods/proxy
// subresource: the CLI never needs a route to the node or pod network.
type agents struct {
	kube      kubernetes.Interface
	namespace string
	selector  string
	port      string
}

func (a agents) list(ctx context.Context) ([]corev1.Pod, error) {
	pl, err := a.kube.CoreV1().Pods(a.namespace).List(ctx, metav1.ListOptions{LabelSelector: a.selector})
	if err != nil {
		return nil, fmt.Errorf("listing agent pods (namespace %s, -l %s): %w", a.namespace, a.selector, err)
	}
	if len(pl.Items) == 0 {
		return nil, fmt.Errorf("no flatnet agent pods in namespace %s with labels %s: is flatnet deployed? (--agent-namespace, --agent-selector)", a.namespace, a.selector)
	}
	sort.Slice(pl.Items, func(i, j int) bool { return pl.Items[i].Spec.NodeName < pl.Items[j].Spec.NodeName })
	return pl.Items, nil
}

// onNode returns the agent pod of a node.
func (a agents) onNode(ctx context.Context, node string) (corev1.Pod, error) {
	pods, err := a.list(ctx)
	if err != nil {
		return corev1.Pod{}, err
	}
	for _, p := range pods {
		if p.Spec.NodeName == node {
			return p, nil
		}
	}
	return corev1.Pod{}, fmt.Errorf("no flatnet agent pod on node %s", node)
}

// get streams GET path from one agent; the caller closes the body.
func (a agents) get(ctx context.Context, pod corev1.Pod, path string, q url.Values) (io.ReadCloser, error) {
	if pod.Status.Phase != corev1.PodRunning {
		return nil, fmt.Errorf("agent %s on node %s is %s, not Running", pod.Name, pod.Spec.NodeName, pod.Status.Phase)
	}
	req := a.kube.CoreV1().RESTClient().Get().Namespace(pod.Namespace).Resource("pods").
		Name(pod.Name + ":" + a.port).SubResource("proxy").Suffix(path)
	for k, vs := range q {
		for _, v := range vs {
			req = req.Param(k, v)
		}
	}
	rc, err := req.Stream(ctx)
	if err != nil {
		return nil, fmt.Errorf("agent %s on node %s: %w%s", pod.Name, pod.Spec.NodeName, err, detail(err))
	}
	return rc, nil
}

// detail is the body of an error answer (the agent's or the proxy's own words),
// which client-go keeps only in the status causes.
func detail(err error) string {
	var st apierrors.APIStatus
	if !errors.As(err, &st) || st.Status().Details == nil {
		return ""
	}
	var msgs []string
	for _, c := range st.Status().Details.Causes {
		if m := strings.TrimSpace(c.Message); m != "" {
			msgs = append(msgs, m)
		}
	}
	if len(msgs) == 0 {
		return ""
	}
	return ": " + strings.Join(msgs, "; ")
}
