//go:build e2e

package netpol

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/flatnet/flatnet/fixtures/oracle"
	"github.com/flatnet/flatnet/fixtures/policies"
	"github.com/flatnet/flatnet/fixtures/topology"
	"github.com/flatnet/flatnet/suites/internal/matrix"
	"github.com/flatnet/flatnet/suites/internal/workload"
	"github.com/flatnet/flatnet/suites/reachability"
)

// applyChanges makes a step's identity changes on the cluster, one after the
// other, and moves state along with each one made, so the case's cleanup
// reverts exactly what was done. A created namespace counts as made once it
// exists (its cleanup deletes it), and is ready when its pods are and its
// Services send to them.
func applyChanges(ctx context.Context, state *topology.State, changes []topology.Change) error {
	for _, ch := range changes {
		next, err := state.Apply(ch)
		if err != nil {
			return err
		}
		ns := model.Namespace(ch.Namespace)
		switch ch.Kind {
		case topology.RelabelPod:
			err = patchLabels(ch, func(data []byte) error {
				_, err := cluster.Clientset.CoreV1().Pods(ns).Patch(ctx, ch.Pod, types.MergePatchType, data, metav1.PatchOptions{})
				return err
			})
		case topology.RelabelNamespace:
			err = patchLabels(ch, func(data []byte) error {
				_, err := cluster.Clientset.CoreV1().Namespaces().Patch(ctx, ns, types.MergePatchType, data, metav1.PatchOptions{})
				return err
			})
		case topology.CreateNamespace:
			if err := cluster.CreateNamespace(ctx, next.NamespaceObject(ch.Namespace)); err != nil {
				return fmt.Errorf("%s: %w", ch, err)
			}
			*state = next
			if err := startPods(ctx, next, ch); err != nil {
				return fmt.Errorf("%s: %w", ch, err)
			}
			continue
		case topology.DeleteNamespace:
			err = cluster.DeleteNamespaces(ctx, ns)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", ch, err)
		}
		*state = next
	}
	return nil
}

// patchLabels sends a JSON merge patch setting and removing the change's
// labels (a null value removes a key).
func patchLabels(ch topology.Change, patch func([]byte) error) error {
	labels := map[string]any{}
	for k, v := range ch.Set {
		labels[k] = v
	}
	for _, k := range ch.Remove {
		labels[k] = nil
	}
	data, err := json.Marshal(map[string]any{"metadata": map[string]any{"labels": labels}})
	if err != nil {
		return err
	}
	return patch(data)
}

// startPods creates a new namespace's pods and their Services and waits until
// they serve.
func startPods(ctx context.Context, state topology.State, ch topology.Change) error {
	var refs []topology.PodRef
	var pods []corev1.Pod
	var svcs []corev1.Service
	for _, p := range ch.Pods {
		r := topology.PodRef{Namespace: ch.Namespace, Pod: p}
		refs = append(refs, r)
		pods = append(pods, workload.Prepare(state.PodObject(r, cluster.Settings.ProbeImage)))
		svcs = append(svcs, model.ServiceObject(r))
	}
	if err := workload.CreatePods(ctx, cluster.Clientset, pods); err != nil {
		return err
	}
	if err := workload.CreateServices(ctx, cluster.Clientset, svcs); err != nil {
		return err
	}
	if err := workload.WaitPodsReady(ctx, cluster.Clientset, podKeys(refs), 2*time.Minute); err != nil {
		return err
	}
	return workload.WaitServiceEndpoints(ctx, cluster.Clientset, serviceKeys(refs), time.Minute)
}

// startWatch probes, in the background, the pods present before and after
// the step (the first and last moments), guarding the paths the oracle opens
// in every moment of it.
func startWatch(ctx context.Context, title string, moments []policies.Moment, setupFail func(string, ...any)) *matrix.Watcher {
	before, after := moments[0].State, moments[len(moments)-1].State
	var pods []topology.PodRef
	for _, r := range before.Pods() {
		if after.HasPod(r) {
			pods = append(pods, r)
		}
	}
	plan := statePlan(title+" (background)", pods)
	snap, err := workload.Take(ctx, cluster.Clientset, namespacesOf(before))
	if err != nil {
		setupFail("%s: %v", title, err)
	}
	var tables [][]*reachability.Table
	for _, m := range moments {
		// Pods of a namespace not created yet are missing: none is probed.
		c, _ := m.State.Predict(snap.Cluster)
		o, err := oracle.New(c, m.Policies)
		if err != nil {
			setupFail("%s: the oracle refuses a moment of the step: %v", title, err)
		}
		t, err := matrix.Expect(o, plan)
		if err != nil {
			setupFail("%s: expected tables of a moment of the step: %v", title, err)
		}
		tables = append(tables, t)
	}
	guard := matrix.OpenThroughout(tables...)
	guarded := 0
	for vi, t := range tables[0] {
		for _, k := range t.Keys() {
			if guard(vi, k) {
				guarded++
			}
		}
	}
	GinkgoWriter.Printf("  background probes of %d pods through %d moment(s) of the step: %d path(s) open in every one are guarded\n", len(pods), len(moments), guarded)
	return matrix.Watch(ctx, watchRunner, plan, snap, guard)
}

// statePlan probes every pod of pods from every one, by pod IP and through
// each pod's Service, on every port of the model.
func statePlan(title string, pods []topology.PodRef) matrix.Plan {
	var direct, viaService []reachability.Endpoint
	// The model's endpoints, one namespace (and the pods it has) at a time.
	for i := 0; i < len(pods); {
		m := model
		m.Namespaces, m.Pods = []string{pods[i].Namespace}, nil
		for ; i < len(pods) && pods[i].Namespace == m.Namespaces[0]; i++ {
			m.Pods = append(m.Pods, pods[i].Pod)
		}
		direct = append(direct, reachability.ModelEndpoints(m, false)...)
		viaService = append(viaService, reachability.ModelEndpoints(m, true)...)
	}
	return matrix.Plan{
		Title: title,
		From:  direct,
		Views: []matrix.View{{Name: "pod IP", To: direct}, {Name: "Service", To: viaService}},
		Ports: reachability.ModelPorts(model),
	}
}

func changeNames(changes []topology.Change) []string {
	var out []string
	for _, c := range changes {
		out = append(out, c.String())
	}
	return out
}

// changesComment heads a step's manifest in the report with its identity
// changes, as YAML comments.
func changesComment(changes []topology.Change) string {
	var b strings.Builder
	for _, c := range changes {
		fmt.Fprintf(&b, "# %s\n", c)
	}
	return b.String()
}
