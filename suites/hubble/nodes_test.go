//go:build e2e

package hubble

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	relaypb "github.com/cilium/cilium/api/v1/relay"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"google.golang.org/protobuf/encoding/protojson"
	corev1 "k8s.io/api/core/v1"

	"github.com/flatnet/flatnet/fixtures/oracle"
	"github.com/flatnet/flatnet/suites/framework"
	"github.com/flatnet/flatnet/suites/internal/hubblecli"
)

// every-node: it holds every node connected (make e2e runs it in the disruptive
// lane, beside no disruption).
var _ = Describe("hubble status and nodes through the relay", Label("hubble", "every-node"), Ordered, func() {
	It("hubble status shows every node connected and hubble list nodes lists them", func(ctx SpecContext) {
		names := clusterNodes(ctx)
		st := awaitAllConnected(ctx)
		GinkgoWriter.Printf("  status: %d connected, %d unavailable, %d/%d flows, version %s\n",
			st.GetNumConnectedNodes().GetValue(), st.GetNumUnavailableNodes().GetValue(), st.GetNumFlows(), st.GetMaxFlows(), st.GetVersion())

		r := run(ctx, "status")
		Expect(r.ExitCode).To(Equal(0), "%s", r)
		GinkgoWriter.Print(r.Stdout)
		Expect(r.Stdout).To(MatchRegexp(`(?m)^Healthcheck \(via .+\): Ok$`), "%s", r)
		Expect(r.Stdout).To(MatchRegexp(`(?m)^Connected Nodes: %d/%d$`, len(names), len(names)), "%s", r)

		nodes := listNodes(ctx, Default)
		var listed []string
		for _, n := range nodes {
			listed = append(listed, nodeName(n.GetName()))
			Expect(n.GetState()).To(Equal(relaypb.NodeState_NODE_CONNECTED), "hubble list nodes: %s", protojson.Format(n))
		}
		Expect(listed).To(ConsistOf(names), "hubble list nodes vs the cluster's nodes")
		table := run(ctx, "list", "nodes")
		Expect(table.ExitCode).To(Equal(0), "%s", table)
		GinkgoWriter.Print(table.Stdout)
		for _, n := range nodes {
			Expect(table.Stdout).To(MatchRegexp(`(?m)^%s\s+Connected\s`, regexp.QuoteMeta(n.GetName())), "%s", table)
		}
	})

	// The agent is stopped for good while it is looked at: deleting its pod
	// (as resilience/ does) lets the DaemonSet bring a new one within
	// seconds, too short to be seen for sure, and freezing it (docker pause)
	// would hang the relay's ServerStatus rather than show it unavailable.
	// So the node's kubelet is stopped first, then the agent's containers;
	// starting the kubelet again restarts them.
	It("with one agent stopped, hubble status names its node unavailable and the other nodes' flows still come", Label("flatnet", "disruptive"), func(ctx SpecContext) {
		Expect(stopNode).NotTo(BeEmpty(), stopWhy)
		Expect(strings.Fields(os.Getenv("FLATNET_NODES"))).To(ContainElement(stopNode),
			"FLATNET_NODES (set by scripts/e2e.sh: the kind node containers) must name %s for the suite to stop its agent with docker exec", stopNode)
		sr.MoveTo(ctx, oracle.PolicySet{})
		names := clusterNodes(ctx)
		awaitAllConnected(ctx)
		agent, err := kc.AgentOn(ctx, stopNode)
		Expect(err).NotTo(HaveOccurred())

		By(fmt.Sprintf("stopping the kubelet of node %s, then the containers of its agent %s", stopNode, agent.Name))
		stopped := time.Now()
		var done agentStop
		DeferCleanup(restoreAgent, stopNode, agent, &done)
		stopAgent(ctx, stopNode, agent, &done)

		var compact string
		Eventually(func(g Gomega) {
			st := serverStatus(ctx, g)
			var unavailable []string
			for _, n := range st.GetUnavailableNodes() {
				unavailable = append(unavailable, nodeName(n))
			}
			g.Expect(unavailable).To(ConsistOf(stopNode), "hubble status: unavailable nodes")
			g.Expect(st.GetNumUnavailableNodes().GetValue()).To(BeEquivalentTo(1))
			g.Expect(st.GetNumConnectedNodes().GetValue()).To(BeEquivalentTo(len(names) - 1))
			// What a user reads. The relay's own health (SERVING while its
			// peer service and one agent answer) may flap while it moves to
			// another agent's peer service, hence inside the poll.
			r := run(ctx, "status")
			g.Expect(r.ExitCode).To(Equal(0), "%s", r)
			g.Expect(r.Stdout).To(MatchRegexp(`(?m)^Unavailable Nodes: 1\n  - (.+/)?%s$`, regexp.QuoteMeta(stopNode)), "%s", r)
			g.Expect(r.Stdout).To(MatchRegexp(`(?m)^Connected Nodes: %d/%d$`, len(names)-1, len(names)), "%s", r)
			compact = r.Stdout
		}).WithContext(ctx).WithTimeout(time.Minute).WithPolling(time.Second).Should(Succeed())
		GinkgoWriter.Printf("  hubble status names %s unavailable %s after its agent was stopped:\n%s", stopNode, time.Since(stopped).Round(100*time.Millisecond), compact)
		for _, n := range listNodes(ctx, Default) {
			if nodeName(n.GetName()) == stopNode {
				Expect(n.GetState()).NotTo(Equal(relaypb.NodeState_NODE_CONNECTED), "hubble list nodes: %s", protojson.Format(n))
			} else {
				Expect(n.GetState()).To(Equal(relaypb.NodeState_NODE_CONNECTED), "hubble list nodes: %s", protojson.Format(n))
			}
		}

		By("connecting client -> server (on the other nodes) and following its flow through the relay")
		client, server := sr.Pod(ctx, scenario.Client), sr.Pod(ctx, scenario.Server)
		at := time.Now()
		fw := followFlows(ctx, at, "--namespace", scenario.Namespace)
		Expect(sr.Connect(ctx, scenario.Client, server.Status.PodIP, 80).Reachable).To(BeTrue())
		f := awaitFollowed(ctx, fw, at, "flow client -> server:80", into(client, server, 80, flowpb.Verdict_FORWARDED))
		Expect(nodeName(f.GetNodeName())).To(Equal(server.Spec.NodeName))
		// The relay tells the client which node it could not ask.
		events := hubblecli.NodeEvents(fw.Stop())
		Expect(missingNodes(events)).To(ContainElement(stopNode), "node status events on stderr: %v", events)
	})
})

