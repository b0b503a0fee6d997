//go:build e2e

// Package ipam checks flatnet's node-subnet networking on the kind cluster:
// every node Ready with the agent running, pods reachable across nodes, from
// nodes and through Services with no overlay, every pod address inside the
// node subnet and its node's IPBlock, and no address leaked after churn.
package ipam

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/flatnet/flatnet/dataplane/ipam"
	"github.com/flatnet/flatnet/dataplane/ipam/cluster"
	"github.com/flatnet/flatnet/fixtures/topology"
	"github.com/flatnet/flatnet/probes/podexec"
	"github.com/flatnet/flatnet/suites/framework"
	"github.com/flatnet/flatnet/suites/internal/workload"
)

func TestIPAM(t *testing.T) { kc.Run(t) }

// ns is the process's own namespace: make e2e runs the disruptive spec in a
// process of its own, beside the others.
var ns = fmt.Sprintf("flatnet-ipam-%04x", time.Now().UnixNano()&0xffff)

var (
	// Privileged: the host-network client reads its node's routes.
	kc    = framework.New("ipam", framework.Options{Settings: true, PodSecurity: framework.PodSecurityPrivileged})
	nodes []corev1.Node
)

var _ = kc.BeforeSuite(func(ctx SpecContext) {
	nl, err := kc.Clientset.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	Expect(err).NotTo(HaveOccurred(), "list the cluster's nodes")
	nodes = nl.Items
	Expect(len(nodes)).To(BeNumerically(">=", 2), "the suite needs two nodes to cross")
	Expect(kc.CreateNamespace(ctx, corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})).To(Succeed())
})

func pod(name, node string, hostNetwork bool, labels map[string]string, cmd ...string) corev1.Pod {
	zero := int64(0)
	return workload.Prepare(corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels},
		Spec: corev1.PodSpec{
			NodeName: node, HostNetwork: hostNetwork, TerminationGracePeriodSeconds: &zero,
			Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
			Containers:  []corev1.Container{{Name: "c", Image: kc.Settings.ProbeImage, Command: cmd}},
		},
	})
}

// connect runs agnhost's connect in a pod: nil when the TCP connection succeeds.
func connect(ctx context.Context, from corev1.Pod, target string) error {
	var out, errOut bytes.Buffer
	err := kc.Exec.Exec(ctx, podexec.Pod{Namespace: from.Namespace, Name: from.Name, Container: "c"},
		[]string{topology.ProbeBinary, "connect", target, "--timeout=3s", "--protocol=tcp"}, nil, &out, &errOut)
	if err != nil || strings.TrimSpace(out.String()) != "" {
		return fmt.Errorf("connect %s from %s: %v %q %q", target, from.Name, err, out.String(), errOut.String())
	}
	return nil
}

// blocks returns the IPBlocks by node.
func blocks(ctx context.Context) map[string][]cluster.IPBlock {
	all, err := cluster.New(kc.Dynamic).List(ctx)
	Expect(err).NotTo(HaveOccurred())
	by := map[string][]cluster.IPBlock{}
	for _, b := range all {
		by[b.Spec.Node] = append(by[b.Spec.Node], b)
	}
	return by
}

