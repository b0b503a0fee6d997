package perf

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"github.com/flatnet/flatnet/probes/batch"
	probeperf "github.com/flatnet/flatnet/probes/perf"
	"github.com/flatnet/flatnet/probes/podexec"
	"github.com/flatnet/flatnet/suites/internal/workload"
)

// Config is one run.
type Config struct {
	// Cluster names the cluster in the report and the artefacts' directory.
	Cluster   string
	Namespace string
	// Image is the probe image (with `probe perf`) the cluster's nodes have.
	Image string
	Port  int
	Tests []probeperf.Test
	Paths []Path
	// Policies are the policy counts to measure under, in order (0 = none).
	Policies         []int
	Duration, Warmup time.Duration
	Parallel         int
	// EnforceTimeout bounds the wait for a policy set to be in force (and gone).
	EnforceTimeout time.Duration
	// Progress gets one line per step and per cell.
	Progress io.Writer
}

// Validate names the flag of the first bad field.
func (c Config) Validate() error {
	o := probeperf.DefaultOptions()
	o.Target, o.Duration, o.Warmup, o.Parallel = "server:1", c.Duration, c.Warmup, c.Parallel
	switch {
	case c.Cluster == "":
		return fmt.Errorf("--cluster: empty: name the cluster (it names the artefacts' directory)")
	case c.Image == "":
		return fmt.Errorf("--image (PROBE_IMAGE): empty: give the probe image the cluster's nodes have (scripts/probe-image.sh)")
	case c.Port < 1 || c.Port > 65535:
		return fmt.Errorf("--port=%d: must be between 1 and 65535", c.Port)
	case len(c.Tests) == 0 || len(c.Paths) == 0 || len(c.Policies) == 0:
		return fmt.Errorf("--tests, --paths and --policies must each name at least one")
	case c.EnforceTimeout <= 0:
		return fmt.Errorf("--enforce-timeout=%s: must be positive", c.EnforceTimeout)
	}
	for _, n := range c.Policies {
		if n < 0 || n > MaxPolicies {
			return fmt.Errorf("--policies: %d: must be between 0 and %d", n, MaxPolicies)
		}
	}
	return o.Validate()
}

// Bench is a run in progress on one cluster.
type Bench struct {
	cs     kubernetes.Interface
	exec   podexec.Executor
	cfg    Config
	a, b   string            // the two nodes
	ips    map[string]string // pod name → address
	report *Report
}

// Run places the pods, measures every path × test under each policy count and
// returns the report. A cell that fails is reported as failed; Run fails only
// when the run cannot start. The namespace must not exist; Run creates it and,
// unless keep, deletes it.
func Run(ctx context.Context, cs kubernetes.Interface, exec podexec.Executor, cfg Config, keep bool) (*Report, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	b := &Bench{cs: cs, exec: exec, cfg: cfg, report: &Report{Cluster: cfg.Cluster, Started: time.Now().UTC(), Load: []LoadSample{}}}
	if err := b.setup(ctx); err != nil {
		return nil, err
	}
	if !keep {
		defer b.teardown()
	}
	for _, n := range cfg.Policies {
		if ctx.Err() != nil {
			return b.report, fmt.Errorf("interrupted before the %d-policy phase: %w", n, ctx.Err())
		}
		b.phase(ctx, n)
	}
	b.sampleLoad("end")
	return b.report, nil
}

func (b *Bench) progress(format string, args ...any) {
	if b.cfg.Progress != nil {
		fmt.Fprintf(b.cfg.Progress, format+"\n", args...)
	}
}

func (b *Bench) sampleLoad(when string) {
	l, err := ReadLoad()
	if err != nil {
		b.report.Notes = append(b.report.Notes, "load average not read: "+err.Error())
		return
	}
	l.When = when
	b.report.Load = append(b.report.Load, l)
	b.progress("load average (%s): %.2f %.2f %.2f", when, l.One, l.Five, l.Fifteen)
}

