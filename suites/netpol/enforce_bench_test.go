//go:build e2e

package netpol

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/flatnet/flatnet/fixtures/oracle"
	"github.com/flatnet/flatnet/probes/podexec"
	"github.com/flatnet/flatnet/suites/internal/workload"
)

// The apply -> enforcement benchmark is opt-in like the matrix one:
//
//	bin/ginkgo --tags e2e --label-filter=bench --focus=enforcement ./suites/netpol
//
// Each round starts `probe watch` in one client pod per server pod of x (clients in
// y, on another node where there is one), waits until every watch is READY, applies
// a default-deny ingress policy on x and takes, as that round's latency, the
// latest instant any watch saw its first new connection dropped, minus the instant
// just before the API call; then deletes the policy and times the way back the same
// way. Rounds alternate NetworkPolicy and CiliumNetworkPolicy. Pods share the host's
// clock, so the instants compare. FLATNET_BENCH_APPLIES sets the rounds (default 50).
// FLATNET_BENCH_BACKGROUND=N keeps N more NetworkPolicies in force throughout
// (default 0): each isolates namespace z's pods and opens one more port to
// namespace y, so every agent running a z pod holds N rules beside the ones
// timed (issue 20: enforced p99 with 1,000 policies present). They are
// created once before the first round and deleted after the last.
// FLATNET_BENCH_PODS=N keeps N more pods present (enforce_pods_test.go).
// FLATNET_BENCH_TRACE=1 breaks each round down to each node's policy map swap
// (enforce_trace_test.go).
var _ = Describe("apply to enforcement benchmark", Label("bench"), Serial, func() {
	It("times kubectl apply/delete of a policy to enforcement on every node", func(ctx SpecContext) {
		benchOnly()
		rounds := envCount("FLATNET_BENCH_APPLIES", 50)
		x, y, z := model.Namespace("x"), model.Namespace("y"), model.Namespace("z")
		background := backgroundPolicies(z, y, envCountOrZero("FLATNET_BENCH_BACKGROUND"))
		present := envCountOrZero("FLATNET_BENCH_PODS")
		if present > 0 {
			Expect(benchPodsRoom(ctx, cluster.Clientset, present)).To(Succeed())
			ns := model.Namespace("present")
			By(fmt.Sprintf("%d pause pods present in %s", present, ns))
			Expect(cluster.CreateNamespace(ctx, corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})).To(Succeed())
			DeferCleanup(func(ctx SpecContext) { Expect(cluster.DeleteNamespaces(ctx, ns)).To(Succeed()) })
			Expect(createBenchPods(ctx, cluster.Clientset, ns, cluster.Settings.ProbeImage, present)).To(Succeed())
		}
		if n := len(background.NetworkPolicies); n > 0 {
			By(fmt.Sprintf("%d background NetworkPolicies in %s", n, z))
			DeferCleanup(func(ctx SpecContext) {
				_, err := cluster.Policies.Apply(ctx, oracle.PolicySet{})
				Expect(err).NotTo(HaveOccurred())
			})
		}
		_, err := cluster.Policies.Apply(ctx, background)
		Expect(err).NotTo(HaveOccurred())
		snap, err := workload.Take(ctx, cluster.Clientset, namespaces())
		Expect(err).NotTo(HaveOccurred())

		pairs := benchPairs(snap.Cluster, x, y)
		Expect(pairs).NotTo(BeEmpty(), "no server pods in %s", x)
		nodes := map[string]bool{}
		for _, p := range pairs {
			nodes[p.server.Node] = true
		}
		sets := map[string]oracle.PolicySet{"NetworkPolicy": withBackground(denyNP(x), background), "CiliumNetworkPolicy": withBackground(denyCNP(x), background)}
		for kind, set := range sets {
			checkOracle(snap.Cluster, background, pairs, true, "no policy")
			checkOracle(snap.Cluster, set, pairs, false, kind)
		}
		ex := cluster.Exec
		// The rounds start from every path open. Right after the policies of an
		// earlier spec are deleted they may still be enforced for a while (on
		// Cilium v1.20.2 lifting a deny took 1-2 s here), and a watch whose first
		// attempt times out stops as NOT-open: wait for the paths instead.
		By("waiting until every watched path is open")
		Eventually(func(ctx context.Context) error { return allOpen(ctx, ex, snap, pairs) }).
			WithContext(ctx).WithTimeout(cluster.Settings.EnforceTimeout).WithPolling(time.Second).Should(Succeed())
		By(fmt.Sprintf("%d rounds; %d server pods on %d node(s), each watched from a client", rounds, len(pairs), len(nodes)))

		events, err := watchPolicy(ctx, cluster.Clientset, cluster.Dynamic, x, "bench-deny")
		Expect(err).NotTo(HaveOccurred())
		maps, err := traceMaps(ctx, pairs)
		Expect(err).NotTo(HaveOccurred())
		if maps != nil {
			DeferCleanup(func() { Expect(maps.Stop()).To(Succeed(), "tracing the agents' policy maps") })
		}
		applied, deleted := newBreakdown(), newBreakdown()

		var applyTimes, deleteTimes []time.Duration
		byKind := map[string][]time.Duration{}
		for i := range rounds {
			kind := "NetworkPolicy"
			if i%2 == 1 {
				kind = "CiliumNetworkPolicy"
			}
			r, err := timeChange(ctx, ex, snap, pairs, "blocked", func() error { _, err := cluster.Policies.Apply(ctx, sets[kind]); return err })
			Expect(err).NotTo(HaveOccurred(), "round %d: applying the %s", i, kind)
			applied.record(r, events, maps, pairs)
			d := r.latency()
			applyTimes = append(applyTimes, d)
			byKind[kind] = append(byKind[kind], d)
			r, err = timeChange(ctx, ex, snap, pairs, "open", func() error { _, err := cluster.Policies.Apply(ctx, background); return err })
			Expect(err).NotTo(HaveOccurred(), "round %d: deleting the %s", i, kind)
			deleted.record(r, events, maps, pairs)
			deleteTimes = append(deleteTimes, r.latency())
			if (i+1)%10 == 0 {
				fmt.Fprintf(os.Stderr, "enforcement benchmark: %d/%d rounds\n", i+1, rounds)
			}
		}
		var with []string
		if n := len(background.NetworkPolicies); n > 0 {
			with = append(with, fmt.Sprintf("%d background policies", n))
		}
		if present > 0 {
			with = append(with, fmt.Sprintf("%d more pods", present))
		}
		withText := ""
		if len(with) > 0 {
			withText = " with " + strings.Join(with, " and ")
		}
		lines := []string{
			fmt.Sprintf("apply -> enforced on %d node(s), %d applies%s: %s", len(nodes), len(applyTimes), withText, percentiles(applyTimes)),
			fmt.Sprintf("delete -> lifted on %d node(s), %d deletes%s: %s", len(nodes), len(deleteTimes), withText, percentiles(deleteTimes)),
		}
		for _, kind := range []string{"NetworkPolicy", "CiliumNetworkPolicy"} {
			lines = append(lines, fmt.Sprintf("  %s applies: %s", kind, percentiles(byKind[kind])))
		}
		lines = append(lines, applied.table("apply -> enforced"), deleted.table("delete -> lifted"))
		for _, l := range lines {
			GinkgoWriter.Println(l)
			fmt.Fprintln(os.Stderr, l)
		}
		AddReportEntry("apply to enforcement benchmark", strings.Join(lines, "\n"))
	})
})

