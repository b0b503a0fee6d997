//go:build e2e

package hubble

import (
	"context"
	"fmt"
	"strings"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/flatnet/flatnet/fixtures/oracle"
	"github.com/flatnet/flatnet/suites/internal/hubblecli"
)

// followBound is the issue's: `--follow` streams a new flow within 2 s.
const followBound = 2 * time.Second

var _ = Describe("hubble observe through the relay", Label("hubble"), Ordered, ContinueOnFailure, func() {
	// Cilium fills *_denied_by only when a deny rule matched; flatnet names
	// the policies that put the pod in default deny too, hence "flatnet".
	It("shows the seed's denied connect: observe --namespace <ns> --verdict DROPPED -o json has client -> server:80 with ingress_denied_by default-deny", Label("cilium", "flatnet"), func(ctx SpecContext) {
		Expect(kc.CiliumCRDs).NotTo(HaveOccurred())
		verdict := sr.MoveTo(ctx, sr.Step("seed-default-deny", 0).Policies)
		Expect(verdict.Allowed).To(BeFalse(), "the oracle: %s", verdict)
		client, server := sr.Pod(ctx, scenario.Client), sr.Pod(ctx, scenario.Server)
		at := time.Now()
		fw := followFlows(ctx, at, "--namespace", scenario.Namespace, "--verdict", "DROPPED")
		defer fw.Stop()
		a := sr.Connect(ctx, scenario.Client, server.Status.PodIP, scenario.Port.Number)
		Expect(a.Word).To(Equal("TIMEOUT"), "a policy drop times out: %s", a)

		f := awaitFollowed(ctx, fw, at, "DROPPED flow client -> server:80", into(client, server, 80, flowpb.Verdict_DROPPED))
		Expect(nodeName(f.GetNodeName())).To(Equal(server.Spec.NodeName), "the SYN is dropped entering the server, on its node")
		Expect(f.GetDropReasonDesc()).To(Equal(flowpb.DropReason_POLICY_DENIED))
		Expect(f.GetEgressDeniedBy()).To(BeEmpty())
		Expect(policyNames(f.GetIngressDeniedBy())).To(ContainElement(oracle.PolicyRef{Kind: oracle.KindCNP, Namespace: scenario.Namespace, Name: "default-deny"}.String()))
		Expect(policyNames(f.GetIngressDeniedBy())).To(ConsistOf(refNames(verdict.Ingress.SelectedBy)), "ingress_denied_by vs the oracle's %s", verdict.Ingress)
	})

	It("shows it FORWARDED after kubectl delete cnp default-deny", Label("cilium"), func(ctx SpecContext) {
		Expect(kc.CiliumCRDs).NotTo(HaveOccurred())
		verdict := sr.MoveTo(ctx, sr.Step("seed-default-deny", 1).Policies)
		Expect(verdict.Allowed).To(BeTrue(), "the oracle: %s", verdict)
		client, server := sr.Pod(ctx, scenario.Client), sr.Pod(ctx, scenario.Server)
		at := time.Now()
		fw := followFlows(ctx, at, "--namespace", scenario.Namespace, "--verdict", "FORWARDED")
		defer fw.Stop()
		a := sr.Connect(ctx, scenario.Client, server.Status.PodIP, scenario.Port.Number)
		Expect(a.Reachable).To(BeTrue(), "%s", a)
		f := awaitFollowed(ctx, fw, at, "FORWARDED flow client -> server:80", into(client, server, 80, flowpb.Verdict_FORWARDED))
		Expect(nodeName(f.GetNodeName())).To(Equal(server.Spec.NodeName))
		Expect(f.GetIngressDeniedBy()).To(BeEmpty())
	})

	It(fmt.Sprintf("streams a new flow to observe --follow within %s of the connect", followBound), func(ctx SpecContext) {
		sr.MoveTo(ctx, oracle.PolicySet{})
		took := followLatency(ctx)
		AddReportEntry("observe --follow: datapath to CLI", took.String())
	})

	It("narrows with --from-pod, --to-port and --since as documented", func(ctx SpecContext) {
		sr.MoveTo(ctx, oracle.PolicySet{})
		client, other, server := sr.Pod(ctx, scenario.Client), sr.Pod(ctx, otherClient), sr.Pod(ctx, scenario.Server)
		ns := scenario.Namespace
		start := time.Now()
		Expect(sr.Connect(ctx, scenario.Client, server.Status.PodIP, 80).Reachable).To(BeTrue())
		Expect(sr.Connect(ctx, otherClient, server.Status.PodIP, 80).Reachable).To(BeTrue())
		// Nothing serves 81: the SYN is forwarded and the server's kernel refuses it.
		Expect(sr.Connect(ctx, scenario.Client, server.Status.PodIP, 81).Word).To(Equal("REFUSED"))
		since := func(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }
		c80 := awaitFlow(ctx, start, "client -> server:80", into(client, server, 80, flowpb.Verdict_FORWARDED), "--namespace", ns, "--since", since(start))
		o80 := awaitFlow(ctx, start, "other -> server:80", into(other, server, 80, flowpb.Verdict_FORWARDED), "--namespace", ns, "--since", since(start))
		c81 := awaitFlow(ctx, start, "client -> server:81", into(client, server, 81, flowpb.Verdict_FORWARDED), "--namespace", ns, "--since", since(start))
		// After every flow above (the datapath's clock is the host's on kind).
		mid := time.Now()
		Expect(sr.Connect(ctx, scenario.Client, server.Status.PodIP, 80).Reachable).To(BeTrue())
		late := awaitFlow(ctx, mid, "client -> server:80 after --since", into(client, server, 80, flowpb.Verdict_FORWARDED), "--namespace", ns, "--since", since(mid))

		for _, c := range []struct {
			args      []string
			in        []*flowpb.Flow
			out       []*flowpb.Flow
			every     func(*flowpb.Flow) bool
			everyWhat string
		}{
			// --from-pod: "Show all flows originating in the given pod name
			// prefix ([namespace/]<pod-name>)"; Hubble refuses it beside --namespace.
			{[]string{"--from-pod", ns + "/" + scenario.Client, "--since", since(start)}, []*flowpb.Flow{c80, c81, late}, []*flowpb.Flow{o80},
				func(f *flowpb.Flow) bool {
					return f.GetSource().GetNamespace() == ns && strings.HasPrefix(f.GetSource().GetPodName(), scenario.Client)
				}, "a source pod " + ns + "/" + scenario.Client + "*"},
			// --to-port: "Show only flows with the given destination port".
			{[]string{"--namespace", ns, "--to-port", "80", "--since", since(start)}, []*flowpb.Flow{c80, o80, late}, []*flowpb.Flow{c81},
				func(f *flowpb.Flow) bool {
					return f.GetL4().GetTCP().GetDestinationPort() == 80 || f.GetL4().GetUDP().GetDestinationPort() == 80
				}, "destination port 80"},
			// --since: "Filter flows since a specific date".
			{[]string{"--namespace", ns, "--since", since(mid)}, []*flowpb.Flow{late}, []*flowpb.Flow{c80, o80, c81},
				func(f *flowpb.Flow) bool { return !f.GetTime().AsTime().Before(mid) }, "a time at or after " + since(mid)},
		} {
			flows, _ := observe(ctx, Default, c.args...)
			got := map[string]bool{}
			var lines []string
			for _, f := range flows {
				got[line(f)] = true
				lines = append(lines, line(f))
				Expect(c.every(f)).To(BeTrue(), "observe %s: every flow must have %s; this one has not: %s", strings.Join(c.args, " "), c.everyWhat, line(f))
			}
			GinkgoWriter.Printf("  observe %s: %d flows\n    %s\n", strings.Join(c.args, " "), len(flows), strings.Join(lines, "\n    "))
			for _, f := range c.in {
				Expect(got).To(HaveKey(line(f)), "observe %s leaves out a flow inside the narrowing: %s", strings.Join(c.args, " "), line(f))
			}
			for _, f := range c.out {
				Expect(got).NotTo(HaveKey(line(f)), "observe %s shows a flow outside the narrowing: %s", strings.Join(c.args, " "), line(f))
			}
		}
	})
})

