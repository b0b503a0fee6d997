//go:build e2e

package netpol

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/flatnet/flatnet/fixtures/oracle"
	"github.com/flatnet/flatnet/suites/internal/agnhost"
	"github.com/flatnet/flatnet/suites/internal/matrix"
	"github.com/flatnet/flatnet/suites/internal/runenv"
	"github.com/flatnet/flatnet/suites/internal/workload"
	"github.com/flatnet/flatnet/suites/reachability"
)

// benchOnly skips a benchmark unless the label filter selects it: the
// benchmarks are opt-in.
func benchOnly() {
	if f := GinkgoLabelFilter(); f == "" || !Label("bench").MatchesLabelFilter(f) {
		Skip("benchmark: not run by default; select it with --label-filter=bench")
	}
}

// envCount is the positive number in environment variable name, def when it
// is unset.
func envCount(name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	Expect(err == nil && n > 0).To(BeTrue(), "%s=%q: must be a positive number", name, v)
	return n
}

// The benchmark is opt-in: it spends minutes on one kubectl exec per cell.
// Run it with
//
//	bin/ginkgo --tags e2e --label-filter=bench ./suites/netpol
//
// FLATNET_BENCH_WORKERS sets how many kubectl execs run at once (default 1;
// the upstream netpol suite uses 3).
var _ = Describe("matrix probing benchmark", Label("bench"), Serial, func() {
	It("probes the 9x9 TCP matrix on 80 and 81 with one batch exec per source and with one kubectl exec per cell", func(ctx SpecContext) {
		benchOnly()
		workers := envCount("FLATNET_BENCH_WORKERS", 1)
		kubectl := kubectlPath()
		// Default deny + allow, so blocked cells cost a full probe timeout each:
		// every namespace accepts only its own pods, on port 80.
		set := benchDenyAllow()
		_, err := cluster.Policies.Apply(ctx, set)
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(func(ctx SpecContext) {
			_, err := cluster.Policies.Apply(ctx, oracle.PolicySet{})
			Expect(err).NotTo(HaveOccurred())
		})
		snap, err := workload.Take(ctx, cluster.Clientset, namespaces())
		Expect(err).NotTo(HaveOccurred())
		o, err := oracle.New(snap.Cluster, set)
		Expect(err).NotTo(HaveOccurred())
		pods := reachability.ModelEndpoints(model, false)
		plan := matrix.Plan{Title: "bench", From: pods, Views: []matrix.View{{Name: "pod IP", To: pods}},
			Ports: []reachability.PortProtocol{{Port: 80, Protocol: oracle.TCP}, {Port: 81, Protocol: oracle.TCP}}}
		expected, err := matrix.Expect(o, plan)
		Expect(err).NotTo(HaveOccurred())
		cells := len(expected[0].Keys())

		By(fmt.Sprintf("batch: %d cells, one exec per source pod, 5 rounds (the first waits for the policies to be enforced)", cells))
		Eventually(func(ctx context.Context) error {
			observed, err := matrix.Observe(ctx, runner, plan, snap)
			if err != nil {
				return err
			}
			if cmp, err := reachability.Compare("batch", expected[0], observed[0]); err != nil || !cmp.OK() {
				return fmt.Errorf("not enforced yet: %v %s", err, cmp.Summary())
			}
			return nil
		}).WithContext(ctx).WithTimeout(cluster.Settings.EnforceTimeout).Should(Succeed())
		var batchTimes []time.Duration
		for range 5 {
			t0 := time.Now()
			observed, err := matrix.Observe(ctx, runner, plan, snap)
			batchTimes = append(batchTimes, time.Since(t0))
			Expect(err).NotTo(HaveOccurred())
			cmp, err := reachability.Compare("batch", expected[0], observed[0])
			Expect(err).NotTo(HaveOccurred())
			Expect(cmp.OK()).To(BeTrue(), "batch probing disagrees with the oracle: %s", cmp.Summary())
		}
		sort.Slice(batchTimes, func(i, j int) bool { return batchTimes[i] < batchTimes[j] })
		batchMedian := batchTimes[len(batchTimes)/2]

		By(fmt.Sprintf("kubectl exec: one `%s exec ... -- /agnhost connect` per cell, %d at a time", kubectl, workers))
		observed, err := reachability.NewTable("kubectl", expected[0].From, expected[0].To, expected[0].Ports)
		Expect(err).NotTo(HaveOccurred())
		t0 := time.Now()
		Expect(perCell(ctx, kubectl, snap, observed, workers)).To(Succeed())
		perCellTime := time.Since(t0)
		cmp, err := reachability.Compare("kubectl", expected[0], observed)
		Expect(err).NotTo(HaveOccurred())
		Expect(cmp.OK()).To(BeTrue(), "kubectl exec per cell disagrees with the oracle: %s", cmp.Summary())

		blocked := 0
		for _, k := range expected[0].Keys() {
			if c, _ := expected[0].Get(k); !c.Reachable {
				blocked++
			}
		}
		line := fmt.Sprintf("%d-cell TCP matrix, default deny + allow (%d cells blocked, probe timeout %s): batch %s (median of 5, one exec per source), kubectl exec per cell %s (%d worker(s)): %.1fx",
			cells, blocked, cluster.Settings.ProbeTimeout, batchMedian.Round(time.Millisecond), perCellTime.Round(time.Millisecond), workers, perCellTime.Seconds()/batchMedian.Seconds())
		GinkgoWriter.Println(line)
		fmt.Fprintln(os.Stderr, line)
		AddReportEntry("matrix probing benchmark", line)
	})
})

