package workload

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

func readyPod(ns, name, ip string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip,
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
	}
}

// verbs counts the requests the fake API server got, by verb and resource.
func verbs(cs *fake.Clientset) map[string]int {
	n := map[string]int{}
	for _, a := range cs.Actions() {
		n[a.GetVerb()+" "+a.GetResource().Resource]++
	}
	return n
}

func TestWaitPodsReadyListsEachNamespaceOncePerPoll(t *testing.T) {
	ctx := context.Background()
	pending := readyPod("ns1", "b", "", nil)
	pending.Status = corev1.PodStatus{Phase: corev1.PodPending, ContainerStatuses: []corev1.ContainerStatus{{
		Name: "c", State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ImagePullBackOff"}}}}}
	cs := fake.NewClientset(readyPod("ns1", "a", "10.0.0.1", nil), pending, readyPod("ns2", "c", "10.0.0.3", nil))
	keys := []Key{{Namespace: "ns1", Name: "a"}, {Namespace: "ns1", Name: "b"}, {Namespace: "ns2", Name: "c"}, {Namespace: "ns2", Name: "gone"}}

	err := WaitPodsReady(ctx, cs, keys, 600*time.Millisecond)
	if err == nil {
		t.Fatal("WaitPodsReady: nil with ns1/b pending and ns2/gone missing")
	}
	for _, want := range []string{"ns1/b: container c waiting: ImagePullBackOff", "ns2/gone: not found"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	for _, ready := range []string{"ns1/a:", "ns2/c:"} {
		if strings.Contains(err.Error(), ready) {
			t.Errorf("error %q names the Ready pod %s", err, ready)
		}
	}
	n := verbs(cs)
	if n["get pods"] != 0 || n["list pods"] < 2 || n["list pods"]%2 != 0 {
		t.Errorf("requests %v: want no Get and one List per namespace per poll", n)
	}

	pending.Status = readyPod("ns1", "b", "10.0.0.2", nil).Status
	if _, err := cs.CoreV1().Pods("ns1").UpdateStatus(ctx, pending, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := WaitPodsReady(ctx, cs, keys[:3], time.Second); err != nil {
		t.Errorf("WaitPodsReady with every pod Ready: %v", err)
	}
}

func TestWaitServiceEndpoints(t *testing.T) {
	ctx := context.Background()
	sel := map[string]string{"pod": "a"}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "s-a"}, Spec: corev1.ServiceSpec{Selector: sel}}
	other := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "s-b"}, Spec: corev1.ServiceSpec{Selector: map[string]string{"pod": "b"}}}
	slice := func(svc string, ips ...string) *discoveryv1.EndpointSlice {
		return &discoveryv1.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: svc + "-x", Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
			Endpoints:  []discoveryv1.Endpoint{{Addresses: ips}},
		}
	}
	stale := slice("s-a", "10.0.0.9") // the address of a pod just replaced
	cs := fake.NewClientset(svc, other, readyPod("ns", "a", "10.0.0.1", sel), readyPod("ns", "b", "10.0.0.2", map[string]string{"pod": "b"}),
		stale, slice("s-b", "10.0.0.2"))
	keys := []Key{{Namespace: "ns", Name: "s-a"}, {Namespace: "ns", Name: "s-b"}}

	err := WaitServiceEndpoints(ctx, cs, keys, 600*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "ns/s-a: endpoints [10.0.0.9], Ready pods [10.0.0.1]") || strings.Contains(err.Error(), "ns/s-b") {
		t.Errorf("WaitServiceEndpoints with a stale slice for s-a: %v", err)
	}
	if n := verbs(cs); n["get services"] != 0 || n["list services"] != n["list endpointslices"] || n["list pods"] != n["list services"] {
		t.Errorf("requests %v: want one List of each kind per namespace per poll", n)
	}

	stale.Endpoints[0].Addresses = []string{"10.0.0.1"}
	if _, err := cs.DiscoveryV1().EndpointSlices("ns").Update(ctx, stale, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := WaitServiceEndpoints(ctx, cs, keys, time.Second); err != nil {
		t.Errorf("WaitServiceEndpoints with every slice current: %v", err)
	}
	if err := WaitServiceEndpoints(ctx, cs, []Key{{Namespace: "ns", Name: "nope"}}, 300*time.Millisecond); err == nil || !strings.Contains(err.Error(), "ns/nope: Service not found") {
		t.Errorf("WaitServiceEndpoints of a missing Service: %v", err)
	}
}

func TestCreatePods(t *testing.T) {
	ctx := context.Background()
	cs := fake.NewClientset(readyPod("ns", "p-7", "", nil)) // already there: its creation fails
	var pods []corev1.Pod
	for i := range 20 {
		pods = append(pods, corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: fmt.Sprintf("p-%d", i)}})
	}
	err := CreatePods(ctx, cs, pods)
	if err == nil || !strings.Contains(err.Error(), "creating pod ns/p-7") {
		t.Errorf("CreatePods with ns/p-7 present: %v, want an error naming it", err)
	}
	pl, err := cs.CoreV1().Pods("ns").List(ctx, metav1.ListOptions{})
	if err != nil || len(pl.Items) != 20 {
		t.Errorf("pods after CreatePods: %d (%v), want the 19 new ones beside the one present", len(pl.Items), err)
	}
}

func TestPodRoom(t *testing.T) {
	node := func(name string, maxPods int64) *corev1.Node {
		return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name},
			Status: corev1.NodeStatus{Allocatable: corev1.ResourceList{corev1.ResourcePods: *resource.NewQuantity(maxPods, resource.DecimalSI)}}}
	}
	onNode := func(name, n string, phase corev1.PodPhase) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name}, Spec: corev1.PodSpec{NodeName: n}, Status: corev1.PodStatus{Phase: phase}}
	}
	cs := fake.NewClientset(node("a", 30), node("b", 2),
		onNode("p1", "a", corev1.PodRunning), onNode("p2", "a", corev1.PodPending), onNode("done", "a", corev1.PodSucceeded),
		onNode("p3", "b", corev1.PodRunning), onNode("p4", "b", corev1.PodRunning), onNode("p5", "b", corev1.PodRunning))
	rooms, err := PodRoom(context.Background(), cs)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][3]int{}
	for _, r := range rooms {
		got[r.Node.Name] = [3]int{r.MaxPods, r.Running, r.Free()}
	}
	// A finished pod holds no place; a node over its room (b) has none left, not less.
	if want := map[string][3]int{"a": {30, 2, 28}, "b": {2, 3, 0}}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("PodRoom = %v, want %v (maxPods, running, free)", got, want)
	}
}