type benchPair struct{ client, server oracle.Pod }

// watchInterval is how often each watch starts a new connection.
const watchInterval = 5 * time.Millisecond

// envCountOrZero is envCount with 0 when name is unset or 0 (make bench passes
// ENFORCE_PODS=0 and BACKGROUND=0 as they are).
func envCountOrZero(name string) int {
	if v := os.Getenv(name); v == "" || v == "0" {
		return 0
	}
	return envCount(name, 0)
}

// backgroundPolicies is n NetworkPolicies in namespace ns, each isolating all
// of its pods for ingress and letting in pods of namespace from on one TCP port
// of its own (10000+i): n rules on every agent running one of ns's pods.
func backgroundPolicies(ns, from string, n int) oracle.PolicySet {
	var set oracle.PolicySet
	tcp := corev1.ProtocolTCP
	for i := range n {
		port := intstr.FromInt32(int32(10000 + i))
		set.NetworkPolicies = append(set.NetworkPolicies, networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("bench-background-%04d", i)},
			Spec: networkingv1.NetworkPolicySpec{
				PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
				Ingress: []networkingv1.NetworkPolicyIngressRule{{
					From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{
						MatchLabels: map[string]string{"kubernetes.io/metadata.name": from}}}},
					Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &port}},
				}},
			},
		})
	}
	return set
}