// benchDenyAllow isolates every namespace of the model for ingress and lets in
// only its own pods, on TCP 80.
func benchDenyAllow() oracle.PolicySet {
	var set oracle.PolicySet
	port := intstr.FromInt32(80)
	tcp := corev1.ProtocolTCP
	for _, ns := range namespaces() {
		set.NetworkPolicies = append(set.NetworkPolicies, networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "bench-same-namespace-80"},
			Spec: networkingv1.NetworkPolicySpec{
				PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
				Ingress: []networkingv1.NetworkPolicyIngressRule{{
					From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{}}},
					Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &port}},
				}},
			},
		})
	}
	return set
}

// kubectlPath is the repository's pinned kubectl, or the one on PATH.
func kubectlPath() string {
	if wd, err := os.Getwd(); err == nil {
		if root, err := runenv.RepoRoot(wd); err == nil {
			if p := filepath.Join(root, "bin", "kubectl"); fileExists(p) {
				return p
			}
		}
	}
	p, err := exec.LookPath("kubectl")
	Expect(err).NotTo(HaveOccurred(), "no kubectl: run `make tools` (bin/kubectl) or put one on PATH")
	return p
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// perCell fills t with one `kubectl exec` of agnhost connect per cell, as
// the upstream suite probes, workers at a time.
func perCell(ctx context.Context, kubectl string, snap workload.Snapshot, t *reachability.Table, workers int) error {
	keys := t.Keys()
	jobs := make(chan reachability.Key)
	var mu sync.Mutex
	var errs []error
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range jobs {
				cell, err := kubectlConnect(ctx, kubectl, snap, k)
				mu.Lock()
				if err == nil {
					err = t.Set(k, cell)
				}
				if err != nil {
					errs = append(errs, err)
				}
				mu.Unlock()
			}
		}()
	}
	for _, k := range keys {
		jobs <- k
	}
	close(jobs)
	wg.Wait()
	return errors.Join(errs...)
}

func kubectlConnect(ctx context.Context, kubectl string, snap workload.Snapshot, k reachability.Key) (reachability.Cell, error) {
	from, to := peerOf(k.From), peerOf(k.To)
	ip, ok := snap.PodIPs[to.String()]
	if !ok {
		return reachability.Cell{}, fmt.Errorf("%s: no pod IP for %s", k, to)
	}
	target := fmt.Sprintf("%s:%d", ip, k.Port)
	cmd := exec.CommandContext(ctx, kubectl, "exec", "-n", from.Namespace, from.Name, "-c", snap.ExecContainers[from.String()], "--",
		"/agnhost", "connect", target, "--timeout="+cluster.Settings.ProbeTimeout.String(), "--protocol=tcp")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	a := agnhost.Answer{}
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			return reachability.Cell{}, fmt.Errorf("%s: %w", k, err)
		}
		a.ExitCode = ee.ExitCode()
	}
	a.Stdout, a.Stderr = stdout.String(), stderr.String()
	reachable, word, err := agnhost.Judge(a)
	if err != nil {
		return reachability.Cell{}, fmt.Errorf("%s: kubectl exec: %w", k, err)
	}
	return reachability.Cell{Reachable: reachable, Detail: word + " " + target}, nil
}

// peerOf reads a model label "x/a" back as its pod.
func peerOf(label string) oracle.Peer {
	for _, r := range model.AllPods() {
		if r.String() == label {
			return model.Peer(r)
		}
	}
	Fail("no model pod labelled " + label)
	return oracle.Peer{}
}
