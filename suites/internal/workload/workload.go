// Package workload puts the policy suites' pods and Services on the cluster
// under test and reads them back: create, wait until every pod is Ready and
// every Service sends to its pod, recreate a pod, and snapshot the live objects
// as the oracle's cluster model plus the addresses probes aim at.
package workload

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"github.com/flatnet/flatnet/fixtures/oracle"
)

// ManagedByLabel marks every object a suite creates, so leftovers of an
// interrupted run can be found (kubectl get all -A -l app.kubernetes.io/managed-by=flatnet-e2e).
const ManagedByLabel = "app.kubernetes.io/managed-by"

// ManagedByValue is ManagedByLabel's value.
const ManagedByValue = "flatnet-e2e"

// poll is how often readiness is re-read: often enough that waiting adds
// little to a step, rarely enough to leave the API server alone.
const poll = 250 * time.Millisecond

// Prepare adapts a fixture pod for the cluster under test: the image may be
// preloaded (kind) or pushed to the cluster's registry (any cluster), so it
// is used if present and pulled otherwise; a content-hash tag keeps the kubelet
// from pulling a preloaded image.
func Prepare(p corev1.Pod) corev1.Pod {
	p = *p.DeepCopy()
	for i := range p.Spec.Containers {
		p.Spec.Containers[i].ImagePullPolicy = corev1.PullIfNotPresent
	}
	p.Labels = WithManagedBy(p.Labels)
	return p
}

// createWorkers is how many pods CreatePods asks for at once: a round trip
// each, one after the other, cost a 50-pod round a second or two.
const createWorkers = 8

// CreatePods creates pods (already Prepared), several at once; the first
// error is returned once the creations under way are done.
func CreatePods(ctx context.Context, cs kubernetes.Interface, pods []corev1.Pod) error {
	var g errgroup.Group
	g.SetLimit(createWorkers)
	for _, p := range pods {
		g.Go(func() error {
			if _, err := cs.CoreV1().Pods(p.Namespace).Create(ctx, &p, metav1.CreateOptions{}); err != nil {
				return fmt.Errorf("creating pod %s/%s: %w", p.Namespace, p.Name, err)
			}
			return nil
		})
	}
	return g.Wait()
}

// CreateServices creates Services, labelled as the suite's.
func CreateServices(ctx context.Context, cs kubernetes.Interface, svcs []corev1.Service) error {
	for _, s := range svcs {
		s := *s.DeepCopy()
		s.Labels = WithManagedBy(s.Labels)
		if _, err := cs.CoreV1().Services(s.Namespace).Create(ctx, &s, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("creating service %s/%s: %w", s.Namespace, s.Name, err)
		}
	}
	return nil
}

// Key names a pod or Service.
type Key = types.NamespacedName

// WaitPodsReady waits until every pod is Ready with an IP, and says which are
// not, and why, when timeout passes. Each poll is one List per namespace, not
// one Get per pod: a round of 50 pods polled 4 times a second would otherwise
// ask the API server 200 times a second, on the machine running the kubelets.
func WaitPodsReady(ctx context.Context, cs kubernetes.Interface, pods []Key, timeout time.Duration) error {
	var notReady []string
	err := wait.PollUntilContextTimeout(ctx, poll, timeout, true, func(ctx context.Context) (bool, error) {
		notReady = notReady[:0]
		live, errs := podsByKey(ctx, cs, pods)
		for _, k := range pods {
			p, ok := live[k]
			switch {
			case errs[k.Namespace] != nil:
				notReady = append(notReady, fmt.Sprintf("%s: %v", k, errs[k.Namespace]))
			case !ok:
				notReady = append(notReady, k.String()+": not found")
			default:
				if why := notReadyReason(p); why != "" {
					notReady = append(notReady, k.String()+": "+why)
				}
			}
		}
		return len(notReady) == 0, nil
	})
	if err != nil {
		return fmt.Errorf("waiting %s for %d pods to be Ready: %w; not ready: %s", timeout, len(pods), err, strings.Join(notReady, "; "))
	}
	return nil
}

