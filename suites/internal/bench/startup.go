package bench

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// Burst is one burst of identical pause pods.
type Burst struct {
	Namespace   string
	Image       string
	Pods        int
	HostNetwork bool
	Timeout     time.Duration
}

// PodTimes is when one pod of a burst reached each step, as this process saw
// the API's watch events (millisecond precision: the API's own timestamps are
// whole seconds). Created is just before its create call.
type PodTimes struct {
	Name, Node string
	Created    time.Time
	// Scheduled: PodScheduled true; Ready: PodReady true.
	Scheduled, Ready time.Time
	// APICreated, APIReady: the API's own timestamps, to check the above by.
	APICreated, APIReady time.Time
}

// Run creates the burst's pods at once (8 create calls in flight, as a
// controller would), waits until every one is Ready, then deletes them and
// waits until the API has forgotten them (their sandboxes go later: Measure waits
// for the kubelets to have torn them down). The times come from a pod informer on
// the namespace.
func (b Burst) Run(ctx context.Context, cs kubernetes.Interface, label string) ([]PodTimes, error) {
	if b.Pods <= 0 || b.Image == "" || b.Namespace == "" {
		return nil, fmt.Errorf("burst: Pods (%d), Image (%q) and Namespace (%q) must be set", b.Pods, b.Image, b.Namespace)
	}
	ctx, cancel := context.WithTimeout(ctx, b.Timeout)
	defer cancel()
	sel := "bench-burst=" + label
	var mu sync.Mutex
	times := map[string]*PodTimes{}
	gone := map[string]bool{}
	see := func(obj any) {
		p, ok := obj.(*corev1.Pod)
		if !ok {
			return
		}
		now := time.Now()
		mu.Lock()
		defer mu.Unlock()
		t := times[p.Name]
		if t == nil {
			return // created before its entry was made: seen again on its next update
		}
		t.Node = p.Spec.NodeName
		t.APICreated = p.CreationTimestamp.Time
		for _, c := range p.Status.Conditions {
			if c.Status != corev1.ConditionTrue {
				continue
			}
			switch c.Type {
			case corev1.PodScheduled:
				setOnce(&t.Scheduled, now)
			case corev1.PodReady:
				setOnce(&t.Ready, now)
				t.APIReady = c.LastTransitionTime.Time
			}
		}
	}
	f := informers.NewSharedInformerFactoryWithOptions(cs, 0, informers.WithNamespace(b.Namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = sel }))
	inf := f.Core().V1().Pods().Informer()
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    see,
		UpdateFunc: func(_, o any) { see(o) },
		DeleteFunc: func(o any) {
			if d, ok := o.(cache.DeletedFinalStateUnknown); ok {
				o = d.Obj
			}
			if p, ok := o.(*corev1.Pod); ok {
				mu.Lock()
				gone[p.Name] = true
				mu.Unlock()
			}
		},
	}); err != nil {
		return nil, fmt.Errorf("burst: watching pods: %w", err)
	}
	stop := make(chan struct{})
	defer close(stop)
	f.Start(stop)
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return nil, fmt.Errorf("burst: the pod informer of %s did not sync", b.Namespace)
	}

	names := make([]string, b.Pods)
	for i := range names {
		names[i] = fmt.Sprintf("%s-%02d", label, i)
		times[names[i]] = &PodTimes{Name: names[i]}
	}
	work := make(chan string)
	errs := make(chan error, b.Pods)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := range work {
				pod := b.pod(n, label)
				mu.Lock()
				times[n].Created = time.Now()
				mu.Unlock()
				if _, err := cs.CoreV1().Pods(b.Namespace).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
					errs <- fmt.Errorf("burst: creating pod %s/%s: %w", b.Namespace, n, err)
				}
			}
		}()
	}
	for _, n := range names {
		work <- n
	}
	close(work)
	wg.Wait()
	close(errs)
	for err := range errs {
		return nil, err
	}

	waitErr := wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(context.Context) (bool, error) {
		mu.Lock()
		defer mu.Unlock()
		for _, t := range times {
			if t.Ready.IsZero() {
				return false, nil
			}
		}
		return true, nil
	})
	// Resync once: a pod updated before its entry existed is complete in the cache.
	why := map[string]int{} // what keeps pods from Ready, for the error
	for _, o := range inf.GetStore().List() {
		see(o)
		if p, ok := o.(*corev1.Pod); ok {
			for _, c := range p.Status.Conditions {
				if c.Status != corev1.ConditionTrue && (c.Type == corev1.PodScheduled || c.Type == corev1.PodReady) {
					why[fmt.Sprintf("%s: %s %s", c.Type, c.Reason, c.Message)]++
					break
				}
			}
		}
	}
	out := make([]PodTimes, 0, len(names))
	mu.Lock()
	ready := 0
	for _, n := range names {
		out = append(out, *times[n])
		if !times[n].Ready.IsZero() {
			ready++
		}
	}
	mu.Unlock()

	// Delete, whatever happened, and wait until the pods are gone.
	zero := int64(0)
	delCtx, delCancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer delCancel()
	if err := cs.CoreV1().Pods(b.Namespace).DeleteCollection(delCtx, metav1.DeleteOptions{GracePeriodSeconds: &zero},
		metav1.ListOptions{LabelSelector: sel}); err != nil {
		return out, fmt.Errorf("burst: deleting pods %s in %s: %w", sel, b.Namespace, err)
	}
	if err := wait.PollUntilContextCancel(delCtx, 250*time.Millisecond, true, func(context.Context) (bool, error) {
		return len(inf.GetStore().List()) == 0, nil
	}); err != nil {
		return out, fmt.Errorf("burst: pods %s in %s still there after 2 minutes", sel, b.Namespace)
	}
	if waitErr != nil {
		var reasons []string
		for w, n := range why {
			reasons = append(reasons, fmt.Sprintf("%d pods %s", n, w))
		}
		return out, fmt.Errorf("burst: %d of %d pods Ready after %s; %s", ready, b.Pods, b.Timeout, strings.Join(reasons, "; "))
	}
	return out, nil
}