// followLatency starts `hubble observe --follow --from-pod <ns>/client
// --to-port 80 -o json`, makes sure it streams (a first connect's flow comes
// through), connects again and returns how long the new flow took from the
// datapath's timestamp to the CLI's stdout; it fails when that is beyond
// the bound. The timestamp is the node's clock, the host's on kind.
func followLatency(ctx context.Context) time.Duration {
	client, server := sr.Pod(ctx, scenario.Client), sr.Pod(ctx, scenario.Server)
	match := into(client, server, 80, flowpb.Verdict_FORWARDED)
	stream, err := cli.Start(ctx, "observe", "--follow", "--from-pod", scenario.Namespace+"/"+scenario.Client, "--to-port", "80", "-o", "json")
	Expect(err).NotTo(HaveOccurred())
	defer func() { GinkgoWriter.Printf("  observe --follow stderr: %q\n", stream.Stop()) }()
	newFlow := func(g Gomega, since time.Time) (hubblecli.Line, bool) {
		lines, err := stream.Lines()
		g.Expect(err).NotTo(HaveOccurred())
		for _, l := range lines {
			if f := l.Resp.GetFlow(); f != nil && match(f) && !f.GetTime().AsTime().Before(since) {
				return l, true
			}
		}
		return hubblecli.Line{}, false
	}

	By("waiting until observe --follow streams: a first connect's flow comes through")
	warm := time.Now()
	Eventually(func(g Gomega) {
		if _, ok := newFlow(g, warm); !ok {
			sr.Connect(ctx, scenario.Client, server.Status.PodIP, 80) // the follow may have started after the last one
		}
		_, ok := newFlow(g, warm)
		g.Expect(ok).To(BeTrue(), "no flow client -> server:80 on observe --follow yet")
	}).WithContext(ctx).WithTimeout(45 * time.Second).WithPolling(time.Second).Should(Succeed())

	By("connecting once more and timing its flow to the CLI")
	started := time.Now()
	Expect(sr.Connect(ctx, scenario.Client, server.Status.PodIP, 80).Reachable).To(BeTrue())
	var got hubblecli.Line
	Eventually(func(g Gomega) {
		l, ok := newFlow(g, started)
		g.Expect(ok).To(BeTrue(), "the new connect's flow has not reached observe --follow")
		got = l
	}).WithContext(ctx).WithTimeout(30 * time.Second).WithPolling(50 * time.Millisecond).Should(Succeed())
	f := got.Resp.GetFlow()
	took := got.At.Sub(f.GetTime().AsTime())
	msg := fmt.Sprintf("observe --follow: flow %s reached the CLI %s after the datapath saw it (%s after the connect's exec began)",
		line(f), took.Round(time.Millisecond), got.At.Sub(started).Round(time.Millisecond))
	GinkgoWriter.Println("  " + msg)
	Expect(took).To(BeNumerically("<=", followBound), msg)
	return took
}