// podsByKey lists the pods of each namespace keys name, once each; a
// namespace that could not be listed has its error in errs.
func podsByKey(ctx context.Context, cs kubernetes.Interface, keys []Key) (map[Key]*corev1.Pod, map[string]error) {
	live, errs := map[Key]*corev1.Pod{}, map[string]error{}
	listed := map[string]bool{}
	for _, k := range keys {
		if listed[k.Namespace] {
			continue
		}
		listed[k.Namespace] = true
		pl, err := cs.CoreV1().Pods(k.Namespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			errs[k.Namespace] = err
			continue
		}
		for i := range pl.Items {
			live[Key{Namespace: k.Namespace, Name: pl.Items[i].Name}] = &pl.Items[i]
		}
	}
	return live, errs
}

// notReadyReason is why p is not Ready, empty when it is.
func notReadyReason(p *corev1.Pod) string {
	if p.DeletionTimestamp != nil {
		return "being deleted"
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue && p.Status.PodIP != "" {
			return ""
		}
	}
	var why []string
	for _, cs := range p.Status.ContainerStatuses {
		if w := cs.State.Waiting; w != nil {
			why = append(why, fmt.Sprintf("container %s waiting: %s %s", cs.Name, w.Reason, w.Message))
		}
		if t := cs.State.Terminated; t != nil {
			why = append(why, fmt.Sprintf("container %s terminated: %s (exit %d) %s", cs.Name, t.Reason, t.ExitCode, t.Message))
		}
	}
	for _, c := range p.Status.Conditions {
		if c.Status != corev1.ConditionTrue && c.Message != "" {
			why = append(why, fmt.Sprintf("%s: %s", c.Type, c.Message))
		}
	}
	if len(why) == 0 {
		why = append(why, "phase "+string(p.Status.Phase))
	}
	return strings.Join(why, ", ")
}

// WaitServiceEndpoints waits until each Service's EndpointSlices list exactly
// the Ready pods its selector matches, so a probe through it reaches them and
// not a pod that was just replaced. Each poll lists the Services, pods and
// EndpointSlices of each namespace once, whatever the number of Services.
func WaitServiceEndpoints(ctx context.Context, cs kubernetes.Interface, svcs []Key, timeout time.Duration) error {
	var pending []string
	err := wait.PollUntilContextTimeout(ctx, poll, timeout, true, func(ctx context.Context) (bool, error) {
		pending = pending[:0]
		views := map[string]*namespaceView{}
		for _, k := range svcs {
			v, ok := views[k.Namespace]
			if !ok {
				v = listNamespace(ctx, cs, k.Namespace)
				views[k.Namespace] = v
			}
			if why := v.endpointsLag(k.Name); why != "" {
				pending = append(pending, k.String()+": "+why)
			}
		}
		return len(pending) == 0, nil
	})
	if err != nil {
		return fmt.Errorf("waiting %s for the endpoints of %d Services: %w; pending: %s", timeout, len(svcs), err, strings.Join(pending, "; "))
	}
	return nil
}

// namespaceView is one namespace's Services, pods and EndpointSlices as
// listed together, or why they could not be.
type namespaceView struct {
	svcs   []corev1.Service
	pods   []corev1.Pod
	slices []discoveryv1.EndpointSlice
	err    error
}

func listNamespace(ctx context.Context, cs kubernetes.Interface, ns string) *namespaceView {
	v := &namespaceView{}
	sl, err := cs.CoreV1().Services(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		v.err = fmt.Errorf("listing Services: %w", err)
		return v
	}
	pl, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		v.err = fmt.Errorf("listing pods: %w", err)
		return v
	}
	el, err := cs.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		v.err = fmt.Errorf("listing EndpointSlices: %w", err)
		return v
	}
	v.svcs, v.pods, v.slices = sl.Items, pl.Items, el.Items
	return v
}