// serverStatus is `hubble status -o json`, which must succeed.
func serverStatus(ctx context.Context, g Gomega) *observerpb.ServerStatusResponse {
	r := run(ctx, "status", "-o", "json")
	g.Expect(r.ExitCode).To(Equal(0), "%s", r)
	st := &observerpb.ServerStatusResponse{}
	g.Expect(protojson.Unmarshal([]byte(r.Stdout), st)).To(Succeed(), "%s", r)
	return st
}

// awaitAllConnected waits until hubble status counts every node of the
// cluster connected (after a restart the relay reconnects with backoff).
func awaitAllConnected(ctx context.Context) *observerpb.ServerStatusResponse {
	names := clusterNodes(ctx)
	var st *observerpb.ServerStatusResponse
	Eventually(func(g Gomega) {
		st = serverStatus(ctx, g)
		g.Expect(st.GetNumConnectedNodes()).NotTo(BeNil(), "hubble status: no connected-node count (is the server a relay?)")
		g.Expect(st.GetNumConnectedNodes().GetValue()).To(BeEquivalentTo(len(names)), "hubble status: connected nodes, of the cluster's %v; unavailable: %v", names, st.GetUnavailableNodes())
		g.Expect(st.GetNumUnavailableNodes().GetValue()).To(BeZero(), "unavailable: %v", st.GetUnavailableNodes())
	}).WithContext(ctx).WithTimeout(2 * time.Minute).WithPolling(time.Second).Should(Succeed())
	return st
}