var _ = Describe("node-subnet networking [flatnet]", Label("flatnet", "ipam"), Ordered, func() {
	It("has every node Ready with the flatnet agent ready on it and a block of its own", func(ctx SpecContext) {
		// After a host restart the DaemonSet's status can be stale: wait for
		// the Nodes and the agent pods themselves, and say what is missing.
		start := time.Now()
		Eventually(func() error { return agentsReady(ctx, start) }).WithContext(ctx).
			WithTimeout(3 * time.Minute).WithPolling(3 * time.Second).Should(Succeed())
		by := blocks(ctx)
		var all []cluster.IPBlock
		for _, n := range nodes {
			Expect(by[n.Name]).NotTo(BeEmpty(), "node %s owns no IPBlock", n.Name)
			b, err := by[n.Name][0].Block()
			Expect(err).NotTo(HaveOccurred())
			Expect(int64(b.Size)).To(Equal(n.Status.Capacity.Pods().Value()), "node %s: block size vs the kubelet's maxPods", n.Name)
			Expect(by[n.Name][0].Annotations).To(HaveKeyWithValue(cluster.ClaimAnnotation, "confirmed"),
				"node %s: block %s was not confirmed after its claim (the agent's update of the IPBlock failed?)", n.Name, by[n.Name][0].Name)
			for _, o := range all {
				ob, _ := o.Block()
				Expect(b.Overlaps(ob)).To(BeFalse(), "%s overlaps %s", by[n.Name][0].Name, o.Name)
			}
			all = append(all, by[n.Name][0])
		}
	})

	var servers, clients []corev1.Pod
	var hostClient corev1.Pod
	It("gives every pod an address of the node subnet inside its node's block", func(ctx SpecContext) {
		var keys []workload.Key
		for i, n := range nodes[:2] {
			servers = append(servers, pod(fmt.Sprintf("server-%d", i), n.Name, false, map[string]string{"app": "ipam-server"},
				topology.ProbeBinary, "serve-hostname", "--tcp", "--http=false", "--port", "80"))
			clients = append(clients, pod(fmt.Sprintf("client-%d", i), n.Name, false, nil, topology.ProbeBinary, "pause"))
		}
		hostClient = pod("host-client", nodes[1].Name, true, nil, topology.ProbeBinary, "pause")
		all := append(append(slices.Clone(servers), clients...), hostClient)
		Expect(workload.CreatePods(ctx, kc.Clientset, all)).To(Succeed())
		Expect(workload.CreateServices(ctx, kc.Clientset, []corev1.Service{{
			ObjectMeta: metav1.ObjectMeta{Name: "ipam-server", Namespace: ns},
			Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "ipam-server"},
				Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(80), Protocol: corev1.ProtocolTCP}}},
		}})).To(Succeed())
		for _, p := range all {
			keys = append(keys, workload.Key{Namespace: ns, Name: p.Name})
		}
		Expect(workload.WaitPodsReady(ctx, kc.Clientset, keys, 3*time.Minute)).To(Succeed())
		Expect(workload.WaitServiceEndpoints(ctx, kc.Clientset, []workload.Key{{Namespace: ns, Name: "ipam-server"}}, 2*time.Minute)).To(Succeed())
		// Refresh with their addresses.
		for _, list := range []*[]corev1.Pod{&servers, &clients} {
			for i, p := range *list {
				got, err := kc.Clientset.CoreV1().Pods(ns).Get(ctx, p.Name, metav1.GetOptions{})
				Expect(err).NotTo(HaveOccurred())
				(*list)[i] = *got
			}
		}
		Expect(podsInTheirBlocks(ctx)).To(Succeed())
	})

	It("reaches pods across nodes, from another node and through a Service, with no routes on other nodes", func(ctx SpecContext) {
		for _, c := range clients {
			for _, s := range servers {
				Expect(connect(ctx, c, s.Status.PodIP+":80")).To(Succeed(), "%s (on %s) -> %s (on %s)", c.Name, c.Spec.NodeName, s.Name, s.Spec.NodeName)
			}
		}
		Expect(connect(ctx, hostClient, servers[0].Status.PodIP+":80")).To(Succeed(), "node %s -> pod on %s", nodes[1].Name, nodes[0].Name)
		svc, err := kc.Clientset.CoreV1().Services(ns).Get(ctx, "ipam-server", metav1.GetOptions{})
		Expect(err).NotTo(HaveOccurred())
		// kube-proxy programs a new Service asynchronously (slower on nodes that
		// just came back): REFUSED until it has; then every try must connect.
		for _, c := range clients {
			Eventually(func() error { return connect(ctx, c, svc.Spec.ClusterIP+":80") }).WithContext(ctx).
				WithTimeout(time.Minute).WithPolling(time.Second).Should(Succeed(), "%s -> Service %s: kube-proxy never programmed it", c.Name, svc.Spec.ClusterIP)
		}
		for _, c := range clients {
			for range 3 { // several tries land on backends of both nodes
				Expect(connect(ctx, c, svc.Spec.ClusterIP+":80")).To(Succeed(), "%s -> Service %s", c.Name, svc.Spec.ClusterIP)
			}
		}
		// The host-network client's node has no route for the remote pod: only the subnet's.
		var out, errOut bytes.Buffer
		err = kc.Exec.Exec(ctx, podexec.Pod{Namespace: ns, Name: hostClient.Name, Container: "c"},
			[]string{"cat", "/proc/net/route"}, nil, &out, &errOut)
		Expect(err).NotTo(HaveOccurred(), "read the node's routes: %s", errOut.String())
		Expect(out.String()).To(ContainSubstring("Destination"))
		ip := netip.MustParseAddr(servers[0].Status.PodIP).As4()
		hex := fmt.Sprintf("%02X%02X%02X%02X", ip[3], ip[2], ip[1], ip[0]) // /proc/net/route is little-endian
		Expect(out.String()).NotTo(ContainSubstring(hex), "node %s has a route naming %s", nodes[1].Name, servers[0].Status.PodIP)
	})

	// disruptive: its rounds fill pod capacity, so a pod another suite pins to a node
	// meanwhile would be refused (OutOfpods). On a cluster with a disruptive lane
	// node, each round fills that node's block, free of other suites' pods; elsewhere
	// make e2e runs it alone, after the suites that run side by side, with rounds of
	// 50 pods wherever the scheduler puts them.
	It("hands out pods in 4 rounds, each filling the lane node's block or 50 pods, without a duplicate or a leak", Label("disruptive"), func(ctx SpecContext) {
		const rounds = 4
		lane, err := kc.DisruptiveNode(ctx)
		Expect(err).NotTo(HaveOccurred())
		perRound := 50
		if lane != "" {
			rooms, err := workload.PodRoom(ctx, kc.Clientset)
			Expect(err).NotTo(HaveOccurred())
			i := slices.IndexFunc(rooms, func(r workload.NodeRoom) bool { return r.Node.Name == lane })
			Expect(i).To(BeNumerically(">=", 0), "node %s is not listed", lane)
			perRound = rooms[i].Free()
			Expect(perRound).To(BeNumerically(">=", 10), "node %s has room for %d pods only", lane, perRound)
			GinkgoWriter.Printf("  rounds of %d pods on node %s (its free pod capacity)\n", perRound, lane)
		}
		seen := 0
		for r := range rounds {
			var batch []corev1.Pod
			var keys []workload.Key
			for i := range perRound {
				p := pod(fmt.Sprintf("churn-%d-%d", r, i), "", false, map[string]string{"churn": "1"}, topology.ProbeBinary, "pause")
				if lane != "" {
					// By the scheduler, which never places more than the node's room.
					p.Spec.NodeSelector = map[string]string{corev1.LabelHostname: lane}
				}
				batch = append(batch, p)
				keys = append(keys, workload.Key{Namespace: ns, Name: p.Name})
			}
			began := time.Now()
			Expect(workload.CreatePods(ctx, kc.Clientset, batch)).To(Succeed())
			Expect(workload.WaitPodsReady(ctx, kc.Clientset, keys, 5*time.Minute)).To(Succeed(), "round %d", r)
			ready := time.Since(began)
			Expect(podsInTheirBlocks(ctx)).To(Succeed(), "round %d", r)
			seen += perRound
			Expect(kc.Clientset.CoreV1().Pods(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{LabelSelector: "churn=1"})).To(Succeed())
			// Polled often (one List each time): the next round starts as soon as the last pod is gone.
			Eventually(func(g Gomega) {
				pl, err := kc.Clientset.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "churn=1"})
				g.Expect(err).NotTo(HaveOccurred())
				var left []string
				for _, p := range pl.Items {
					left = append(left, p.Name+" on "+p.Spec.NodeName+" ("+string(p.Status.Phase)+")")
				}
				g.Expect(left).To(BeEmpty(), "round %d: churn pods still present after their deletion", r)
			}).WithTimeout(5 * time.Minute).WithPolling(250 * time.Millisecond).Should(Succeed())
			GinkgoWriter.Printf("  round %d: %d pods Ready %s after their creation, all gone %s after that\n", r+1, perRound, ready.Round(100*time.Millisecond), (time.Since(began) - ready).Round(100*time.Millisecond))
		}
		Expect(seen).To(Equal(rounds*perRound), "pods created over the rounds")
		// Every block's allocations are exactly the live pods on its node: the lane
		// node's only when there is one (other suites' pods come and go elsewhere).
		Eventually(func(g Gomega) {
			live := map[string]string{} // ip -> node
			pl, err := kc.Clientset.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
			g.Expect(err).NotTo(HaveOccurred())
			for _, p := range pl.Items {
				if !p.Spec.HostNetwork && p.Status.PodIP != "" && p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed &&
					(lane == "" || p.Spec.NodeName == lane) {
					live[p.Status.PodIP] = p.Spec.NodeName
				}
			}
			held := map[string]string{}
			for node, bs := range blocks(ctx) {
				if lane != "" && node != lane {
					continue
				}
				for _, b := range bs {
					for _, a := range b.Status.Allocations {
						held[a.IP] = node
					}
				}
			}
			g.Expect(held).To(Equal(live), "addresses held by the blocks vs addresses of live pods")
		}).WithTimeout(2 * time.Minute).WithPolling(time.Second).Should(Succeed())
	})
})