// endpointsLag says how Service name's ready endpoints differ from its Ready
// pods; empty when they are the same.
func (v *namespaceView) endpointsLag(name string) string {
	if v.err != nil {
		return v.err.Error()
	}
	i := slices.IndexFunc(v.svcs, func(s corev1.Service) bool { return s.Name == name })
	if i < 0 {
		return "Service not found"
	}
	sel := labels.SelectorFromSet(v.svcs[i].Spec.Selector)
	var want []string
	for _, p := range v.pods {
		if sel.Matches(labels.Set(p.Labels)) && notReadyReason(&p) == "" {
			want = append(want, p.Status.PodIP)
		}
	}
	slices.Sort(want)
	var got []string
	for _, s := range v.slices {
		if s.Labels[discoveryv1.LabelServiceName] != name {
			continue
		}
		for _, e := range s.Endpoints {
			if e.Conditions.Ready != nil && !*e.Conditions.Ready {
				continue
			}
			got = append(got, e.Addresses...)
		}
	}
	slices.Sort(got)
	if len(want) == 0 {
		return "no Ready pod matches the selector"
	}
	if !slices.Equal(want, got) {
		return fmt.Sprintf("endpoints %v, Ready pods %v", got, want)
	}
	return ""
}

// RecreatePod deletes pod and creates it again from spec, waiting until the
// old one is gone and the new one is Ready: the new pod starts life under
// whatever policies are in force.
func RecreatePod(ctx context.Context, cs kubernetes.Interface, spec corev1.Pod, timeout time.Duration) error {
	k := Key{Namespace: spec.Namespace, Name: spec.Name}
	if err := DeletePodAndWait(ctx, cs, k, timeout); err != nil {
		return err
	}
	if err := CreatePods(ctx, cs, []corev1.Pod{spec}); err != nil {
		return err
	}
	return WaitPodsReady(ctx, cs, []Key{k}, timeout)
}

// DeletePodAndWait deletes a pod at once (grace 0) and waits until the API
// server no longer has it; a pod that is already gone is fine.
func DeletePodAndWait(ctx context.Context, cs kubernetes.Interface, k Key, timeout time.Duration) error {
	err := cs.CoreV1().Pods(k.Namespace).Delete(ctx, k.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(0))})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deleting pod %s: %w", k, err)
	}
	err = wait.PollUntilContextTimeout(ctx, poll, timeout, true, func(ctx context.Context) (bool, error) {
		_, err := cs.CoreV1().Pods(k.Namespace).Get(ctx, k.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return true, nil
		}
		return false, err
	})
	if err != nil {
		return fmt.Errorf("waiting %s for pod %s to be gone: %w", timeout, k, err)
	}
	return nil
}

// Snapshot is the live state of the suite's namespaces.
type Snapshot struct {
	// Cluster is the oracle's model: the namespaces, their pods and
	// Services, and every node.
	Cluster oracle.Cluster
	// PodIPs and ClusterIPs are the addresses probes aim at, by
	// "namespace/name".
	PodIPs     map[string]netip.Addr
	ClusterIPs map[string]netip.Addr
	// ExecContainers is the container probes run in, by pod: the first one
	// (the model's pods have one container per served port).
	ExecContainers map[string]string
}

// Take reads namespaces (by name), their pods and Services, and every node.
func Take(ctx context.Context, cs kubernetes.Interface, namespaces []string) (Snapshot, error) {
	var nsObjs []corev1.Namespace
	var pods []corev1.Pod
	var svcs []corev1.Service
	for _, name := range namespaces {
		ns, err := cs.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return Snapshot{}, fmt.Errorf("snapshot: reading namespace %s: %w", name, err)
		}
		nsObjs = append(nsObjs, *ns)
		pl, err := cs.CoreV1().Pods(name).List(ctx, metav1.ListOptions{})
		if err != nil {
			return Snapshot{}, fmt.Errorf("snapshot: listing pods of %s: %w", name, err)
		}
		for _, p := range pl.Items {
			// A pod being deleted is on its way out; the probes never aim at it.
			if p.DeletionTimestamp == nil {
				pods = append(pods, p)
			}
		}
		sl, err := cs.CoreV1().Services(name).List(ctx, metav1.ListOptions{})
		if err != nil {
			return Snapshot{}, fmt.Errorf("snapshot: listing services of %s: %w", name, err)
		}
		svcs = append(svcs, sl.Items...)
	}
	nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return Snapshot{}, fmt.Errorf("snapshot: listing nodes: %w", err)
	}
	return FromObjects(nsObjs, pods, nodes.Items, svcs)
}

