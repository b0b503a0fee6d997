package agent

import (
	"context"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"
)

// The agent's reconciler sees this node's pods only, whether the shared pod
// informer holds the whole cluster's (policy on) or this node's (policy off, when
// the agent asks the API server for this node's pods only).
func TestAgentSeesItsNodesPods(t *testing.T) {
	pod := func(name, node string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name}, Spec: corev1.PodSpec{NodeName: node}}
	}
	for _, nodeOnly := range []bool{false, true} {
		kube := fake.NewClientset(pod("here", "node-a"), pod("there", "node-b"))
		factory := informers.NewSharedInformerFactory(kube, 0)
		if nodeOnly {
			watchNodePodsOnly(factory, "node-a")
		}
		a := &Agent{cfg: Config{NodeName: "node-a"}, kick: make(chan struct{}, 1)}
		if err := a.watch(factory); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		factory.Start(ctx.Done())
		if !cache.WaitForCacheSync(ctx.Done(), a.synced...) {
			t.Fatal("informers did not sync")
		}
		pods, err := a.localPods()
		if err != nil || len(pods) != 1 || pods[0].Name != "here" {
			t.Errorf("nodeOnly=%v: local pods %v %v, want only default/here", nodeOnly, pods, err)
		}
		var selectors []string
		for _, act := range kube.Actions() {
			if l, ok := act.(k8stesting.ListAction); ok && act.GetResource().Resource == "pods" {
				selectors = append(selectors, l.GetListRestrictions().Fields.String())
			}
		}
		want := ""
		if nodeOnly {
			want = "spec.nodeName=node-a"
		}
		if len(selectors) == 0 || slices.ContainsFunc(selectors, func(s string) bool { return s != want }) {
			t.Errorf("nodeOnly=%v: pods listed with field selectors %q, want %q", nodeOnly, selectors, want)
		}
		cancel()
		factory.Shutdown()
	}
}