var _ = Describe("cluster IPAM on the real API server [flatnet]", Label("flatnet", "ipam"), func() {
	// Nodes with different maxPods claim blocks of different sizes whose
	// names differ although their addresses may overlap; the claim protocol
	// must keep them apart under the API server's own semantics. A subnet no
	// node uses keeps the cluster's blocks out of it.
	It("gives 24 nodes of 7 block sizes joining at once disjoint, confirmed blocks", func(ctx SpecContext) {
		subnet := netip.MustParsePrefix("10.255.0.0/16")
		sizes := []int{10, 17, 30, 50, 64, 110, 250}
		const claimers = 24
		c := cluster.New(kc.Dynamic)
		names := make([]string, claimers)
		for i := range names {
			names[i] = fmt.Sprintf("flatnet-ipam-suite-%d", i)
		}
		DeferCleanup(func(ctx SpecContext) {
			for _, n := range names {
				_, err := c.ReleaseNodeBlocks(ctx, n)
				Expect(err).NotTo(HaveOccurred(), "release the test blocks of %s", n)
			}
		})
		got := make([]cluster.IPBlock, claimers)
		errs := make([]error, claimers)
		var wg sync.WaitGroup
		for i := range claimers {
			l := ipam.Layout{Subnet: subnet, Gateway: netip.MustParseAddr("10.255.0.1"), BlockSize: sizes[i%len(sizes)]}
			wg.Go(func() { got[i], _, errs[i] = c.EnsureNodeBlock(ctx, l, names[i], nil) })
		}
		wg.Wait()
		for i, err := range errs {
			Expect(err).NotTo(HaveOccurred(), "claim of %s (block size %d)", names[i], sizes[i%len(sizes)])
		}
		all, err := c.List(ctx)
		Expect(err).NotTo(HaveOccurred(), "list IPBlocks")
		var mine []cluster.IPBlock
		for _, b := range all {
			if b.Spec.Subnet == subnet.String() {
				mine = append(mine, b)
			}
		}
		Expect(mine).To(HaveLen(claimers), "IPBlocks left in %s for %d claimers (a loser's block not given up?)", subnet, claimers)
		for i, b := range mine {
			bb, err := b.Block()
			Expect(err).NotTo(HaveOccurred(), "block %s", b.Name)
			Expect(b.Annotations).To(HaveKeyWithValue(cluster.ClaimAnnotation, "confirmed"), "block %s of %s", b.Name, b.Spec.Node)
			for _, o := range mine[:i] {
				ob, _ := o.Block()
				Expect(bb.Overlaps(ob)).To(BeFalse(), "%s's block %s (%s) overlaps %s's %s (%s)", b.Spec.Node, b.Name, bb, o.Spec.Node, o.Name, ob)
			}
		}
	})
})

