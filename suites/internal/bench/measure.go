package bench

import (
	"context"
	"fmt"
	"io"
	"math"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"github.com/flatnet/flatnet/probes/batch"
	"github.com/flatnet/flatnet/probes/podexec"
	"github.com/flatnet/flatnet/suites/internal/workload"
)

// CNI is what the bench needs to know of the CNI under test.
type CNI struct {
	Name string
	// AgentComm is the agent's /proc/PID/comm.
	AgentComm string
	// HubbleSocket is the agent's Hubble socket inside its container.
	HubbleSocket string
	// CNIMetrics, when set, is where the agent publishes its plugin's own
	// CNI ADD histogram (flatnet only).
	CNIMetrics *PodMetrics
}

// PodMetrics names the pods serving a histogram on /metrics, and optionally
// a histogram of the same operation's phases (label phase) with its phases, and
// one of how its process was scheduled (label state) with its states.
type PodMetrics struct {
	Namespace, Selector, Port, Histogram string
	PhaseHistogram                       string
	Phases                               []string
	SchedHistogram                       string
	SchedStates                          []string
}

// CNIs are the two CNIs the bench knows.
var CNIs = map[string]CNI{
	"flatnet": {Name: "flatnet", AgentComm: "flatnet-agent", HubbleSocket: "/run/flatnet/hubble.sock",
		CNIMetrics: &PodMetrics{Namespace: "flatnet-system", Selector: "app.kubernetes.io/name=flatnet-agent", Port: "9969", Histogram: "flatnet_cni_operation_duration_seconds",
			PhaseHistogram: "flatnet_cni_add_phase_seconds", Phases: []string{"prepare", "ipam", "setup", "agent"},
			SchedHistogram: "flatnet_cni_add_sched_seconds", SchedStates: []string{"oncpu", "runqueue"}}},
	"cilium": {Name: "cilium", AgentComm: "cilium-agent", HubbleSocket: "/run/cilium/hubble.sock"},
}

// Config is one measuring run on one cluster.
type Config struct {
	Cluster    string
	CNI        CNI
	Namespace  string
	ProbeImage string
	BurstPods  int
	Rounds     int           // bursts per variant, interleaved
	Window     time.Duration // each usage sample
	ChurnRate  float64       // policy changes per second
	FloodSYNs  int
	// FloodParallel is how many of the flood's connects are in flight.
	FloodParallel int
	Progress      io.Writer
}

// Validate says what is wrong with c, before anything touches the cluster.
func (c Config) Validate() error {
	switch {
	case c.Cluster == "":
		return fmt.Errorf("--cluster: empty; name the cluster measured (it labels the result)")
	case c.CNI.AgentComm == "":
		return fmt.Errorf("--cni: unknown; use flatnet or cilium")
	case c.ProbeImage == "":
		return fmt.Errorf("--probe-image: empty; set PROBE_IMAGE to the probe image the cluster's nodes have")
	case c.BurstPods < 1 || c.Rounds < 1 || c.FloodSYNs < 1 || c.FloodParallel < 1:
		return fmt.Errorf("--pods (%d), --rounds (%d) and --syns (%d), --flood-parallel (%d) must be positive", c.BurstPods, c.Rounds, c.FloodSYNs, c.FloodParallel)
	case c.Window < time.Second || c.ChurnRate <= 0:
		return fmt.Errorf("--window (%s) must be at least 1s and --churn-rate (%v) positive", c.Window, c.ChurnRate)
	}
	return nil
}

func (c Config) say(format string, a ...any) {
	if c.Progress != nil {
		fmt.Fprintf(c.Progress, "[%s] %s\n", time.Now().UTC().Format("15:04:05"), fmt.Sprintf(format, a...))
	}
}

