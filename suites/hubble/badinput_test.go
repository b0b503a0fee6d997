//go:build e2e

package hubble

import (
	"bytes"
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
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
// /healthz are flatnet's, hence "flatnet". every-node: it holds every node's
// agent connected and unreplaced (make e2e runs it in the disruptive lane).
var _ = Describe("bad input to the Hubble API [flatnet]", Label("hubble", "flatnet", "every-node"), Ordered, func() {
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
			expectRefused(ctx, "hubble observe "+strings.Join(c.args, " "), r.Refusal(), c.want...)
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
			expectRefused(ctx, "GetFlows with "+c.what, hubblecli.ReadRefusal(ctx, client, c.req), c.want...)
		}
		By("a good request still gets flows")
		ok := hubblecli.ReadRefusal(ctx, client, &observerpb.GetFlowsRequest{Number: 1})
		Expect(ok.Status).To(BeEmpty())
		Expect(ok.ByNode).To(BeEmpty())
		Expect(ok.Flows).To(BeNumerically(">", 0), "GetFlows{number: 1} got no flow: %v", ok.Other)
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

// expectRefused holds a refusal to the contract: InvalidArgument naming
// every word of want, from the server itself or from every agent of the
// cluster through the relay, and nothing else (no flow).
func expectRefused(ctx context.Context, what string, r hubblecli.Refusal, want ...string) {
	GinkgoWriter.Printf("  %s: status %q, agents %v, other %v\n", what, r.Status, r.ByNode, r.Other)
	Expect(r.Other).To(BeEmpty(), "%s: want only InvalidArgument", what)
	if r.Status != "" {
		for _, w := range want {
			Expect(r.Status).To(ContainSubstring(w), "%s: the InvalidArgument message must name %q", what, w)
		}
		return
	}
	Expect(r.ByNode).NotTo(BeEmpty(), "%s: nothing refused it", what)
	var nodes []string
	for n, msg := range r.ByNode {
		nodes = append(nodes, nodeName(n))
		for _, w := range want {
			Expect(msg).To(ContainSubstring(w), "%s: node %s's InvalidArgument message must name %q", what, n, w)
		}
	}
	sort.Strings(nodes)
	Expect(nodes).To(ConsistOf(clusterNodes(ctx)), "%s: every agent must refuse it", what)
}
