//go:build e2e

// Package hubble judges flatnet's Hubble API with the upstream tools, as a
// user of "Azure CNI powered by Cilium" reaches it: the hubble CLI
// (github.com/cilium/cilium/hubble, bin/hubble from `make tools`, at the
// Cilium release of flatnet's go.mod) against the upstream hubble-relay,
// reached as `cilium hubble port-forward` does (a local port forwarded to
// the pod behind Service flatnet-system/hubble-relay port 80), its `-o json`
// read with Hubble's own API types. On the seed scenario, in a namespace of
// its own:
//
//   - observe_test.go: the denied connect is a DROPPED flow client -> server:80
//     with ingress_denied_by naming default-deny, FORWARDED after the delete;
//     --follow streams a new flow within the 2 s; --from-pod,
//     --to-port and --since narrow as Hubble documents;
//   - nodes_test.go: `hubble status` shows every node connected, `hubble list
//     nodes` lists them, and with one agent stopped status names it
//     unavailable while the other nodes' flows still come;
//   - badinput_test.go: a malformed filter, an unknown field or field-mask path, a
//     since after until are refused InvalidArgument naming the field, through
//     the CLI and a gRPC client of its own; a client that never reads leaves
//     the agents healthy and other clients served.
//
// Expected verdicts come from fixtures/oracle; expected Hubble behaviour from
// Hubble's documentation and the CLI's and relay's code at that release.
package hubble

import (
	"context"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flatnet/flatnet/fixtures/oracle"
	"github.com/flatnet/flatnet/fixtures/topology"
	"github.com/flatnet/flatnet/suites/framework"
	"github.com/flatnet/flatnet/suites/internal/flowcheck"
	"github.com/flatnet/flatnet/suites/internal/hubblecli"
	"github.com/flatnet/flatnet/suites/internal/portforward"
	"github.com/flatnet/flatnet/suites/internal/seedrun"
	"github.com/flatnet/flatnet/suites/internal/workload"
)

func TestHubble(t *testing.T) { kc.Run(t) }

// otherClient is a second client pod: flows from it lie outside --from-pod.
const otherClient = "other"

var (
	kc       = framework.New("hubble", framework.Options{Settings: true, Policies: true})
	cli      hubblecli.CLI
	relay    *portforward.Forward
	scenario = topology.DefaultSeed()
	sr       *seedrun.Run
	// stopNode is the node whose agent the agent-stop spec stops: neither the
	// relay's (the port-forward goes through its kubelet) nor one of the
	// suite's pods' (their execs do); stopWhy says why there is none.
	stopNode, stopWhy string
)

var _ = kc.BeforeSuite(func(ctx SpecContext) {
	spec := os.Getenv(flowcheck.RelayEnv)
	if spec == "" {
		spec = flowcheck.DefaultRelay
	}
	target, err := portforward.ParseTarget(spec)
	Expect(err).NotTo(HaveOccurred(), flowcheck.RelayEnv)
	By("port-forwarding a local port to the pod behind Service " + target.String() + ", as cilium hubble port-forward does")
	Eventually(func() error {
		relay, err = portforward.Start(ctx, kc.Rest, kc.Clientset, target, GinkgoWriter)
		return err
	}).WithContext(ctx).WithTimeout(2*time.Minute).WithPolling(2*time.Second).Should(Succeed(), "the relay is deployed by make deploy (%s=<ns>/<service>:<port> names another)", flowcheck.RelayEnv)
	cli, err = hubblecli.Locate(kc.RepoRoot, relay.Addr(), GinkgoT().TempDir())
	Expect(err).NotTo(HaveOccurred())

	relayNode := relay.Backend().Pod.Spec.NodeName
	workers, others, err := kc.NodesByRole(ctx)
	Expect(err).NotTo(HaveOccurred())
	// The disruptive lane's node when the cluster has one (nothing of the other
	// suites runs there); else a worker first: the control plane's kubelet runs
	// the API server.
	candidates := append(workers, others...)
	lane, err := kc.DisruptiveNode(ctx)
	Expect(err).NotTo(HaveOccurred())
	if lane != "" && lane != relayNode {
		stopNode = lane
	} else if i := slices.IndexFunc(candidates, func(n string) bool { return n != relayNode }); i >= 0 && len(candidates) > 1 {
		stopNode = candidates[i]
	} else {
		stopWhy = fmt.Sprintf("nodes %v: the agent-stop spec needs a node that hosts neither the relay (on %s) nor the suite's pods", candidates, relayNode)
	}
	hosts := slices.DeleteFunc(slices.Clone(candidates), func(n string) bool { return n == stopNode })

	scenario.Namespace = fmt.Sprintf("flatnet-hubble-%04x", time.Now().UnixNano()&0xffff)
	sr = seedrun.New(kc, scenario)
	server := workload.Prepare(scenario.ServerPod(kc.Settings.ProbeImage))
	client := workload.Prepare(scenario.ClientPod(kc.Settings.ProbeImage))
	other := workload.Prepare(scenario.ClientPod(kc.Settings.ProbeImage))
	other.Name, other.Labels = otherClient, workload.WithManagedBy(map[string]string{"app": otherClient})
	// Server and clients on different nodes where there are two: the flows
	// then cross nodes, as the relay merges them.
	server.Spec.NodeName, client.Spec.NodeName, other.Spec.NodeName = hosts[0], hosts[len(hosts)-1], hosts[len(hosts)-1]
	pods := []corev1.Pod{server, client, other}
	for i := range pods {
		// The control plane's NoSchedule taint: a host may be that node.
		pods[i].Spec.Tolerations = []corev1.Toleration{{Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule}}
	}
	notes := []string{
		fmt.Sprintf("hubble CLI %s (%s); relay %s: pod %s on node %s, at %s", cli.Path, cli.Version, target, relay.Backend().Pod.Name, relayNode, relay.Addr()),
		fmt.Sprintf("namespace %s: server on %s, client and %s on %s; agent stopped on %q %s", scenario.Namespace, server.Spec.NodeName, otherClient, client.Spec.NodeName, stopNode, stopWhy),
	}
	for _, n := range notes {
		GinkgoWriter.Println(n)
		AddReportEntry("hubble", n)
	}
	By("creating namespace " + scenario.Namespace + " with pods server (serve-hostname --tcp on 80), client and " + otherClient)
	sr.Deploy(ctx, pods...)
})

