//go:build e2e

// Package observability checks what flatnet says about its own decisions,
// through the real flatnetctl and the agents' metrics, on the seed scenario
// in a namespace of its own: a default-deny CiliumNetworkPolicy on
// app=server makes the client's `./agnhost connect <ip>:80 --timeout=3s
// --protocol=tcp` print TIMEOUT, and then
//
//   - `flatnetctl flows --verdict DROPPED -o json` shows that SYN, client to
//     server port 80, with ingress_denied_by naming default-deny (Cilium's
//     flow field names);
//   - the server node agent's flatnet_datapath_packets_total{INGRESS,
//     DROPPED, POLICY_DENIED} grows across the connect;
//   - `flatnetctl explain` says DROPPED by default-deny, as the oracle does,
//     on the node and with the policies of the datapath's own flow record;
//
// after the policy is deleted the connect is a FORWARDED flow, with an
// allow rule added it is one with ingress_allowed_by naming the rule's
// policy, and bad input fails naming what was wrong. Expectations come from
// fixtures/oracle.
package observability

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clientexec "k8s.io/client-go/util/exec"

	"github.com/flatnet/flatnet/fixtures/oracle"
	"github.com/flatnet/flatnet/fixtures/topology"
	"github.com/flatnet/flatnet/probes/podexec"
	"github.com/flatnet/flatnet/suites/framework"
	"github.com/flatnet/flatnet/suites/internal/agnhost"
	"github.com/flatnet/flatnet/suites/internal/cmdstream"
	"github.com/flatnet/flatnet/suites/internal/flatnetctl"
	"github.com/flatnet/flatnet/suites/internal/seedrun"
	"github.com/flatnet/flatnet/suites/internal/workload"
)

func TestObservability(t *testing.T) { kc.Run(t) }

// The agents' ports, as dataplane/manifests/agent.yaml deploys them: health
// and metrics on the node's addresses, the flows and explain API on the
// host's loopback only (--api-addr).
const (
	agentPort    = "9969"
	agentAPIPort = "9970"
)

var (
	// Privileged: the ARP spoofer holds NET_ADMIN and NET_RAW.
	kc       = framework.New("observability", framework.Options{Settings: true, Policies: true, PodSecurity: framework.PodSecurityPrivileged})
	ctl      flatnetctl.CLI
	scenario = topology.DefaultSeed()
	sr       *seedrun.Run
)

var _ = kc.BeforeSuite(func(ctx SpecContext) {
	By("building flatnetctl from this tree")
	var err error
	ctl, err = flatnetctl.Build(ctx, kc.RepoRoot, GinkgoT().TempDir(), os.Getenv("KUBECONFIG"))
	Expect(err).NotTo(HaveOccurred())

	scenario.Namespace = fmt.Sprintf("flatnet-obs-%04x", time.Now().UnixNano()&0xffff)
	sr = seedrun.New(kc, scenario)
	By(fmt.Sprintf("creating namespace %s with pods %s (app=server, serve-hostname --tcp on 80) and %s", scenario.Namespace, scenario.Server, scenario.Client))
	sr.Deploy(ctx, workload.Prepare(scenario.ServerPod(kc.Settings.ProbeImage)), workload.Prepare(scenario.ClientPod(kc.Settings.ProbeImage)))
})

func podKey(name string) workload.Key { return workload.Key{Namespace: scenario.Namespace, Name: name} }