// agentsReady refreshes nodes and is nil when every node is Ready and runs a
// Ready flatnet agent pod; otherwise it says, per node, what is missing.
func agentsReady(ctx context.Context, start time.Time) error {
	nl, err := kc.Clientset.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list nodes: %w", err)
	}
	pl, err := kc.Clientset.CoreV1().Pods(framework.AgentNamespace).List(ctx, metav1.ListOptions{LabelSelector: framework.AgentSelector})
	if err != nil {
		return fmt.Errorf("list the flatnet agent pods: %w", err)
	}
	nodes = nl.Items
	ready, states := 0, []string{}
	for _, n := range nl.Items {
		nodeReady := slices.ContainsFunc(n.Status.Conditions, func(c corev1.NodeCondition) bool {
			return c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue
		})
		agent := "no agent pod"
		agentReady := false
		for _, p := range pl.Items {
			if p.Spec.NodeName != n.Name {
				continue
			}
			agentReady = p.DeletionTimestamp == nil && slices.ContainsFunc(p.Status.Conditions, func(c corev1.PodCondition) bool {
				return c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue
			})
			agent = fmt.Sprintf("agent %s %s ready=%v%s", p.Name, p.Status.Phase, agentReady, containerStates(p))
		}
		if nodeReady && agentReady {
			ready++
		}
		states = append(states, fmt.Sprintf("node %s Ready=%v, %s", n.Name, nodeReady, agent))
	}
	if ready < 2 || ready != len(nl.Items) {
		return fmt.Errorf("agents ready on %d of %d nodes after %s: %s", ready, len(nl.Items), time.Since(start).Round(time.Second), strings.Join(states, "; "))
	}
	return nil
}

