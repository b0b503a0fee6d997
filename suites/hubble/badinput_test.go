//go:build e2e

package hubble

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strings"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	relaypb "github.com/cilium/cilium/api/v1/relay"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	corev1 "k8s.io/api/core/v1"

	"github.com/flatnet/flatnet/fixtures/oracle"
	"github.com/flatnet/flatnet/probes/podexec"
	"github.com/flatnet/flatnet/suites/framework"
	"github.com/flatnet/flatnet/suites/internal/hubblecli"
)

// agentHealthPort serves the agents' /healthz (dataplane/manifests/agent.yaml).
const agentHealthPort = "9969"

// The error contract (InvalidArgument, naming the field) and the agents'
// /healthz are flatnet's, hence "flatnet".
var _ = Describe("bad input to the Hubble API [flatnet]", Label("hubble", "flatnet"), Ordered, func() {
	BeforeAll(func(ctx SpecContext) { awaitAllConnected(ctx) })

	It("refuses a malformed filter and a since after until from the CLI with InvalidArgument naming the field; the CLI itself refuses an unknown field-mask path", func(ctx SpecContext) {
		for _, c := range []struct {
			args []string
			want []string
		}{
			{[]string{"--from-ip", "10.0.0.300"}, []string{"source_ip", "10.0.0.300"}},
			{[]string{"--to-port", "eighty"}, []string{"destination_port", "eighty"}},
			// Both relative to now: since is a minute ago, until an hour ago.
			{[]string{"--since", "1m", "--until", "1h"}, []string{"since", "until"}},
		} {
			r := run(ctx, append(append([]string{"observe"}, c.args...), "-o", "json")...)
			GinkgoWriter.Printf("  %s\n", r)
			expectRefused(ctx, "hubble observe "+strings.Join(c.args, " "), cliRefusal(r), c.want...)
		}
		// Upstream builds the mask before sending (fieldmaskpb.New against
		// flow.Flow): the request never leaves the CLI.
		r := run(ctx, "observe", "--field-mask", "no_such_field", "-o", "json")
		Expect(r.ExitCode).NotTo(Equal(0), "%s", r)
		Expect(r.Stderr).To(ContainSubstring("no_such_field"), "%s", r)
		Expect(r.Stdout).To(BeEmpty(), "%s", r)
	})

	It("refuses bad requests from a gRPC client of its own with InvalidArgument naming the field", func(ctx SpecContext) {
		client := observerpb.NewObserverClient(dial())
		unknown := &flowpb.FlowFilter{}
		// Field 9999 of FlowFilter: what a newer client's filter looks like.
		unknown.ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 9999, protowire.VarintType), 1))
		now := time.Now()
		for _, c := range []struct {
			what string
			req  *observerpb.GetFlowsRequest
			want []string
		}{
			{"a malformed source_ip", &observerpb.GetFlowsRequest{Number: 1, Whitelist: []*flowpb.FlowFilter{{SourceIp: []string{"10.0.0.300"}}}}, []string{"whitelist[0].source_ip", "10.0.0.300"}},
			{"a field unknown to the API", &observerpb.GetFlowsRequest{Number: 1, Blacklist: []*flowpb.FlowFilter{unknown}}, []string{"blacklist[0]", "unknown"}},
			{"an unknown field-mask path", &observerpb.GetFlowsRequest{Number: 1, FieldMask: &fieldmaskpb.FieldMask{Paths: []string{"source.no_such_field"}}}, []string{"field_mask", "source.no_such_field"}},
			{"since after until", &observerpb.GetFlowsRequest{Since: timestamppb.New(now), Until: timestamppb.New(now.Add(-time.Hour))}, []string{"since", "until"}},
		} {
			expectRefused(ctx, "GetFlows with "+c.what, grpcRefusal(ctx, client, c.req), c.want...)
		}
		By("a good request still gets flows")
		ok := grpcRefusal(ctx, client, &observerpb.GetFlowsRequest{Number: 1})
		Expect(ok.status).To(BeEmpty())
		Expect(ok.byNode).To(BeEmpty())
		Expect(ok.flows).To(BeNumerically(">", 0), "GetFlows{number: 1} got no flow: %v", ok.other)
	})

	It("keeps the agents healthy and other clients served while a client never reads its follow stream", func(ctx SpecContext) {
		sr.MoveTo(ctx, oracle.PolicySet{})
		before := map[string]corev1.Pod{}
		for _, n := range clusterNodes(ctx) {
			a, err := kc.AgentOn(ctx, n)
			Expect(err).NotTo(HaveOccurred())
			before[n] = a
		}
		// Small HTTP/2 windows hold what is unread at the relay (gRPC flow
		// control, then the relay's own back-pressure on the agents'
		// streams) rather than in the port-forward, whose one connection
		// to the relay's pod every client here shares.
		By("opening 4 follow streams of every flow kept, from connections with 64 KiB windows, never read")
		stallCtx, stall := context.WithCancel(context.Background())
		defer stall()
		var stalled []observerpb.Observer_GetFlowsClient
		for range 4 {
			conn := dial(grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
			st, err := observerpb.NewObserverClient(conn).GetFlows(stallCtx, &observerpb.GetFlowsRequest{Number: 1 << 20, Follow: true})
			Expect(err).NotTo(HaveOccurred())
			stalled = append(stalled, st)
		}
		By("flooding: 60 connects from the client, to a served and an unserved port")
		server := sr.Pod(ctx, scenario.Server)
		loop := fmt.Sprintf("for i in {1..30}; do ./agnhost connect %[1]s:80 --timeout=1s --protocol=tcp; ./agnhost connect %[1]s:81 --timeout=1s --protocol=tcp; done 2>&1 | sort | uniq -c; true", server.Status.PodIP)
		var out, errOut bytes.Buffer
		Expect(kc.Exec.Exec(ctx, podexec.Pod{Namespace: scenario.Namespace, Name: scenario.Client}, []string{"bash", "-c", loop}, nil, &out, &errOut)).To(Succeed(), "%s", errOut.String())
		GinkgoWriter.Printf("  flood answers (count, answer):\n%s", out.String())

		By("another client still gets new flows, within the issue's bound")
		followLatency(ctx)
		By("every agent answers /healthz and has not restarted")
		for n, was := range before {
			a, err := kc.AgentOn(ctx, n)
			Expect(err).NotTo(HaveOccurred())
			Expect(a.UID).To(Equal(was.UID), "the agent of %s was replaced", n)
			Expect(restarts(a)).To(Equal(restarts(was)), "agent %s restarted", a.Name)
			body, err := kc.Clientset.CoreV1().RESTClient().Get().Namespace(framework.AgentNamespace).Resource("pods").
				Name(a.Name + ":" + agentHealthPort).SubResource("proxy").Suffix("/healthz").DoRaw(ctx)
			Expect(err).NotTo(HaveOccurred(), "agent %s /healthz: %s", a.Name, body)
		}
		awaitAllConnected(ctx)
		By("the unread streams were served: read at last, each holds a response")
		for i, st := range stalled {
			resp, err := st.Recv()
			Expect(err).NotTo(HaveOccurred(), "unread stream %d ended with nothing to read", i)
			Expect(resp.GetResponseTypes()).NotTo(BeNil(), "unread stream %d", i)
		}
	})
})