func (b Burst) pod(name, label string) *corev1.Pod {
	zero := int64(0)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"bench-burst": label}},
		Spec: corev1.PodSpec{
			HostNetwork:                   b.HostNetwork,
			TerminationGracePeriodSeconds: &zero,
			Containers: []corev1.Container{{
				Name: "pause", Image: b.Image, ImagePullPolicy: corev1.PullNever,
				Command: []string{"/probe", "pause"},
			}},
		},
	}
}

func setOnce(t *time.Time, now time.Time) {
	if t.IsZero() {
		*t = now
	}
}

// Phase is one step of a burst's start-up: the p50/p90 of its duration per pod.
type Phase struct {
	Burst    string  `json:"burst"`
	Phase    string  `json:"phase"`
	P50MS    float64 `json:"p50_ms"`
	P90MS    float64 `json:"p90_ms"`
	MaxMS    float64 `json:"max_ms"`
	Complete int     `json:"pods"`
}

// Phases splits a burst's start-up into create→scheduled, scheduled→Ready
// (the kubelet: sandbox, CNI ADD, container) and the whole. The kubelet
// reports PodReadyToStartContainers in the same status write as Ready for a
// pause pod, so the kubelet's part is split by its CRI histograms instead.
func Phases(burst string, ts []PodTimes) []Phase {
	steps := []struct {
		name     string
		from, to func(PodTimes) time.Time
	}{
		{"create -> scheduled", func(t PodTimes) time.Time { return t.Created }, func(t PodTimes) time.Time { return t.Scheduled }},
		{"scheduled -> Ready (kubelet)", func(t PodTimes) time.Time { return t.Scheduled }, func(t PodTimes) time.Time { return t.Ready }},
		{"create -> Ready", func(t PodTimes) time.Time { return t.Created }, func(t PodTimes) time.Time { return t.Ready }},
		{"create -> Ready (API timestamps, 1 s)", func(t PodTimes) time.Time { return t.APICreated }, func(t PodTimes) time.Time { return t.APIReady }},
	}
	var out []Phase
	for _, s := range steps {
		var ds []time.Duration
		for _, t := range ts {
			a, b := s.from(t), s.to(t)
			if a.IsZero() || b.IsZero() {
				continue
			}
			ds = append(ds, max(b.Sub(a), 0))
		}
		out = append(out, Phase{Burst: burst, Phase: s.name, P50MS: ms(Quantile(ds, 0.5)), P90MS: ms(Quantile(ds, 0.9)),
			MaxMS: ms(Quantile(ds, 1)), Complete: len(ds)})
	}
	return out
}