// Measure runs every measurement on the cluster of cs and returns the figures.
// It works in its own namespace, deleted at the end.
func Measure(ctx context.Context, cs kubernetes.Interface, ex podexec.Executor, c Config) (Result, error) {
	if err := c.Validate(); err != nil {
		return Result{}, err
	}
	r := Result{Cluster: c.Cluster, CNI: c.CNI.Name, Started: time.Now().UTC()}
	var err error
	if r.LoadStart, err = ReadLoad(); err != nil {
		return r, err
	}
	workers, nodes, err := WorkerNodes(ctx, cs)
	if err != nil {
		return r, err
	}
	if len(workers) < 2 {
		return r, fmt.Errorf("cluster %s has %d schedulable nodes: the flood needs a client and a server on two", c.Cluster, len(workers))
	}
	agents, err := FindAgents(ctx, nodes, c.CNI.AgentComm)
	if err != nil {
		return r, err
	}
	if err := ensureNamespace(ctx, cs, c.Namespace); err != nil {
		return r, err
	}
	defer func() {
		bg, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		_ = cs.CoreV1().Namespaces().Delete(bg, c.Namespace, metav1.DeleteOptions{})
	}()

	c.say("%s: agents at rest, %s", c.Cluster, c.Window)
	rest, err := Sample(ctx, agents, c.Window)
	if err != nil {
		return r, fmt.Errorf("sampling the agents at rest: %w", err)
	}
	if err := c.startup(ctx, cs, nodes, &r); err != nil {
		return r, err
	}
	churn, changes, err := c.churn(ctx, cs, agents)
	if err != nil {
		return r, err
	}
	how := fmt.Sprintf("agent container cgroup, mean per agent over %s", c.Window)
	r.Add(Figure{Name: "agent CPU at rest", Unit: "millicores", Value: rest.MilliCores, Better: Lower, How: how})
	r.Add(Figure{Name: "agent memory at rest", Unit: "MiB", Value: rest.MemMiB, Better: Lower, How: how + " (working set)"})
	churnHow := fmt.Sprintf("%s; %d NetworkPolicy creates/deletes (%.0f/s) over 6 pods", how, changes, float64(changes)/c.Window.Seconds())
	r.Add(Figure{Name: "agent CPU under policy churn", Unit: "millicores", Value: churn.MilliCores, Baseline: ptr(rest.MilliCores), BaselineName: "at rest", Better: Lower, How: churnHow})
	r.Add(Figure{Name: "agent memory under policy churn", Unit: "MiB", Value: churn.MemMiB, Baseline: ptr(rest.MemMiB), BaselineName: "at rest", Better: Lower, How: churnHow})
	if err := c.flood(ctx, cs, ex, workers, agents, &r); err != nil {
		return r, err
	}
	r.Finished = time.Now().UTC()
	r.LoadEnd, err = ReadLoad()
	return r, err
}

func ensureNamespace(ctx context.Context, cs kubernetes.Interface, name string) error {
	// A previous run's namespace may still be terminating: wait for it to go.
	if err := wait.PollUntilContextTimeout(ctx, time.Second, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		old, err := cs.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return true, nil
		}
		if err == nil && old.DeletionTimestamp == nil {
			return false, fmt.Errorf("namespace %s exists and is not being deleted (another bench running?): delete it and run again", name)
		}
		return false, nil
	}); err != nil {
		return fmt.Errorf("namespace %s: %w", name, err)
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: workload.WithManagedBy(nil)}}
	if _, err := cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("creating namespace %s: %w", name, err)
	}
	// The service account the pods need appears shortly after the namespace.
	return wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := cs.CoreV1().ServiceAccounts(name).Get(ctx, "default", metav1.GetOptions{})
		return err == nil, nil
	})
}