// withBackground is set plus the background policies.
func withBackground(set, background oracle.PolicySet) oracle.PolicySet {
	set.NetworkPolicies = append(slices.Clone(background.NetworkPolicies), set.NetworkPolicies...)
	return set
}

// benchPairs gives every pod of namespace srv a client in namespace cli, on
// another node when one exists, so the watch crosses the flat network.
func benchPairs(c oracle.Cluster, srv, cli string) []benchPair {
	var servers, clients []oracle.Pod
	for _, p := range c.Pods {
		switch p.Namespace {
		case srv:
			servers = append(servers, p)
		case cli:
			clients = append(clients, p)
		}
	}
	var out []benchPair
	for i, s := range servers {
		if len(clients) == 0 {
			break
		}
		pick := clients[i%len(clients)]
		for _, c := range clients {
			if c.Node != s.Node {
				pick = c
				break
			}
		}
		out = append(out, benchPair{client: pick, server: s})
	}
	return out
}

func denyNP(ns string) oracle.PolicySet {
	return oracle.PolicySet{NetworkPolicies: []networkingv1.NetworkPolicy{{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "bench-deny"},
		Spec:       networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}},
	}}}
}

func denyCNP(ns string) oracle.PolicySet {
	return oracle.PolicySet{CiliumPolicies: []oracle.CiliumPolicy{{
		APIVersion: "cilium.io/v2", Kind: oracle.KindCNP,
		Metadata: oracle.CiliumObjectMeta{Namespace: ns, Name: "bench-deny"},
		Spec:     &oracle.CiliumRule{Ingress: []oracle.CiliumIngressRule{{}}},
	}}}
}

// checkOracle holds the benchmark's premise to the oracle: every watched path is
// open without the policy and blocked with it.
func checkOracle(c oracle.Cluster, set oracle.PolicySet, pairs []benchPair, open bool, what string) {
	o, err := oracle.New(c, set)
	Expect(err).NotTo(HaveOccurred())
	for _, p := range pairs {
		v, err := o.Decide(oracle.PodPeer(p.client.Namespace, p.client.Name), oracle.PodPeer(p.server.Namespace, p.server.Name), 80, oracle.TCP)
		Expect(err).NotTo(HaveOccurred())
		Expect(v.Allowed).To(Equal(open), "oracle, %s: %s -> %s:80", what, p.client.Ref(), p.server.Ref())
	}
}