// FromObjects builds a Snapshot from objects as the API server returned them.
func FromObjects(namespaces []corev1.Namespace, pods []corev1.Pod, nodes []corev1.Node, svcs []corev1.Service) (Snapshot, error) {
	c, err := oracle.ClusterFromObjects(namespaces, pods, nodes, svcs)
	if err != nil {
		return Snapshot{}, err
	}
	s := Snapshot{Cluster: c, PodIPs: map[string]netip.Addr{}, ClusterIPs: map[string]netip.Addr{}, ExecContainers: map[string]string{}}
	for _, p := range c.Pods {
		s.PodIPs[p.Ref()] = p.IP
	}
	for _, p := range pods {
		if len(p.Spec.Containers) > 0 {
			s.ExecContainers[p.Namespace+"/"+p.Name] = p.Spec.Containers[0].Name
		}
	}
	for _, svc := range svcs {
		if svc.Spec.ClusterIP == "" || svc.Spec.ClusterIP == corev1.ClusterIPNone {
			continue
		}
		ip, err := netip.ParseAddr(svc.Spec.ClusterIP)
		if err != nil {
			return Snapshot{}, fmt.Errorf("service %s/%s: spec.clusterIP %q: %w", svc.Namespace, svc.Name, svc.Spec.ClusterIP, err)
		}
		s.ClusterIPs[svc.Namespace+"/"+svc.Name] = ip
	}
	return s, nil
}

func ptr[T any](v T) *T { return &v }

// WithManagedBy is a copy of labels m with the suites' ManagedByLabel added.
func WithManagedBy(m map[string]string) map[string]string {
	out := map[string]string{ManagedByLabel: ManagedByValue}
	for k, v := range m {
		out[k] = v
	}
	return out
}

// Schedulable says whether a node takes pods that tolerate nothing: Ready, not
// cordoned, no NoSchedule or NoExecute taint.
func Schedulable(n corev1.Node) bool {
	if n.Spec.Unschedulable {
		return false
	}
	for _, t := range n.Spec.Taints {
		if t.Effect == corev1.TaintEffectNoSchedule || t.Effect == corev1.TaintEffectNoExecute {
			return false
		}
	}
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// NodeRoom is a node's pod capacity (its allocatable pods: the kubelet's maxPods,
// which flatnet's block size follows) and the pods on it that hold a place.
type NodeRoom struct {
	Node    corev1.Node
	MaxPods int
	Running int // pods neither Succeeded nor Failed
}

// Free is how many more pods the node admits.
func (r NodeRoom) Free() int { return max(0, r.MaxPods-r.Running) }

// PodRoom is every node's room, in the API's order.
func PodRoom(ctx context.Context, cs kubernetes.Interface) ([]NodeRoom, error) {
	nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing the nodes: %w", err)
	}
	pods, err := cs.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing the pods: %w", err)
	}
	running := map[string]int{}
	for _, p := range pods.Items {
		if p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed {
			running[p.Spec.NodeName]++
		}
	}
	out := make([]NodeRoom, 0, len(nodes.Items))
	for _, n := range nodes.Items {
		out = append(out, NodeRoom{Node: n, MaxPods: int(n.Status.Allocatable.Pods().Value()), Running: running[n.Name]})
	}
	return out, nil
}