var _ = kc.AfterSuite(func(ctx SpecContext) {
	if relay != nil {
		relay.Close()
		if l := relay.Losses(); len(l) > 0 {
			GinkgoWriter.Printf("the port-forward to the relay was lost and re-made %d time(s):\n  %s\n", len(l), strings.Join(l, "\n  "))
		}
	}
})

func podKey(name string) workload.Key { return workload.Key{Namespace: scenario.Namespace, Name: name} }

// run runs the CLI with args (and --server).
func run(ctx context.Context, args ...string) hubblecli.Result {
	r, err := cli.Run(ctx, args...)
	Expect(err).NotTo(HaveOccurred(), "%v (port-forward losses: %v)", err, relay.Losses())
	return r
}

// observe runs `hubble observe <args> -o json`, which must succeed, and
// returns its flows (stdout) and its node status events (stderr, where the
// CLI writes them).
func observe(ctx context.Context, g Gomega, args ...string) (flows []*flowpb.Flow, events []*observerpb.GetFlowsResponse) {
	r := run(ctx, append(append([]string{"observe"}, args...), "-o", "json")...)
	g.Expect(r.ExitCode).To(Equal(0), "%s (port-forward losses: %v)", r, relay.Losses())
	out, err := hubblecli.ParseLines(r.Stdout)
	g.Expect(err).NotTo(HaveOccurred(), "stdout of %s", r)
	for _, resp := range out {
		if f := resp.GetFlow(); f != nil {
			flows = append(flows, f)
		}
	}
	return flows, hubblecli.NodeEvents(r.Stderr)
}

// followFlows starts `hubble observe --follow --since <since> <args> -o json`,
// before the connect whose flow it is to show: each agent keeps its last 10,000
// flows, 7-15 s' worth while other suites probe its pods, so a flow looked for
// by polling (awaitFlow) may be gone before a poll reads it.
func followFlows(ctx context.Context, since time.Time, args ...string) *hubblecli.Stream {
	s, err := cli.Start(ctx, append(append([]string{"observe", "--follow", "--since", since.UTC().Format(time.RFC3339Nano)}, args...), "-o", "json")...)
	Expect(err).NotTo(HaveOccurred())
	return s
}

// awaitFollowed waits until the followed flows (followFlows) hold one at or after
// since that match accepts, and returns it.
func awaitFollowed(ctx context.Context, s *hubblecli.Stream, since time.Time, what string, match func(*flowpb.Flow) bool) *flowpb.Flow {
	return await(ctx, 200*time.Millisecond, since, what, match, "hubble "+strings.Join(s.Args, " "), func(g Gomega) []*flowpb.Flow {
		lines, err := s.Lines()
		g.Expect(err).NotTo(HaveOccurred())
		var flows []*flowpb.Flow
		for _, l := range lines {
			if f := l.Resp.GetFlow(); f != nil {
				flows = append(flows, f)
			}
		}
		return flows
	})
}

// awaitFlow waits until `hubble observe <args> -o json` shows a flow at or
// after since that match accepts, and returns it.
func awaitFlow(ctx context.Context, since time.Time, what string, match func(*flowpb.Flow) bool, args ...string) *flowpb.Flow {
	return await(ctx, time.Second, since, what, match, "hubble observe "+strings.Join(args, " "), func(g Gomega) []*flowpb.Flow {
		flows, _ := observe(ctx, g, args...)
		return flows
	})
}