// containerStates names the waiting or terminated containers of p and their restarts.
func containerStates(p corev1.Pod) string {
	var s string
	for _, c := range p.Status.ContainerStatuses {
		switch {
		case c.State.Waiting != nil:
			s += fmt.Sprintf(", %s waiting %s %s", c.Name, c.State.Waiting.Reason, c.State.Waiting.Message)
		case c.State.Terminated != nil:
			s += fmt.Sprintf(", %s terminated %s (exit %d)", c.Name, c.State.Terminated.Reason, c.State.Terminated.ExitCode)
		}
		if c.RestartCount > 0 {
			s += fmt.Sprintf(", %s restarted %d times", c.Name, c.RestartCount)
		}
	}
	return s
}

// podsInTheirBlocks: every pod with its own address has one inside the node
// subnet and inside an IPBlock of its node, and no two pods share one.
func podsInTheirBlocks(ctx context.Context) error {
	by := blocks(ctx)
	pl, err := kc.Clientset.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	owner := map[string]string{}
	for _, p := range pl.Items {
		if p.Spec.HostNetwork || p.Status.PodIP == "" {
			continue
		}
		ip, err := netip.ParseAddr(p.Status.PodIP)
		if err != nil {
			return fmt.Errorf("pod %s/%s: address %q: %w", p.Namespace, p.Name, p.Status.PodIP, err)
		}
		if !kc.Settings.NodeSubnet.Contains(ip) {
			return fmt.Errorf("pod %s/%s: %s is outside the node subnet %s", p.Namespace, p.Name, ip, kc.Settings.NodeSubnet)
		}
		in := slices.ContainsFunc(by[p.Spec.NodeName], func(b cluster.IPBlock) bool {
			bb, err := b.Block()
			return err == nil && bb.Contains(ip)
		})
		if !in {
			return fmt.Errorf("pod %s/%s: %s is outside every block of its node %s", p.Namespace, p.Name, ip, p.Spec.NodeName)
		}
		if o, dup := owner[p.Status.PodIP]; dup {
			return fmt.Errorf("pods %s and %s/%s share %s", o, p.Namespace, p.Name, ip)
		}
		owner[p.Status.PodIP] = p.Namespace + "/" + p.Name
	}
	return nil
}