var _ = Describe("flows, metrics and explain [flatnet]", Label("flatnet", "observability"), Ordered, func() {
	// The flows of one connect are looked up from just before it.
	var deniedAt time.Time
	var denied flowLine

	It("shows the seed's denied connect as a DROPPED flow naming default-deny, counted by the server node's agent", Label("cilium"), func(ctx SpecContext) {
		Expect(kc.CiliumCRDs).NotTo(HaveOccurred())
		step := sr.Step("seed-default-deny", 0)
		verdict := sr.MoveTo(ctx, step.Policies)
		Expect(verdict.Allowed).To(BeFalse(), "the oracle: %s", verdict)
		server := sr.Pod(ctx, scenario.Server)

		before, err := dropCounter(ctx, server.Spec.NodeName, "INGRESS", "POLICY_DENIED")
		Expect(err).NotTo(HaveOccurred())
		deniedAt = time.Now()
		fw := followFlows(ctx, "DROPPED", deniedAt)
		defer fw.Stop()
		a := connect(ctx, server.Status.PodIP)
		Expect(a.Word).To(Equal("TIMEOUT"), "a policy drop times out (%s)", a)
		Eventually(func(g Gomega) {
			after, err := dropCounter(ctx, server.Spec.NodeName, "INGRESS", "POLICY_DENIED")
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(after).To(BeNumerically(">", before), "flatnet_datapath_packets_total{direction=INGRESS,verdict=DROPPED,reason=POLICY_DENIED} on node %s", server.Spec.NodeName)
			GinkgoWriter.Printf("  node %s: dropped ingress packets (POLICY_DENIED) %v -> %v across the connect\n", server.Spec.NodeName, before, after)
		}).WithContext(ctx).WithTimeout(10 * time.Second).WithPolling(500 * time.Millisecond).Should(Succeed())

		client := sr.Pod(ctx, scenario.Client)
		denied = flowInto(ctx, fw, client, server, "DROPPED", deniedAt)
		fl := denied.Flow
		Expect(fl.NodeName).To(Equal(server.Spec.NodeName), "the SYN is dropped entering the server, on its node")
		Expect(fl.TrafficDirection).To(Equal("INGRESS"))
		Expect(fl.DropReasonDesc).To(Equal("POLICY_DENIED"))
		Expect(fl.EgressDeniedBy).To(BeEmpty())
		Expect(names(fl.IngressDeniedBy)).To(ConsistOf(refNames(verdict.Ingress.SelectedBy)), "ingress_denied_by vs the oracle's %s", verdict.Ingress)
		Expect(names(fl.IngressDeniedBy)).To(ContainElement("CiliumNetworkPolicy " + scenario.Namespace + "/default-deny"))
	})

	It("explains the denied connect as the oracle decides it, on the node and with the policies of the datapath's flow", Label("cilium"), func(ctx SpecContext) {
		Expect(denied.Flow.Verdict).To(Equal("DROPPED"), "needs the DROPPED flow of the spec before")
		verdict := sr.Verdict(ctx, sr.Step("seed-default-deny", 0).Policies)
		target := []string{scenario.Namespace + "/" + scenario.Client, scenario.Namespace + "/" + scenario.Server + ":80/tcp"}

		text := run(ctx, append([]string{"explain"}, target...)...)
		Expect(text.ExitCode).To(Equal(0), "%s", text)
		GinkgoWriter.Print(text.Stdout)
		Expect(text.Stdout).To(MatchRegexp(`(?m)^\s*ingress\s+DROPPED\b.*CiliumNetworkPolicy %s/default-deny`, regexp.QuoteMeta(scenario.Namespace)))
		Expect(text.Stdout).To(MatchRegexp(`(?m)^verdict: DROPPED$`))

		e := explain(ctx, target...)
		Expect(e.Verdict).To(Equal("DROPPED"))
		checkAgainstOracle(e, verdict)
		// The datapath's own record of the SYN and the compiled policy's
		// answer are the same decision: same node, same policies.
		Expect(e.Ingress.NodeName).To(Equal(denied.Flow.NodeName))
		Expect(names(e.Ingress.Policies)).To(ConsistOf(names(denied.Flow.IngressDeniedBy)))
	})

	It("shows the connect as a FORWARDED flow once the policy is deleted", Label("cilium"), func(ctx SpecContext) {
		Expect(kc.CiliumCRDs).NotTo(HaveOccurred())
		step := sr.Step("seed-default-deny", 1)
		verdict := sr.MoveTo(ctx, step.Policies)
		Expect(verdict.Allowed).To(BeTrue(), "the oracle: %s", verdict)
		f := forwarded(ctx)
		Expect(f.Flow.IngressAllowedBy).To(BeEmpty(), "no policy is left to allow it")
		e := explain(ctx, scenario.Namespace+"/"+scenario.Client, scenario.Namespace+"/"+scenario.Server+":80/tcp")
		Expect(e.Verdict).To(Equal("FORWARDED"))
		checkAgainstOracle(e, verdict)
	})

	It("names the allowing policy in ingress_allowed_by when an allow rule lets the client in", Label("cilium"), func(ctx SpecContext) {
		Expect(kc.CiliumCRDs).NotTo(HaveOccurred())
		c := sr.Cases["seed-allow-client-port"]
		Expect(c.Steps).To(HaveLen(1), "fixtures/policies seed-allow-client-port")
		verdict := sr.MoveTo(ctx, c.Steps[0].Policies)
		Expect(verdict.Allowed).To(BeTrue(), "the oracle: %s", verdict)
		Expect(verdict.Ingress.AllowedBy).NotTo(BeEmpty())
		f := forwarded(ctx)
		Expect(names(f.Flow.IngressAllowedBy)).To(ConsistOf(refNames(verdict.Ingress.AllowedBy)), "ingress_allowed_by vs the oracle's %s", verdict.Ingress)
		Expect(f.Flow.Rule).NotTo(BeEmpty(), "flatnet_rule names the rule inside the policy")
		e := explain(ctx, scenario.Namespace+"/"+scenario.Client, scenario.Namespace+"/"+scenario.Server+":80/tcp")
		Expect(e.Verdict).To(Equal("FORWARDED"))
		checkAgainstOracle(e, verdict)
		Expect(e.Ingress.Rule).To(Equal(f.Flow.Rule), "explain and the datapath's flow name the same rule")
	})

	It("fails on bad input naming what was wrong", func(ctx SpecContext) {
		ns := scenario.Namespace
		for _, c := range []struct {
			args []string
			want []string
		}{
			{[]string{"explain", ns + "/ghost", ns + "/" + scenario.Server + ":80/tcp"}, []string{`pod "ghost" not found in namespace "` + ns + `"`}},
			{[]string{"explain", ns + "/" + scenario.Client, ns + "/ghost:80"}, []string{`destination`, `pod "ghost" not found in namespace "` + ns + `"`}},
			{[]string{"explain", ns + "-missing/client", ns + "-missing/server:80"}, []string{`namespace "` + ns + `-missing" not found`}},
			{[]string{"explain", ns + "/" + scenario.Client, ns + "/" + scenario.Server}, []string{"missing the port"}},
			{[]string{"flows", "--namespace", ns, "--verdict", "MAYBE"}, []string{"--verdict", `"MAYBE"`, "FORWARDED or DROPPED"}},
			{[]string{"flows", "--port", "http"}, []string{"--port", `"http"`}},
			{[]string{"flows", "-o", "yaml"}, []string{"-o", `"yaml"`}},
		} {
			r := run(ctx, c.args...)
			GinkgoWriter.Printf("  flatnetctl %s -> exit %d: %s", strings.Join(c.args, " "), r.ExitCode, r.Stderr)
			Expect(r.ExitCode).NotTo(Equal(0), "%s", r)
			for _, w := range c.want {
				Expect(r.Stderr).To(ContainSubstring(w), "%s", r)
			}
			Expect(r.Stdout).To(BeEmpty(), "an error prints nothing else: %s", r)
		}
	})
})