// startup runs Rounds bursts on the pod network and on the host network,
// interleaved, and reads the kubelets' (and flatnet's plugin's) histograms
// around each.
func (c Config) startup(ctx context.Context, cs kubernetes.Interface, nodes []string, r *Result) error {
	type variant struct {
		name   string
		host   bool
		times  []PodTimes
		ops    map[string]Histogram // CRI operation -> kubelet's histogram over the bursts
		sli    Histogram
		cniAdd Histogram
		phases map[string]Histogram // the ADD's phases (CNIMetrics.Phases)
		sched  map[string]Histogram // its plugin process's scheduling (CNIMetrics.SchedStates)
	}
	vs := []*variant{{name: "pod network", ops: map[string]Histogram{}, phases: map[string]Histogram{}, sched: map[string]Histogram{}},
		{name: "host network", host: true, ops: map[string]Histogram{}}}
	// The kubelet times each CRI call: RunPodSandbox holds the CNI ADD (the
	// runtime sets the sandbox's network up before it returns).
	const opsMetric, sliMetric = "kubelet_runtime_operations_duration_seconds", "kubelet_pod_start_sli_duration_seconds"
	criOps := []string{"run_podsandbox", "create_container", "start_container"}
	for round := range c.Rounds {
		for _, v := range vs {
			c.say("%s: %d-pod burst on the %s (round %d/%d)", c.Cluster, c.BurstPods, v.name, round+1, c.Rounds)
			before, err := ScrapeKubelets(ctx, cs, nodes)
			if err != nil {
				return err
			}
			var cniBefore Scrape
			if m := c.CNI.CNIMetrics; m != nil && !v.host {
				if cniBefore, err = ScrapePods(ctx, cs, m.Namespace, m.Selector, m.Port); err != nil {
					return err
				}
			}
			b := Burst{Namespace: c.Namespace, Image: c.ProbeImage, Pods: c.BurstPods, HostNetwork: v.host, Timeout: 3 * time.Minute}
			label := fmt.Sprintf("pod%d", round)
			if v.host {
				label = fmt.Sprintf("host%d", round)
			}
			ts, err := b.Run(ctx, cs, label)
			if err != nil {
				return err
			}
			v.times = append(v.times, ts...)
			// The API forgets a pod deleted with no grace period at once; its
			// sandbox (and the CNI DEL, the netns's teardown) goes later. The next
			// burst starts once every kubelet is back to the sandboxes it ran
			// before, so that no burst is measured under another's teardown.
			after, err := waitSandboxesGone(ctx, cs, nodes, before.Gauge(runningPods, nil))
			if err != nil {
				return err
			}
			for _, op := range criOps {
				sel := map[string]string{"operation_type": op}
				v.ops[op] = addHist(v.ops[op], after.Histogram(opsMetric, sel).Sub(before.Histogram(opsMetric, sel)))
			}
			v.sli = addHist(v.sli, after.Histogram(sliMetric, nil).Sub(before.Histogram(sliMetric, nil)))
			if m := c.CNI.CNIMetrics; m != nil && !v.host {
				cniAfter, err := ScrapePods(ctx, cs, m.Namespace, m.Selector, m.Port)
				if err != nil {
					return err
				}
				add := map[string]string{"op": "ADD"}
				v.cniAdd = addHist(v.cniAdd, cniAfter.Histogram(m.Histogram, add).Sub(cniBefore.Histogram(m.Histogram, add)))
				for _, ph := range m.Phases {
					sel := map[string]string{"phase": ph}
					v.phases[ph] = addHist(v.phases[ph], cniAfter.Histogram(m.PhaseHistogram, sel).Sub(cniBefore.Histogram(m.PhaseHistogram, sel)))
				}
				for _, st := range m.SchedStates {
					sel := map[string]string{"state": st}
					v.sched[st] = addHist(v.sched[st], cniAfter.Histogram(m.SchedHistogram, sel).Sub(cniBefore.Histogram(m.SchedHistogram, sel)))
				}
			}
		}
	}
	pod, host := vs[0], vs[1]
	for _, v := range vs {
		r.Trace = append(r.Trace, Phases(v.name, v.times)...)
	}
	q := func(ts []PodTimes, p float64) float64 {
		var ds []time.Duration
		for _, t := range ts {
			if !t.Created.IsZero() && !t.Ready.IsZero() {
				ds = append(ds, t.Ready.Sub(t.Created))
			}
		}
		return ms(Quantile(ds, p))
	}
	burst := fmt.Sprintf("%d-pod burst x%d", c.BurstPods, c.Rounds)
	hostBase := "hostNetwork burst"
	for _, p := range []float64{0.5, 0.9} {
		r.Add(Figure{Name: fmt.Sprintf("pod start-up p%.0f, %s", p*100, burst), Unit: "ms", Value: q(pod.times, p),
			Baseline: ptr(q(host.times, p)), BaselineName: hostBase, Better: Lower, How: "create call -> Ready seen on a pod watch, per pod"})
	}
	r.Add(Figure{Name: "kubelet pod start SLI p90", Unit: "ms", Value: pod.sli.Quantile(0.9) * 1000,
		Baseline: ptr(host.sli.Quantile(0.9) * 1000), BaselineName: hostBase, Better: Lower,
		How: sliMetric + " over the bursts, interpolated in its buckets (0.5, 1, 2, 3, 4, 5, 6, 8, 10 s, ..)"})
	sb, hsb := pod.ops["run_podsandbox"], host.ops["run_podsandbox"]
	opsHow := fmt.Sprintf("%s{operation_type=%%s}, every kubelet, %v pod-network calls", opsMetric, sb.Count)
	for _, op := range criOps {
		h, hh := pod.ops[op], host.ops[op]
		r.Add(Figure{Name: "kubelet CRI " + op + " mean", Unit: "ms", Value: h.Mean() * 1000, Baseline: ptr(hh.Mean() * 1000),
			BaselineName: hostBase, Better: Lower, How: fmt.Sprintf(opsHow, op) + ", sum/count (exact)"})
	}
	r.Add(Figure{Name: "kubelet CRI run_podsandbox p99", Unit: "ms", Value: sb.Quantile(0.99) * 1000, Baseline: ptr(hsb.Quantile(0.99) * 1000),
		BaselineName: hostBase, Better: Lower, How: fmt.Sprintf(opsHow, "run_podsandbox") + ", interpolated in its buckets"})
	r.Add(Figure{Name: "CNI ADD mean (run_podsandbox, pod - host network)", Unit: "ms", Value: (sb.Mean() - hsb.Mean()) * 1000, Better: Lower,
		How: "the kubelet's RunPodSandbox mean minus the hostNetwork burst's: the CNI's share, measured the same way on any CNI"})
	r.Add(Figure{Name: "CNI ADD p99 (run_podsandbox p99, pod - host network)", Unit: "ms", Value: (sb.Quantile(0.99) - hsb.Quantile(0.99)) * 1000, Better: Lower,
		How: "the same, at p99 (bucket-interpolated)"})
	if pod.cniAdd.Count > 0 {
		for _, p := range []float64{0.5, 0.99} {
			r.Add(Figure{Name: fmt.Sprintf("CNI ADD p%.0f (plugin's own histogram)", p*100), Unit: "ms", Value: pod.cniAdd.Quantile(p) * 1000, Better: Lower,
				How: fmt.Sprintf("%s{op=ADD}, %v ADDs, interpolated in 1,2,4,8,16,32 ms.. buckets", c.CNI.CNIMetrics.Histogram, pod.cniAdd.Count)})
		}
		r.Add(Figure{Name: "CNI ADD mean (plugin's own histogram)", Unit: "ms", Value: pod.cniAdd.Mean() * 1000, Better: Lower, How: "sum/count of the same histogram"})
		for _, ph := range c.CNI.CNIMetrics.Phases {
			h := pod.phases[ph]
			if h.Count == 0 {
				continue
			}
			for _, p := range []float64{0.5, 0.99} {
				r.Add(Figure{Name: fmt.Sprintf("CNI ADD phase %s p%.0f", ph, p*100), Unit: "ms", Value: h.Quantile(p) * 1000, Better: Lower,
					How: fmt.Sprintf("%s{phase=%s}, %v ADDs, interpolated in its buckets (0.25, 0.5, 1, 2 ms ..)", c.CNI.CNIMetrics.PhaseHistogram, ph, h.Count)})
			}
		}
		for _, st := range c.CNI.CNIMetrics.SchedStates {
			h := pod.sched[st]
			if h.Count == 0 {
				continue
			}
			what := map[string]string{"oncpu": "on a CPU", "runqueue": "waiting for a CPU"}[st]
			for _, p := range []float64{0.5, 0.99} {
				r.Add(Figure{Name: fmt.Sprintf("CNI ADD plugin %s p%.0f", what, p*100), Unit: "ms", Value: h.Quantile(p) * 1000, Better: Lower,
					How: fmt.Sprintf("%s{state=%s}: the plugin's threads' schedstat until its PUT, %v ADDs, interpolated in its buckets", c.CNI.CNIMetrics.SchedHistogram, st, h.Count)})
			}
		}
	}
	return nil
}