func (b *Bench) setup(ctx context.Context) error {
	nodes, err := b.cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("listing nodes: %w", err)
	}
	if b.a, b.b, err = Nodes(nodes.Items); err != nil {
		return err
	}
	if b.b == "" {
		var kept []Path
		for _, p := range b.cfg.Paths {
			if p.crossesNodes() {
				b.report.Notes = append(b.report.Notes, fmt.Sprintf("%s not measured: one schedulable node (%s)", p, b.a))
				continue
			}
			kept = append(kept, p)
		}
		b.cfg.Paths = kept
	}
	b.report.Nodes = []string{b.a, b.b}
	var nodeIPs []string
	for _, n := range nodes.Items {
		for _, a := range n.Status.Addresses {
			if a.Type == corev1.NodeInternalIP && (n.Name == b.a || n.Name == b.b) {
				nodeIPs = append(nodeIPs, a.Address)
			}
		}
	}
	b.report.NodeIPs = nodeIPs
	b.progress("namespace %s, nodes %s and %s, image %s", b.cfg.Namespace, b.a, b.b, b.cfg.Image)
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: b.cfg.Namespace, Labels: workload.WithManagedBy(map[string]string{
		// Host-network pods are only admitted at the privileged level.
		"pod-security.kubernetes.io/enforce": "privileged",
	})}}
	if _, err := b.cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("creating namespace %s: %w", b.cfg.Namespace, err)
	}
	pods := podSpecs(b.cfg.Namespace, b.cfg.Image, b.cfg.Port, b.a, b.b)
	if err := workload.CreatePods(ctx, b.cs, pods); err != nil {
		b.teardown()
		return err
	}
	keys := make([]workload.Key, len(pods))
	for i, p := range pods {
		keys[i] = workload.Key{Namespace: p.Namespace, Name: p.Name}
	}
	if err := workload.WaitPodsReady(ctx, b.cs, keys, 3*time.Minute); err != nil {
		b.teardown()
		return err
	}
	b.ips = map[string]string{}
	for _, k := range keys {
		p, err := b.cs.CoreV1().Pods(k.Namespace).Get(ctx, k.Name, metav1.GetOptions{})
		if err != nil {
			b.teardown()
			return fmt.Errorf("reading pod %s: %w", k, err)
		}
		b.ips[k.Name] = p.Status.PodIP
	}
	b.sampleLoad("start")
	return nil
}

func (b *Bench) teardown() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	b.progress("deleting namespace %s", b.cfg.Namespace)
	err := b.cs.CoreV1().Namespaces().Delete(ctx, b.cfg.Namespace, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		b.progress("deleting namespace %s: %v", b.cfg.Namespace, err)
	}
}

func (b *Bench) target(path Path) string {
	return net.JoinHostPort(b.ips[endpoints[path].server], strconv.Itoa(b.cfg.Port))
}

// phase measures every cell with n policies in force.
func (b *Bench) phase(ctx context.Context, n int) {
	if n > 0 {
		if err := b.applyPolicies(ctx, n); err != nil {
			b.fail(n, fmt.Errorf("applying %d policies: %w", n, err))
			return
		}
		defer b.deletePolicies(ctx)
	}
	b.sampleLoad(fmt.Sprintf("%d policies", n))
	for _, path := range b.cfg.Paths {
		for _, test := range b.cfg.Tests {
			c := Cell{Path: path, Test: test, Policies: n}
			if l, err := ReadLoad(); err == nil {
				c.Load1 = l.One
			}
			c.Result, c.Err = b.measure(ctx, path, test)
			b.report.Cells = append(b.report.Cells, c)
			b.progress("  %-20s %-10s %6d policies  %s", path, test, n, c.Summary())
		}
	}
}

// fail records every cell of a phase that could not run.
func (b *Bench) fail(n int, err error) {
	b.progress("  %v", err)
	for _, path := range b.cfg.Paths {
		for _, test := range b.cfg.Tests {
			b.report.Cells = append(b.report.Cells, Cell{Path: path, Test: test, Policies: n, Err: err})
		}
	}
}