var _ = Describe("the agents' flows API [flatnet]", Label("flatnet", "observability", "security"), func() {
	// Every pod reaches its own node (pod -> own node is always allowed) and
	// the agent is host-network: what the node's addresses serve, every pod of
	// every namespace reads. Only metrics and probes may be there; flows and
	// explain are on the host's loopback, reached through pods/portforward.
	It("a pod without credentials cannot read flows", func(ctx SpecContext) {
		client := sr.Pod(ctx, scenario.Client)
		node := client.Status.HostIP
		Expect(node).NotTo(BeEmpty(), "pod %s has no host IP", client.Name)
		// The client's own traffic makes sure its node has flows to leak.
		connect(ctx, sr.Pod(ctx, scenario.Server).Status.PodIP)
		for _, c := range []struct{ url, why string }{
			{fmt.Sprintf("http://%s:%s/v1/flows", node, agentPort), "the metrics port serves no flows"},
			{fmt.Sprintf("http://%s:%s/v1/flows?follow=true", node, agentPort), "the metrics port serves no follow stream"},
			{fmt.Sprintf("http://%s:%s/v1/explain?namespace=%s&pod=%s&direction=INGRESS&remote=%s&port=80", node, agentPort, scenario.Namespace, scenario.Server, client.Status.PodIP), "the metrics port serves no explain"},
			{fmt.Sprintf("http://%s:%s/v1/flows", node, agentAPIPort), "the API port listens on the host's loopback only"},
			{fmt.Sprintf("http://127.0.0.1:%s/v1/flows", agentAPIPort), "the pod's loopback is its own"},
		} {
			out, code := podWget(ctx, scenario.Client, c.url)
			GinkgoWriter.Printf("  %s: wget %s -> exit %d: %s\n", scenario.Client, c.url, code, strings.TrimSpace(out))
			Expect(code).NotTo(Equal(0), "%s: a pod read %s: %s", c.why, c.url, out)
			Expect(out).To(Or(ContainSubstring("404"), ContainSubstring("403"), ContainSubstring("refused")), "%s: want 404, 403 or connection refused", c.why)
			Expect(out).NotTo(ContainSubstring(`"flow"`), "%s", c.why)
		}
		// The metrics port itself still answers (Prometheus scrapes it).
		out, code := podWget(ctx, scenario.Client, fmt.Sprintf("http://%s:%s/metrics", node, agentPort))
		Expect(code).To(Equal(0), "metrics on the node's address: %s", out)

		// The pod's service account may not port-forward to the agents either.
		sar, err := kc.Clientset.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{
			Spec: authorizationv1.SubjectAccessReviewSpec{
				User:               "system:serviceaccount:" + scenario.Namespace + ":" + client.Spec.ServiceAccountName,
				Groups:             []string{"system:serviceaccounts", "system:serviceaccounts:" + scenario.Namespace, "system:authenticated"},
				ResourceAttributes: &authorizationv1.ResourceAttributes{Namespace: framework.AgentNamespace, Verb: "create", Resource: "pods", Subresource: "portforward"},
			}}, metav1.CreateOptions{})
		Expect(err).NotTo(HaveOccurred())
		Expect(sar.Status.Allowed).To(BeFalse(), "service account %s/%s may create pods/portforward in %s: %s", scenario.Namespace, client.Spec.ServiceAccountName, framework.AgentNamespace, sar.Status.Reason)

		// The admin kubeconfig still reads them, through pods/portforward.
		r := run(ctx, "flows", "--namespace", scenario.Namespace, "--last", "5", "-o", "json")
		Expect(r.ExitCode).To(Equal(0), "%s", r)
		Expect(r.Stderr).To(BeEmpty(), "every agent answers through pods/portforward: %s", r)
		Expect(r.Stdout).To(ContainSubstring(`"flow"`), "the client's connects left flows: %s", r)
	})
})