// runningPods is the kubelet's gauge of pods with a running sandbox.
const runningPods = "kubelet_running_pods"

// waitSandboxesGone waits until the kubelets of nodes run no more than want pod
// sandboxes in all (2 minutes at most), and returns their last scrape.
func waitSandboxesGone(ctx context.Context, cs kubernetes.Interface, nodes []string, want float64) (Scrape, error) {
	var s Scrape
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		var err error
		if s, err = ScrapeKubelets(ctx, cs, nodes); err != nil {
			return false, err
		}
		if s[runningPods] == nil {
			return false, fmt.Errorf("the kubelets publish no %s", runningPods)
		}
		return s.Gauge(runningPods, nil) <= want, nil
	})
	if err != nil {
		return nil, fmt.Errorf("waiting for the burst's pod sandboxes to be torn down (%s back to %v; now %v): %w",
			runningPods, want, s.Gauge(runningPods, nil), err)
	}
	return s, nil
}

func addHist(a, b Histogram) Histogram {
	if len(a.Bounds) == 0 {
		return b
	}
	if len(b.Bounds) == 0 {
		return a
	}
	for i := range a.Counts {
		if i < len(b.Counts) {
			a.Counts[i] += b.Counts[i]
		}
	}
	a.Count += b.Count
	a.Sum += b.Sum
	return a
}