// dial opens a gRPC connection to the relay through the port-forward, closed
// after the spec.
func dial(opts ...grpc.DialOption) *grpc.ClientConn {
	conn, err := grpc.NewClient(relay.Addr(), append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)...)
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(conn.Close)
	return conn
}

// refusal is how a request was answered. A Hubble server refuses it with
// the call's status; hubble-relay forwards a request to every agent and
// turns each agent's error into a NODE_ERROR node status event carrying the
// status's text ("rpc error: code = InvalidArgument desc = ...";
// pkg/hubble/relay/observer nodeStatusError), then ends the call OK.
type refusal struct {
	status string            // the call's own InvalidArgument message
	byNode map[string]string // node -> its InvalidArgument message, through the relay
	other  []string          // anything else: flows, other errors, other events
	flows  int
}

var (
	grpcErrorText = regexp.MustCompile(`^rpc error: code = (\w+) desc = (.*)$`)
	cliErrorText  = regexp.MustCompile(`rpc error: code = InvalidArgument desc = (.*)`)
)

// event reads one response of a GetFlows stream.
func (r *refusal) event(resp *observerpb.GetFlowsResponse) {
	ns := resp.GetNodeStatus()
	switch {
	case resp.GetFlow() != nil:
		r.flows++
		r.other = append(r.other, "a flow: "+line(resp.GetFlow()))
	case ns.GetStateChange() == relaypb.NodeState_NODE_ERROR:
		m := grpcErrorText.FindStringSubmatch(ns.GetMessage())
		if m == nil || m[1] != codes.InvalidArgument.String() {
			r.other = append(r.other, fmt.Sprintf("nodes %v: %s (not InvalidArgument)", ns.GetNodeNames(), ns.GetMessage()))
			return
		}
		for _, n := range ns.GetNodeNames() {
			r.byNode[nodeName(n)] = m[2]
		}
	case ns.GetStateChange() == relaypb.NodeState_NODE_UNAVAILABLE:
		r.other = append(r.other, fmt.Sprintf("nodes %v unavailable", ns.GetNodeNames()))
	}
}