var _ = Describe("a pod's own frames [flatnet]", Label("flatnet", "observability", "security"), func() {
	// A pod may send ARP only about itself: a gratuitous claim of another pod's
	// address (the classic ARP spoof that would pull that pod's traffic to it) is
	// dropped at the pod's veth and counted under Cilium's reason, while the pod's
	// own traffic keeps flowing.
	It("drops a spoofed ARP from a pod and counts it as INVALID_SOURCE_IP", func(ctx SpecContext) {
		client, server := sr.Pod(ctx, scenario.Client), sr.Pod(ctx, scenario.Server)
		// The spoofer holds NET_ADMIN in its own netns (what any pod spec may ask
		// for where Pod Security allows it): it puts the server's address on its
		// eth0 and claims it by ARP, which busybox arping then sends as is.
		sp := workload.Prepare(scenario.ClientPod(kc.Settings.ProbeImage))
		sp.Name, sp.Labels = "spoofer", map[string]string{"app": "spoofer"}
		sp.Spec.NodeName = client.Spec.NodeName
		sp.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{Capabilities: &corev1.Capabilities{Add: []corev1.Capability{"NET_ADMIN", "NET_RAW"}}}
		Expect(workload.CreatePods(ctx, kc.Clientset, []corev1.Pod{sp})).To(Succeed())
		DeferCleanup(func(ctx SpecContext) {
			zero := int64(0)
			_ = kc.Clientset.CoreV1().Pods(scenario.Namespace).Delete(ctx, sp.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
		})
		Expect(workload.WaitPodsReady(ctx, kc.Clientset, []workload.Key{podKey(sp.Name)}, 2*time.Minute)).To(Succeed())
		own := sr.Pod(ctx, sp.Name).Status.PodIP
		Expect(server.Status.PodIP).NotTo(Equal(own))
		out, code := podExec(ctx, sp.Name, "ip", "addr", "add", server.Status.PodIP+"/32", "dev", "eth0")
		Expect(code).To(Equal(0), "ip addr add the server's address in the spoofer: %s", out)

		before, err := dropCounter(ctx, sp.Spec.NodeName, "EGRESS", "INVALID_SOURCE_IP")
		Expect(err).NotTo(HaveOccurred())
		out, code = podExec(ctx, sp.Name, "timeout", "10", "arping", "-c", "3", "-w", "3", "-I", "eth0", "-s", server.Status.PodIP, "169.254.1.1")
		GinkgoWriter.Printf("  spoofer: arping -s %s (the server's address) -> exit %d: %s\n", server.Status.PodIP, code, strings.TrimSpace(out))
		Expect(out).To(MatchRegexp(`Sent 3 probe`), "arping did not send its requests: the spec proves nothing")
		Expect(out).NotTo(MatchRegexp(`Received [1-9]`), "a spoofed ARP request was answered")
		Eventually(func(g Gomega) {
			after, err := dropCounter(ctx, sp.Spec.NodeName, "EGRESS", "INVALID_SOURCE_IP")
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(after-before).To(BeNumerically(">=", 3), "flatnet_datapath_packets_total{direction=EGRESS,verdict=DROPPED,reason=INVALID_SOURCE_IP} on node %s", sp.Spec.NodeName)
			GinkgoWriter.Printf("  node %s: dropped egress frames (INVALID_SOURCE_IP) %v -> %v across the spoof\n", sp.Spec.NodeName, before, after)
		}).WithContext(ctx).WithTimeout(15 * time.Second).WithPolling(500 * time.Millisecond).Should(Succeed())

		// Its own ARP still works: its gateway answers. The host veth answers by
		// proxy ARP after a random delay (proxy_delay, up to 0.8 s); on a loaded
		// node one request went unanswered within 3 s in a whole run (and in none
		// of the reruns), so it has three tries: a blocked ARP fails all three.
		out, code = podExec(ctx, sp.Name, "timeout", "10", "arping", "-c", "3", "-w", "6", "-I", "eth0", "-s", own, "169.254.1.1")
		Expect(code).To(Equal(0), "the pod's own ARP for its gateway: %s", out)
	})
})

// podExec runs a command in pod's container, returning what it printed (stdout
// and stderr) and its exit code.
func podExec(ctx context.Context, pod string, cmd ...string) (string, int) {
	var stdout, stderr bytes.Buffer
	err := kc.Exec.Exec(ctx, podexec.Pod{Namespace: scenario.Namespace, Name: pod}, cmd, nil, &stdout, &stderr)
	var exit clientexec.ExitError
	if err != nil && !errors.As(err, &exit) {
		Expect(err).NotTo(HaveOccurred(), "exec %v in %s/%s", cmd, scenario.Namespace, pod)
	}
	code := 0
	if err != nil {
		code = exit.ExitStatus()
	}
	return stdout.String() + stderr.String(), code
}

// podWget fetches url from inside pod with busybox wget (10 s), returning what
// it printed (the body on success, wget's error otherwise) and its exit code.
// Debian's busybox-static 1.35 segfaults in `wget -T` (exit 139), so busybox's
// own timeout bounds it instead.
func podWget(ctx context.Context, pod, url string) (string, int) {
	return podExec(ctx, pod, "timeout", "10", "wget", "-q", "-O", "-", url)
}

// forwarded runs the client's connect and returns its FORWARDED flow into
// the server, as `flatnetctl flows` shows it.
func forwarded(ctx context.Context) flowLine {
	server, client := sr.Pod(ctx, scenario.Server), sr.Pod(ctx, scenario.Client)
	since := time.Now()
	fw := followFlows(ctx, "FORWARDED", since)
	defer fw.Stop()
	a := connect(ctx, server.Status.PodIP)
	Expect(a.Reachable).To(BeTrue(), "%s", a)
	out := flowInto(ctx, fw, client, server, "FORWARDED", since)
	Expect(out.Flow.NodeName).To(Equal(server.Spec.NodeName))
	Expect(out.Flow.IngressDeniedBy).To(BeEmpty())
	return out
}

// followFlows starts `flatnetctl flows --follow` for the scenario's namespace and
// verdict since the given time, before the connect it is to show: an agent keeps
// its last 10,000 flows, 7-15 s' worth while other suites probe its pods, so a
// flow looked for by polling may be gone before a poll reads it.
func followFlows(ctx context.Context, verdict string, since time.Time) *cmdstream.Stream {
	s, err := ctl.Start(ctx, "flows", "--follow", "-o", "json", "--namespace", scenario.Namespace, "--verdict", verdict,
		"--since", since.UTC().Format(time.RFC3339Nano))
	Expect(err).NotTo(HaveOccurred())
	return s
}

// flowInto reads the followed flows (followFlows, started before the connect)
// until the verdict flow client -> server:80/TCP entering the server comes, and
// returns it. When it does not come within 30 s, the spec fails with every flow
// of the two addresses the agents still keep (flowsBetween), to tell a flow
// never recorded from one recorded otherwise.
func flowInto(ctx context.Context, fw *cmdstream.Stream, client, server *corev1.Pod, verdict string, since time.Time) flowLine {
	timeout := time.After(30 * time.Second)
	seen := 0
	for {
		select {
		case line, ok := <-fw.Lines:
			if !ok {
				Fail(fmt.Sprintf("flatnetctl flows --follow ended (%s) after %d lines: %s", fw.Ended(), seen, fw.Stop()))
			}
			seen++
			var l flowLine
			Expect(json.Unmarshal([]byte(line.Text), &l)).To(Succeed(), "line %q", line.Text)
			if into(l, client, server, verdict) {
				GinkgoWriter.Printf("  flow: %+v\n", l.Flow)
				return l
			}
		case <-timeout:
			Fail(fmt.Sprintf("no %s flow %s -> %s:80/TCP entering the server since %s among %d followed lines (flatnetctl stderr: %q)\n%s",
				verdict, client.Name, server.Name, since.UTC().Format(time.RFC3339Nano), seen, fw.Stop(),
				flowsBetween(ctx, client.Status.PodIP, server.Status.PodIP, since.Add(-5*time.Second))))
		case <-ctx.Done():
			Fail("interrupted while following flows: " + ctx.Err().Error())
		}
	}
}

// flowsBetween lists, one line each, the flows from or to either address that
// every agent kept since the given time, whatever their verdict or metadata.
func flowsBetween(ctx context.Context, a, b string, since time.Time) string {
	r := run(ctx, "flows", "-o", "json", "--since", since.UTC().Format(time.RFC3339Nano))
	var lines []string
	sc := bufio.NewScanner(strings.NewReader(r.Stdout))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var l flowLine
		if json.Unmarshal(sc.Bytes(), &l) != nil {
			continue
		}
		f := l.Flow
		if f.IP.Source != a && f.IP.Source != b && f.IP.Destination != a && f.IP.Destination != b {
			continue
		}
		port := uint16(0)
		if f.L4.TCP != nil {
			port = f.L4.TCP.DestinationPort
		}
		lines = append(lines, fmt.Sprintf("  %s %-22s %-7s %-9s %s -> %s:%d (%s -> %s)", f.Time.UTC().Format("15:04:05.000"), f.NodeName,
			f.TrafficDirection, f.Verdict, f.IP.Source, f.IP.Destination, port, f.Source.ref(), f.Destination.ref()))
	}
	head := fmt.Sprintf("flows from or to %s or %s since %s (flatnetctl flows: exit %d, %d lines; stderr %q):", a, b, since.UTC().Format("15:04:05.000"), r.ExitCode, len(lines), r.Stderr)
	if len(lines) > 60 {
		lines = append(lines[:60], fmt.Sprintf("  ... and %d more", len(lines)-60))
	}
	return strings.Join(append([]string{head}, lines...), "\n")
}