// listNodes is `hubble list nodes -o json`: a JSON array of observerpb.Node,
// each in proto3's JSON mapping.
func listNodes(ctx context.Context, g Gomega) []*observerpb.Node {
	r := run(ctx, "list", "nodes", "-o", "json")
	g.Expect(r.ExitCode).To(Equal(0), "%s", r)
	var raw []json.RawMessage
	g.Expect(json.Unmarshal([]byte(r.Stdout), &raw)).To(Succeed(), "%s", r)
	var out []*observerpb.Node
	for _, m := range raw {
		n := &observerpb.Node{}
		g.Expect(protojson.Unmarshal(m, n)).To(Succeed(), "%s", m)
		out = append(out, n)
	}
	return out
}

// missingNodes are the nodes node status events say the relay could not
// ask: unavailable, or failing.
func missingNodes(events []*observerpb.GetFlowsResponse) []string {
	var out []string
	for _, e := range events {
		switch e.GetNodeStatus().GetStateChange() {
		case relaypb.NodeState_NODE_UNAVAILABLE, relaypb.NodeState_NODE_ERROR:
			for _, n := range e.GetNodeStatus().GetNodeNames() {
				out = append(out, nodeName(n))
			}
		}
	}
	return out
}

// nodeExec runs a command in a kind node's container.
func nodeExec(ctx context.Context, node string, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, "docker", append([]string{"exec", node}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("docker exec %s %s: %w: %s", node, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// agentStop is how far stopAgent got, for restoreAgent.
type agentStop struct{ kubelet, containers bool }

// stopAgent stops node's kubelet, so nothing restarts the agent, then the
// agent pod's running containers.
func stopAgent(ctx context.Context, node string, agent corev1.Pod, st *agentStop) {
	_, err := nodeExec(ctx, node, "systemctl", "stop", "kubelet")
	st.kubelet = true // even on an error: it may have stopped
	Expect(err).NotTo(HaveOccurred())
	list := []string{"crictl", "ps", "-q", "--state", "running", "--label", "io.kubernetes.pod.namespace=" + agent.Namespace, "--label", "io.kubernetes.pod.name=" + agent.Name}
	ids, err := nodeExec(ctx, node, list...)
	Expect(err).NotTo(HaveOccurred())
	Expect(strings.Fields(ids)).NotTo(BeEmpty(), "no running container of agent %s on node %s", agent.Name, node)
	st.containers = true
	_, err = nodeExec(ctx, node, append([]string{"crictl", "stop", "--timeout", "10"}, strings.Fields(ids)...)...)
	Expect(err).NotTo(HaveOccurred())
	left, err := nodeExec(ctx, node, list...)
	Expect(err).NotTo(HaveOccurred())
	Expect(strings.Fields(left)).To(BeEmpty(), "agent %s on node %s still runs containers", agent.Name, node)
}

// restoreAgent starts node's kubelet again and waits until it has restarted
// the agent (if its containers were stopped), Ready, and the relay counts
// every node connected again.
func restoreAgent(ctx SpecContext, node string, before corev1.Pod, st *agentStop) {
	if !st.kubelet {
		return
	}
	By("starting the kubelet of node " + node + " again; it restarts the agent")
	_, err := nodeExec(ctx, node, "systemctl", "start", "kubelet")
	Expect(err).NotTo(HaveOccurred())
	Eventually(func(g Gomega) {
		a, err := kc.AgentOn(ctx, node)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(!st.containers || a.UID != before.UID || restarts(a) > restarts(before)).To(BeTrue(), "agent %s has not restarted yet", a.Name)
		g.Expect(slices.ContainsFunc(a.Status.Conditions, func(c corev1.PodCondition) bool {
			return c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue
		})).To(BeTrue(), "agent %s (-n %s) is not Ready", a.Name, framework.AgentNamespace)
	}).WithContext(ctx).WithTimeout(3 * time.Minute).WithPolling(time.Second).Should(Succeed())
	awaitAllConnected(ctx)
}