// churn samples the agents while NetworkPolicies change over six pods.
func (c Config) churn(ctx context.Context, cs kubernetes.Interface, agents []Agent) (Usage, int, error) {
	var pods []corev1.Pod
	var keys []workload.Key
	for i := range 6 {
		p := pausePod(c.Namespace, fmt.Sprintf("churn-%d", i), c.ProbeImage, map[string]string{"bench": "churn"}, "")
		pods = append(pods, p)
		keys = append(keys, workload.Key{Namespace: c.Namespace, Name: p.Name})
	}
	if err := workload.CreatePods(ctx, cs, pods); err != nil {
		return Usage{}, 0, err
	}
	if err := workload.WaitPodsReady(ctx, cs, keys, 2*time.Minute); err != nil {
		return Usage{}, 0, err
	}
	c.say("%s: agents under a policy churn (%.0f changes/s), %s", c.Cluster, c.ChurnRate, c.Window)
	cctx, cancel := context.WithCancel(ctx) // no deadline: a rate limiter refuses a wait that would pass one
	defer cancel()
	type out struct {
		n   int
		err error
	}
	done := make(chan out, 1)
	go func() {
		n, err := Churn{Namespace: c.Namespace, Rate: c.ChurnRate, Live: 50}.Run(cctx, cs)
		done <- out{n, err}
	}()
	u, err := Sample(ctx, agents, c.Window)
	cancel()
	o := <-done
	if err == nil {
		err = o.err
	}
	return u, o.n, err
}

func pausePod(ns, name, image string, labels map[string]string, node string) corev1.Pod {
	zero := int64(0)
	return workload.Prepare(corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec: corev1.PodSpec{
			NodeName:                      node,
			TerminationGracePeriodSeconds: &zero,
			Containers:                    []corev1.Container{{Name: "probe", Image: image, Command: []string{"/probe", "pause"}}},
		},
	})
}