// connect runs the article's command line in the client's bash.
func connect(ctx context.Context, ip string) agnhost.Result {
	return sr.Connect(ctx, scenario.Client, ip, scenario.Port.Number)
}

func run(ctx context.Context, args ...string) flatnetctl.Result {
	r, err := ctl.Run(ctx, args...)
	Expect(err).NotTo(HaveOccurred())
	return r
}

// flowLine is one line of `flatnetctl flows -o json`, read with Cilium's
// field names (hubble observe -o json). It is written out here rather than
// taken from dataplane/flows, so a renamed field fails the suite.
type flowLine struct {
	Flow struct {
		Verdict        string `json:"verdict"`
		DropReasonDesc string `json:"drop_reason_desc"`
		IP             struct {
			Source      string `json:"source"`
			Destination string `json:"destination"`
		} `json:"IP"`
		L4 struct {
			TCP *struct {
				DestinationPort uint16 `json:"destination_port"`
			} `json:"TCP"`
		} `json:"l4"`
		Source           *endpoint   `json:"source"`
		Destination      *endpoint   `json:"destination"`
		NodeName         string      `json:"node_name"`
		TrafficDirection string      `json:"traffic_direction"`
		IngressAllowedBy []policyRef `json:"ingress_allowed_by"`
		EgressAllowedBy  []policyRef `json:"egress_allowed_by"`
		IngressDeniedBy  []policyRef `json:"ingress_denied_by"`
		EgressDeniedBy   []policyRef `json:"egress_denied_by"`
		Rule             string      `json:"flatnet_rule"`
		Time             time.Time   `json:"time"`
	} `json:"flow"`
	NodeName string    `json:"node_name"`
	Time     time.Time `json:"time"`
}