// await polls read, named source, until it returns a flow at or after since
// that match accepts (30 s), and returns it.
func await(ctx context.Context, poll time.Duration, since time.Time, what string, match func(*flowpb.Flow) bool, source string, read func(Gomega) []*flowpb.Flow) *flowpb.Flow {
	var found *flowpb.Flow
	Eventually(func(g Gomega) {
		var seen []string
		for _, f := range read(g) {
			if f.GetTime().AsTime().Before(since) {
				continue
			}
			seen = append(seen, line(f))
			if match(f) {
				found = f
				return
			}
		}
		g.Expect(found).NotTo(BeNil(), "%s: no %s since %s among %d flows:\n  %s",
			source, what, since.Format(time.RFC3339Nano), len(seen), strings.Join(seen, "\n  "))
	}).WithContext(ctx).WithTimeout(30 * time.Second).WithPolling(poll).Should(Succeed())
	GinkgoWriter.Printf("  %s: %s\n", what, line(found))
	return found
}

// into matches the flow of a TCP connection from pod from to pod to's port,
// entering to (the ingress flow, on to's node) with the verdict.
func into(from, to *corev1.Pod, port uint32, verdict flowpb.Verdict) func(*flowpb.Flow) bool {
	return func(f *flowpb.Flow) bool {
		return f.GetVerdict() == verdict && f.GetTrafficDirection() == flowpb.TrafficDirection_INGRESS &&
			f.GetIP().GetSource() == from.Status.PodIP && f.GetIP().GetDestination() == to.Status.PodIP &&
			f.GetL4().GetTCP() != nil && f.GetL4().GetTCP().GetDestinationPort() == port &&
			f.GetSource().GetNamespace() == from.Namespace && f.GetSource().GetPodName() == from.Name &&
			f.GetDestination().GetNamespace() == to.Namespace && f.GetDestination().GetPodName() == to.Name
	}
}

// line is a flow on one line, for people; with its time, addresses and
// ports it also tells one flow record from another across queries.
func line(f *flowpb.Flow) string {
	ep := func(e *flowpb.Endpoint, ip string, port uint32) string {
		who := "?"
		if e.GetPodName() != "" {
			who = e.GetNamespace() + "/" + e.GetPodName()
		}
		return fmt.Sprintf("%s(%s:%d)", who, ip, port)
	}
	var sport, dport uint32
	if t := f.GetL4().GetTCP(); t != nil {
		sport, dport = t.GetSourcePort(), t.GetDestinationPort()
	} else if u := f.GetL4().GetUDP(); u != nil {
		sport, dport = u.GetSourcePort(), u.GetDestinationPort()
	}
	s := fmt.Sprintf("%s [%s] %s %s %s -> %s", f.GetTime().AsTime().Format(time.RFC3339Nano), f.GetNodeName(), f.GetVerdict(), f.GetTrafficDirection(),
		ep(f.GetSource(), f.GetIP().GetSource(), sport), ep(f.GetDestination(), f.GetIP().GetDestination(), dport))
	if f.GetVerdict() == flowpb.Verdict_DROPPED {
		s += " " + f.GetDropReasonDesc().String()
	}
	for _, p := range f.GetIngressDeniedBy() {
		s += fmt.Sprintf(" ingress_denied_by=%s/%s/%s", p.GetKind(), p.GetNamespace(), p.GetName())
	}
	return s
}

// policyNames renders policies as the oracle's PolicyRef.String does.
func policyNames(ps []*flowpb.Policy) []string {
	out := []string{}
	for _, p := range ps {
		out = append(out, oracle.PolicyRef{Kind: oracle.PolicyKind(p.GetKind()), Namespace: p.GetNamespace(), Name: p.GetName()}.String())
	}
	return out
}

func refNames(rs []oracle.PolicyRef) []string {
	out := []string{}
	for _, r := range rs {
		out = append(out, r.String())
	}
	return out
}

// nodeName is a Hubble node name as Kubernetes spells it: Hubble names a node
// <cluster>/<node> when the cluster has a name of its own.
func nodeName(hubble string) string {
	if i := strings.LastIndex(hubble, "/"); i >= 0 {
		return hubble[i+1:]
	}
	return hubble
}

// restarts is how often a pod's containers restarted.
func restarts(p corev1.Pod) (n int32) {
	for _, c := range p.Status.ContainerStatuses {
		n += c.RestartCount
	}
	return n
}

// clusterNodes is the cluster's node list, by name.
func clusterNodes(ctx context.Context) []string {
	nl, err := kc.Clientset.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	Expect(err).NotTo(HaveOccurred())
	var out []string
	for _, n := range nl.Items {
		out = append(out, n.Name)
	}
	sort.Strings(out)
	return out
}