// callError reads the error that ended a call.
func (r *refusal) callError(err error) {
	if st, ok := status.FromError(err); ok && st.Code() == codes.InvalidArgument {
		r.status = st.Message()
		return
	}
	r.other = append(r.other, "the call failed: "+err.Error())
}

// grpcRefusal sends req and reads the stream to its end.
func grpcRefusal(ctx context.Context, client observerpb.ObserverClient, req *observerpb.GetFlowsRequest) refusal {
	r := refusal{byNode: map[string]string{}}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	stream, err := client.GetFlows(ctx, req)
	if err != nil {
		r.callError(err)
		return r
	}
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return r
		}
		if err != nil {
			r.callError(err)
			return r
		}
		r.event(resp)
	}
}

// cliRefusal reads a `hubble observe -o json` run: a call refused outright
// fails the CLI with the status on stderr; the relay's NODE_ERROR events are
// JSON lines on stderr, flows on stdout.
func cliRefusal(cr hubblecli.Result) refusal {
	r := refusal{byNode: map[string]string{}}
	if cr.ExitCode != 0 {
		if m := cliErrorText.FindStringSubmatch(cr.Stderr); m != nil {
			r.status = m[1]
		} else {
			r.other = append(r.other, cr.String())
		}
		return r
	}
	for _, e := range nodeEvents(cr.Stderr) {
		r.event(e)
	}
	if strings.TrimSpace(cr.Stdout) != "" {
		r.other = append(r.other, "stdout: "+cr.Stdout)
	}
	return r
}

// expectRefused holds a refusal to the contract: InvalidArgument naming
// every word of want, from the server itself or from every agent of the
// cluster through the relay, and nothing else (no flow).
func expectRefused(ctx context.Context, what string, r refusal, want ...string) {
	GinkgoWriter.Printf("  %s: status %q, agents %v, other %v\n", what, r.status, r.byNode, r.other)
	Expect(r.other).To(BeEmpty(), "%s: want only InvalidArgument", what)
	if r.status != "" {
		for _, w := range want {
			Expect(r.status).To(ContainSubstring(w), "%s: the InvalidArgument message must name %q", what, w)
		}
		return
	}
	Expect(r.byNode).NotTo(BeEmpty(), "%s: nothing refused it", what)
	var nodes []string
	for n, msg := range r.byNode {
		nodes = append(nodes, n)
		for _, w := range want {
			Expect(msg).To(ContainSubstring(w), "%s: node %s's InvalidArgument message must name %q", what, n, w)
		}
	}
	sort.Strings(nodes)
	Expect(nodes).To(ConsistOf(clusterNodes(ctx)), "%s: every agent must refuse it", what)
}