type endpoint struct {
	Namespace string `json:"namespace"`
	PodName   string `json:"pod_name"`
}

// ref is the endpoint as namespace/pod, "?" when the flow names none.
func (e *endpoint) ref() string {
	if e == nil || e.PodName == "" {
		return "?"
	}
	return e.Namespace + "/" + e.PodName
}

type policyRef struct {
	Kind      string `json:"kind"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
}

// names renders policies as the oracle's PolicyRef.String does.
func names(ps []policyRef) []string {
	out := []string{}
	for _, p := range ps {
		out = append(out, oracle.PolicyRef{Kind: oracle.PolicyKind(p.Kind), Namespace: p.Namespace, Name: p.Name}.String())
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

// into says whether l is the flow of client -> server:80/TCP entering the
// server with the verdict.
func into(l flowLine, client, server *corev1.Pod, verdict string) bool {
	f := l.Flow
	return f.Verdict == verdict && f.TrafficDirection == "INGRESS" &&
		f.IP.Source == client.Status.PodIP && f.IP.Destination == server.Status.PodIP &&
		f.L4.TCP != nil && f.L4.TCP.DestinationPort == uint16(scenario.Port.Number) &&
		f.Source != nil && f.Source.Namespace == client.Namespace && f.Source.PodName == client.Name &&
		f.Destination != nil && f.Destination.Namespace == server.Namespace && f.Destination.PodName == server.Name
}

// explanation is `flatnetctl explain -o json`, read with its own field names.
type explanation struct {
	Verdict string       `json:"verdict"`
	Egress  *explainSide `json:"egress"`
	Ingress *explainSide `json:"ingress"`
	Errors  []string     `json:"errors"`
}

type explainSide struct {
	NodeName string      `json:"node_name"`
	Verdict  string      `json:"verdict"`
	Reason   string      `json:"reason"`
	Rule     string      `json:"rule"`
	Policies []policyRef `json:"policies"`
	Datapath *struct {
		Verdict string `json:"verdict"`
		Rule    string `json:"rule"`
		Error   string `json:"error"`
	} `json:"datapath"`
	Agrees bool `json:"datapath_agrees"`
}

func explain(ctx context.Context, target ...string) explanation {
	r := run(ctx, append([]string{"explain", "-o", "json"}, target...)...)
	Expect(r.ExitCode).To(Equal(0), "%s", r)
	var e explanation
	Expect(json.Unmarshal([]byte(r.Stdout), &e)).To(Succeed(), "%s", r)
	Expect(e.Errors).To(BeEmpty())
	Expect(e.Egress).NotTo(BeNil(), "%s", r.Stdout)
	Expect(e.Ingress).NotTo(BeNil(), "%s", r.Stdout)
	// What the node's BPF maps hold must say the same as the policies.
	for _, side := range []*explainSide{e.Egress, e.Ingress} {
		Expect(side.Datapath).NotTo(BeNil(), "explain shows no datapath view: %s", r.Stdout)
		Expect(side.Datapath.Error).To(BeEmpty(), "%s", r.Stdout)
		Expect(side.Agrees).To(BeTrue(), "the datapath's maps disagree with the policies: %s", r.Stdout)
		Expect(side.Datapath.Verdict).To(Equal(side.Verdict))
	}
	return e
}

// checkAgainstOracle holds each direction of explain to the oracle's: the
// verdict, and the policies (those isolating the pod when nothing allows,
// the allowing one when a rule does).
func checkAgainstOracle(e explanation, v oracle.Verdict) {
	for _, d := range []struct {
		side *explainSide
		dv   *oracle.DirectionVerdict
	}{{e.Egress, v.Egress}, {e.Ingress, v.Ingress}} {
		want := "DROPPED"
		if d.dv.Allowed {
			want = "FORWARDED"
		}
		Expect(d.side.Verdict).To(Equal(want), "explain %+v vs the oracle's %s", *d.side, d.dv)
		switch d.dv.Reason {
		case oracle.ReasonNoRuleAllows:
			Expect(names(d.side.Policies)).To(ConsistOf(refNames(d.dv.SelectedBy)), "the oracle: %s", d.dv)
		case oracle.ReasonAllowed:
			Expect(d.side.Policies).To(HaveLen(1), "one rule decides: %+v", *d.side)
			Expect(refNames(d.dv.AllowedBy)).To(ContainElement(names(d.side.Policies)[0]), "the oracle: %s", d.dv)
		case oracle.ReasonNotIsolated:
			Expect(d.side.Policies).To(BeEmpty(), "the oracle: %s", d.dv)
		}
	}
	Expect(e.Verdict == "FORWARDED").To(Equal(v.Allowed), "explain's verdict vs the oracle's %s", v)
}

// dropCounter scrapes the agent on node (its metrics port, through the API
// server's pods/proxy) for the packets its datapath dropped in direction for reason.
func dropCounter(ctx context.Context, node, direction, reason string) (float64, error) {
	agent, err := kc.AgentOn(ctx, node)
	if err != nil {
		return 0, err
	}
	body, err := kc.Clientset.CoreV1().RESTClient().Get().Namespace(framework.AgentNamespace).Resource("pods").
		Name(agent.Name + ":" + agentPort).SubResource("proxy").Suffix("/metrics").DoRaw(ctx)
	if err != nil {
		return 0, fmt.Errorf("scraping agent %s on node %s: %w", agent.Name, node, err)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		return 0, fmt.Errorf("reading the metrics of agent %s: %w", agent.Name, err)
	}
	for _, m := range mfs["flatnet_datapath_scrape_errors"].GetMetric() {
		if m.GetGauge().GetValue() != 0 {
			return 0, fmt.Errorf("agent %s could not read a datapath map: %v", agent.Name, m.GetLabel())
		}
	}
	// No family yet: the datapath counted nothing on this node so far (the
	// callers assert growth, so a counter that never comes still fails them).
	fam := mfs["flatnet_datapath_packets_total"]
	sum := 0.0
	for _, m := range fam.GetMetric() {
		l := map[string]string{}
		for _, lp := range m.GetLabel() {
			l[lp.GetName()] = lp.GetValue()
		}
		if l["direction"] == direction && l["verdict"] == "DROPPED" && l["reason"] == reason {
			sum += m.GetCounter().GetValue()
		}
	}
	return sum, nil
}