// flood floods a default-denied server on one node from a client on another
// and counts the flow events every agent took in, over an idle window first.
func (c Config) flood(ctx context.Context, cs kubernetes.Interface, ex podexec.Executor, workers []string, agents []Agent, r *Result) error {
	server := pausePod(c.Namespace, "flood-server", c.ProbeImage, map[string]string{"bench": "flood-server"}, workers[0])
	client := pausePod(c.Namespace, "flood-client", c.ProbeImage, map[string]string{"bench": "flood-client"}, workers[1])
	if err := workload.CreatePods(ctx, cs, []corev1.Pod{server, client}); err != nil {
		return err
	}
	keys := []workload.Key{{Namespace: c.Namespace, Name: server.Name}, {Namespace: c.Namespace, Name: client.Name}}
	if err := workload.WaitPodsReady(ctx, cs, keys, 2*time.Minute); err != nil {
		return err
	}
	deny := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "flood-deny"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"bench": "flood-server"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
		},
	}
	if _, err := cs.NetworkingV1().NetworkPolicies(c.Namespace).Create(ctx, deny, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("creating the flood's default deny: %w", err)
	}
	sp, err := cs.CoreV1().Pods(c.Namespace).Get(ctx, server.Name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("reading the flood server: %w", err)
	}
	clientPod := podexec.Pod{Namespace: c.Namespace, Name: client.Name}
	target := sp.Status.PodIP + ":80"
	// Enforced once a connect times out (the pause server answers a SYN with a
	// RST while it is not isolated).
	if err := wait.PollUntilContextTimeout(ctx, time.Second, time.Minute, true, func(ctx context.Context) (bool, error) {
		res, err := Flood{Client: clientPod, Target: target, SYNs: 1, Parallel: 1, Timeout: 500 * time.Millisecond}.Run(ctx, ex)
		return err == nil && res.Verdicts[batch.Timeout] == 1, nil
	}); err != nil {
		return fmt.Errorf("the flood server %s was not isolated a minute after its default deny", target)
	}
	idleWindow := 5 * time.Second
	c.say("%s: flow events idle (%s), then a flood of %d denied SYNs %s -> %s", c.Cluster, idleWindow, c.FloodSYNs, client.Name, target)
	s0, err := SeenFlows(ctx, agents, c.CNI.HubbleSocket)
	if err != nil {
		return err
	}
	t0 := time.Now()
	time.Sleep(idleWindow)
	s1, err := SeenFlows(ctx, agents, c.CNI.HubbleSocket)
	if err != nil {
		return err
	}
	idleRate := float64(s1-s0) / time.Since(t0).Seconds()
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	dc, err := WatchDrops(wctx, agents, c.CNI.HubbleSocket, sp.Status.PodIP)
	if err != nil {
		return err
	}
	t1 := time.Now()
	res, err := Flood{Client: clientPod, Target: target, SYNs: c.FloodSYNs, Parallel: c.FloodParallel, Timeout: 100 * time.Millisecond}.Run(ctx, ex)
	if err != nil {
		return err
	}
	wall := time.Since(t1).Seconds()
	s2, err := SeenFlows(ctx, agents, c.CNI.HubbleSocket)
	if err != nil {
		return err
	}
	time.Sleep(2 * time.Second) // the last events on their way to the followers
	stopWatch()
	drops, lost, err := dc.Wait()
	if err != nil {
		return err
	}
	sent := float64(c.FloodSYNs) / wall
	events := math.Max(float64(s2-s1)/wall-idleRate, 0)
	flood := fmt.Sprintf("%d SYNs by probe batch (%d in flight, 100 ms each) in %.1f s, verdicts %v", c.FloodSYNs, c.FloodParallel, wall, res.Verdicts)
	r.Add(Figure{Name: "flow events/s taken in, denied-SYN flood", Unit: "events/s", Value: events, Baseline: ptr(sent), BaselineName: "SYNs sent/s",
		Better: Higher, How: fmt.Sprintf("Hubble ServerStatus seen_flows delta summed over the agents (local socket), minus the idle rate %.0f/s; %s", idleRate, flood)})
	r.Add(Figure{Name: "drop flows/s delivered, denied-SYN flood", Unit: "flows/s", Value: float64(drops) / wall, Baseline: ptr(sent), BaselineName: "SYNs sent/s",
		Better: Higher, How: fmt.Sprintf("Hubble GetFlows follow, verdict DROPPED to the server, every agent: %d drops, %d reported lost; %s", drops, lost, flood)})
	return nil
}
