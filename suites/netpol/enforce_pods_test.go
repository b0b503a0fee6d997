//go:build e2e

package netpol

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"github.com/flatnet/flatnet/suites/internal/workload"
)

// FLATNET_BENCH_PODS=N has the enforcement benchmark run with N more pods
// present (issue 20: 500 pods): pause pods spread over the schedulable nodes
// in a namespace of their own, created before the first round and deleted
// after the last. Every agent holds their addresses and identities; no policy
// of the benchmark selects them.

// benchPodsRoom is how many more pods the schedulable nodes admit: each node's
// allocatable pods (the kubelet's maxPods) minus the pods it runs. It fails
// naming the knob and what limits it when n do not fit, before anything is
// created.
func benchPodsRoom(ctx context.Context, cs kubernetes.Interface, n int) error {
	rooms, err := workload.PodRoom(ctx, cs)
	if err != nil {
		return fmt.Errorf("FLATNET_BENCH_PODS: %w", err)
	}
	room := 0
	var per []string
	for _, r := range rooms {
		if !workload.Schedulable(r.Node) {
			continue
		}
		room += r.Free()
		per = append(per, fmt.Sprintf("%s %d/%d", r.Node.Name, r.Running, r.MaxPods))
	}
	if n > room {
		return fmt.Errorf("FLATNET_BENCH_PODS=%d: the schedulable nodes admit %d more pods (pods/maxPods: %s). "+
			"kind-configs/default.yaml and large.yaml set the kubelet's maxPods to 30, Azure's default, and each agent's address block follows it; "+
			"run on a cluster whose nodes admit more (make cluster deploy CONFIG=scale: 3 workers of maxPods 250) or lower FLATNET_BENCH_PODS",
			n, room, strings.Join(per, ", "))
	}
	return nil
}

// createBenchPods creates n pause pods in ns, spread evenly over the nodes, and
// waits until every one runs with an address, printing progress.
func createBenchPods(ctx context.Context, cs kubernetes.Interface, ns, image string, n int) error {
	labels := map[string]string{"bench": "present"}
	for i := range n {
		p := corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("present-%04d", i), Labels: labels},
			Spec: corev1.PodSpec{
				TerminationGracePeriodSeconds: new(int64),
				Containers: []corev1.Container{{Name: "pause", Image: image, ImagePullPolicy: corev1.PullIfNotPresent,
					Command: []string{"/probe", "pause"}}},
				TopologySpreadConstraints: []corev1.TopologySpreadConstraint{{MaxSkew: 1, TopologyKey: corev1.LabelHostname,
					WhenUnsatisfiable: corev1.ScheduleAnyway, LabelSelector: &metav1.LabelSelector{MatchLabels: labels}}},
			},
		}
		if _, err := cs.CoreV1().Pods(ns).Create(ctx, &p, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("creating pod %s/%s: %w", ns, p.Name, err)
		}
	}
	last := time.Now()
	timeout := time.Minute + time.Duration(n)*time.Second
	return wait.PollUntilContextTimeout(ctx, 2*time.Second, timeout, true, func(ctx context.Context) (bool, error) {
		pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, fmt.Errorf("listing pods of %s: %w", ns, err)
		}
		up := 0
		for _, p := range pods.Items {
			if p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "" {
				up++
			}
		}
		if time.Since(last) > 10*time.Second || up == n {
			fmt.Fprintf(os.Stderr, "enforcement benchmark: %d/%d pods present running\n", up, n)
			last = time.Now()
		}
		return up == n, nil
	})
}