// allOpen connects once over every pair's path; an error names the first
// that did not connect.
func allOpen(ctx context.Context, ex podexec.Executor, snap workload.Snapshot, pairs []benchPair) error {
	for _, p := range pairs {
		pod := podexec.Pod{Namespace: p.client.Namespace, Name: p.client.Name, Container: snap.ExecContainers[p.client.Ref()]}
		var out strings.Builder
		cmd := []string{"/probe", "connect", fmt.Sprintf("%s:80", p.server.IP), "--timeout=1s"}
		if err := ex.Exec(ctx, pod, cmd, nil, &out, &out); err != nil {
			return fmt.Errorf("%s -> %s:80 not open yet: %v %s", p.client.Ref(), p.server.Ref(), err, strings.TrimSpace(out.String()))
		}
	}
	return nil
}

// timeChange runs one watch per pair until every one is READY, calls change,
// and returns the instants before and after the call and each watch's CHANGED.
func timeChange(ctx context.Context, ex podexec.Executor, snap workload.Snapshot, pairs []benchPair, until string, change func() error) (roundTimes, error) {
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	type result struct {
		server string
		at     time.Time
		err    error
	}
	ready := make(chan error, len(pairs))
	done := make(chan result, len(pairs))
	for _, p := range pairs {
		pod := podexec.Pod{Namespace: p.client.Namespace, Name: p.client.Name, Container: snap.ExecContainers[p.client.Ref()]}
		cmd := []string{"/probe", "watch", fmt.Sprintf("%s:80", p.server.IP), "--until=" + until,
			"--interval=" + watchInterval.String(), "--timeout=300ms", "--confirm=3", "--deadline=60s"}
		go func() {
			pr, pw := io.Pipe()
			var stderr strings.Builder
			go func() {
				pw.CloseWithError(ex.Exec(ctx, pod, cmd, nil, pw, &stderr))
			}()
			lines := bufio.NewScanner(pr)
			var once sync.Once
			signal := func(err error) { once.Do(func() { ready <- err }) }
			var at time.Time
			var err error
			for lines.Scan() {
				f := strings.Fields(lines.Text())
				switch {
				case len(f) >= 2 && f[0] == "READY":
					signal(nil)
				case len(f) >= 2 && f[0] == "CHANGED":
					at, err = time.Parse(time.RFC3339Nano, f[1])
				}
			}
			if serr := lines.Err(); serr != nil || at.IsZero() && err == nil {
				err = fmt.Errorf("watch in %s -> %s:80 (until %s): %v %s", pod, p.server.Ref(), until, serr, strings.TrimSpace(stderr.String()))
			}
			signal(err)
			done <- result{p.server.Ref(), at, err}
		}()
	}
	for range pairs {
		if err := <-ready; err != nil {
			cancel()
			return roundTimes{}, err
		}
	}
	r := roundTimes{t0: time.Now(), changed: map[string]time.Time{}}
	if err := change(); err != nil {
		cancel()
		return roundTimes{}, err
	}
	r.api = time.Now()
	for range pairs {
		res := <-done
		if res.err != nil {
			return roundTimes{}, res.err
		}
		// A watch may start its first attempt in the new state a hair before t0
		// (its packet met the new policy after all); never more than one interval.
		if res.at.Before(r.t0.Add(-watchInterval)) {
			return roundTimes{}, fmt.Errorf("the path to %s became %s %s before the change was made: something else changed it", res.server, until, r.t0.Sub(res.at))
		}
		r.changed[res.server] = res.at
	}
	return r, nil
}

// latency is the round's figure: the latest CHANGED minus t0.
func (r roundTimes) latency() time.Duration {
	var latest time.Time
	for _, at := range r.changed {
		latest = later(latest, at)
	}
	return max(latest.Sub(r.t0), 0)
}

func percentiles(ds []time.Duration) string {
	if len(ds) == 0 {
		return "no samples"
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	at := func(q float64) time.Duration { return s[min(len(s)-1, int(q*float64(len(s))))] }
	return fmt.Sprintf("p50 %s, p90 %s, p99 %s, max %s", at(0.50).Round(time.Millisecond), at(0.90).Round(time.Millisecond),
		at(0.99).Round(time.Millisecond), s[len(s)-1].Round(time.Millisecond))
}