// measure runs one `probe perf` in the path's client pod.
func (b *Bench) measure(ctx context.Context, path Path, test probeperf.Test) (*probeperf.Result, error) {
	cmd := []string{"/probe", "perf", "-o", "json", "--test", string(test), "--target", b.target(path),
		"--duration", b.cfg.Duration.String(), "--warmup", b.cfg.Warmup.String(), "--parallel", strconv.Itoa(b.cfg.Parallel)}
	var stdout, stderr bytes.Buffer
	pod := podexec.Pod{Namespace: b.cfg.Namespace, Name: endpoints[path].client}
	if err := b.exec.Exec(ctx, pod, cmd, nil, &stdout, &stderr); err != nil {
		return nil, fmt.Errorf("%s in %s: %w: %s", test, pod, err, strings.TrimSpace(stderr.String()))
	}
	var r probeperf.Result
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		return nil, fmt.Errorf("%s in %s printed no result: %w: %q", test, pod, err, stdout.String())
	}
	return &r, nil
}

// applyPolicies creates n policies (8 at a time: 10,000 one by one would take
// minutes) and waits until they are in force: the outsider is refused by both
// pod servers, while the client still gets through.
func (b *Bench) applyPolicies(ctx context.Context, n int) error {
	nps, err := Policies(b.cfg.Namespace, n, b.cfg.Port, b.report.NodeIPs)
	if err != nil {
		return err
	}
	start := time.Now()
	work := make(chan int)
	errs := make(chan error, len(nps))
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for i := range work {
				_, err := b.cs.NetworkingV1().NetworkPolicies(b.cfg.Namespace).Create(ctx, &nps[i], metav1.CreateOptions{})
				if err != nil {
					errs <- fmt.Errorf("creating NetworkPolicy %s: %w", nps[i].Name, err)
				}
			}
		})
	}
	for i := range nps {
		work <- i
		if (i+1)%1000 == 0 {
			b.progress("  created %d/%d policies", i+1, n)
		}
	}
	close(work)
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	b.progress("%d policies created in %s; waiting until the outsider is refused", n, time.Since(start).Round(time.Millisecond))
	if err := b.waitOutsider(ctx, batch.Timeout); err != nil {
		return err
	}
	b.progress("%d policies in force %s after the first create", n, time.Since(start).Round(time.Millisecond))
	return nil
}

func (b *Bench) deletePolicies(ctx context.Context) {
	err := b.cs.NetworkingV1().NetworkPolicies(b.cfg.Namespace).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
	if err == nil {
		err = b.waitOutsider(ctx, batch.Connected)
	}
	if err != nil {
		b.report.Notes = append(b.report.Notes, fmt.Sprintf("removing the policies: %v (later phases may be measured under them)", err))
	}
}

// waitOutsider waits until the outsider's verdict at every pod server is want.
func (b *Bench) waitOutsider(ctx context.Context, want batch.Verdict) error {
	var targets []batch.Target
	for _, s := range []string{serverAPod, serverBPod} {
		if ip := b.ips[s]; ip != "" {
			targets = append(targets, batch.Target{Target: net.JoinHostPort(ip, strconv.Itoa(b.cfg.Port))})
		}
	}
	r := podexec.Runner{Exec: b.exec, Options: batch.Options{Timeout: time.Second}}
	var last string
	err := wait.PollUntilContextTimeout(ctx, time.Second, b.cfg.EnforceTimeout, true, func(ctx context.Context) (bool, error) {
		cells, err := r.Probe(ctx, podexec.Pod{Namespace: b.cfg.Namespace, Name: outsiderPod}, targets)
		if err != nil {
			last = err.Error()
			return false, nil
		}
		var off []string
		for _, c := range cells {
			if c.Verdict != want {
				off = append(off, fmt.Sprintf("%s %s", c.Target.Target, c.Verdict))
			}
		}
		last = strings.Join(off, ", ")
		return len(off) == 0, nil
	})
	if err != nil {
		return fmt.Errorf("the outsider's connections were not %s within %s (last: %s)", want, b.cfg.EnforceTimeout, last)
	}
	return nil
}
