//go:build e2e

package netpol

// North-south and node paths (issue 23 item 2), the family `north-south`: the
// paths cilium-cli's connectivity tests probe beyond pod to pod, probed here as
// truth tables judged by the oracle under each policy step of
// policies.NorthSouth. In cilium-cli's names: pod-to-world and pod-to-cidr (the
// test world), pod-to-host and host-to-pod (a hostNetwork pod per node, as its
// host-netns DaemonSet), pod-to-local-nodeport and pod-to-remote-nodeport,
// node-to-nodeport, outside-to-nodeport (its "node without Cilium" is the test
// world's client here), pod-to-hostport, pod-to-service by name and ClusterIP,
// and ICMP echo where it pings. It lives in the
// matrix suite because it is a matrix family: sources x destinations under a
// sequence of policy sets, compared with fixtures/oracle until they agree.
//
// The world is offline: servers scripts/test-world.sh starts on the node subnet
// at TEST_WORLD_CIDR (`make test-world`), read from FLATNET_TEST_WORLD (default
// <repo>/_output/<kubeconfig name>.test-world.env). A cell the oracle cannot
// decide with kube-proxy (oracle.ErrNotEnforceable) is probed and printed with
// the quoted reason, never compared and never counted as passing.

import (
	"context"
	"fmt"
	"github.com/flatnet/flatnet/suites/framework"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/flatnet/flatnet/fixtures/oracle"
	"github.com/flatnet/flatnet/fixtures/policies"
	"github.com/flatnet/flatnet/probes/podexec"
	"github.com/flatnet/flatnet/suites/internal/paths"
	"github.com/flatnet/flatnet/suites/internal/workload"
	"github.com/flatnet/flatnet/suites/reachability"
	"github.com/flatnet/flatnet/suites/report"
)

// Ports of the north-south workload: the server's hostPort, and what the
// hostNetwork pods (the nodes) serve. Both outside the NodePort range.
const (
	nsHostPort = 28080
	nsNodePort = 28081
)

var _ = Describe("north-south and node paths", Serial, func() {
	It("north-south: pods, nodes and an outside client on NodePort, hostPort, node, Service (ClusterIP and DNS name), world and CIDR paths, TCP and ICMP, judged by the oracle", Label("north-south", "cilium", family("north-south")), func(ctx SpecContext) {
		runNorthSouth(ctx)
	})
})

// nsWorkload is what the family runs on: two worker nodes, a client on each, the
// server (NodePort Service, hostPort) beside the first client, a hostNetwork pod
// on each node standing for it.
type nsWorkload struct {
	ns           string
	nodeA, nodeB string
	nodeIPs      map[string]netip.Addr
	nodePort     int
	world        paths.TestWorld
}

func testWorldFile() string {
	if p := os.Getenv("FLATNET_TEST_WORLD"); p != "" {
		return p
	}
	name := strings.TrimSuffix(filepath.Base(os.Getenv("KUBECONFIG")), ".kubeconfig")
	return filepath.Join(cluster.RepoRoot, "_output", name+".test-world.env")
}

func runNorthSouth(ctx context.Context) {
	res := report.CaseResult{Name: "north-south", Family: "north-south"}
	defer func() { record(res) }()
	setupFail := func(format string, args ...any) {
		res.Error = fmt.Sprintf(format, args...)
		Fail(res.Error)
	}
	if cluster.CiliumCRDs != nil {
		setupFail("the north-south case needs CiliumNetworkPolicy: %v", cluster.CiliumCRDs)
	}
	world, err := paths.ReadTestWorld(ctx, testWorldFile())
	if err != nil {
		setupFail("%v", err)
	}
	w := setUpNorthSouth(ctx, world, setupFail)
	c, err := policies.NorthSouth(policies.NorthSouthEnv{Namespace: w.ns, NodeSubnet: cluster.Settings.NodeSubnet, TestWorld: world.CIDR, Excluded: world.Servers[1]})
	if err != nil {
		setupFail("%v", err)
	}
	res.Description = c.Description
	DeferCleanup(func(ctx SpecContext) {
		_, err := cluster.Policies.Apply(ctx, oracle.PolicySet{})
		Expect(err).NotTo(HaveOccurred(), "removing the case's policies")
	})
	snap, err := workload.Take(ctx, cluster.Clientset, []string{w.ns, oracle.KubeDNS.Namespace})
	if err != nil {
		setupFail("%v", err)
	}
	docker := &podexec.Runner{Exec: paths.DockerExecutor{}, Options: runner.Options}
	groups := w.groups(snap, docker)
	var failures []string
	for i, step := range c.Steps {
		started := time.Now()
		By(fmt.Sprintf("north-south step %d/%d %q: %s", i+1, len(c.Steps), step.Name, strings.Join(refs(step.Policies), ", ")))
		changed, err := cluster.Policies.Apply(ctx, step.Policies)
		if err != nil {
			setupFail("step %q: applying the policies: %v", step.Name, err)
		}
		for _, ch := range changed {
			GinkgoWriter.Println("  " + ch)
		}
		o, err := oracle.New(snap.Cluster, step.Policies)
		if err != nil {
			setupFail("step %q: the oracle: %v", step.Name, err)
		}
		results, err := paths.Converge(ctx, o, groups, cluster.Settings.EnforceTimeout, 250*time.Millisecond,
			func(s string) { GinkgoWriter.Printf("  %s: %s\n", step.Name, s) })
		if err != nil {
			setupFail("step %q: probing: %v", step.Name, err)
		}
		manifest, _ := policies.Manifests(step.Policies)
		sr := report.StepResult{Name: step.Name, Duration: time.Since(started), Policies: refs(step.Policies), Manifest: string(manifest)}
		for _, r := range results {
			sr.Comparisons = append(sr.Comparisons, r.Comparison)
			Expect(paths.Write(GinkgoWriter, r)).To(Succeed())
			if !r.OK() {
				failures = append(failures, fmt.Sprintf("step %q: %s", step.Name, r.Comparison.Summary()))
			}
			for _, n := range r.NotEnforceable {
				AddReportEntry("not enforceable with kube-proxy ("+step.Name+")", n)
			}
		}
		res.Steps = append(res.Steps, sr)
	}
	Expect(failures).To(BeEmpty(), "north-south paths that differ from the oracle:\n%s", strings.Join(failures, "\n"))
}

// setUpNorthSouth creates the namespace, pods and NodePort Service, and waits for them.
func setUpNorthSouth(ctx context.Context, world paths.TestWorld, setupFail func(string, ...any)) nsWorkload {
	workers, _, err := cluster.NodesByRole(ctx)
	if err != nil || len(workers) < 2 {
		setupFail("the north-south case needs two worker nodes (own node and another node): got %v (%v)", workers, err)
	}
	w := nsWorkload{ns: fmt.Sprintf("ns-%04x", time.Now().UnixNano()&0xffff), nodeA: workers[0], nodeB: workers[1], world: world, nodeIPs: map[string]netip.Addr{}}
	By(fmt.Sprintf("creating namespace %s: server and client-a on %s, client-b on %s, a hostNetwork pod on each", w.ns, w.nodeA, w.nodeB))
	// hostNetwork pods (host / remote-node) and a hostPort: Pod Security's privileged level
	// admits them; the suite's other namespaces stay restricted.
	Expect(cluster.CreateNamespace(ctx, corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: w.ns,
		Labels: map[string]string{framework.PodSecurityEnforceLabel: framework.PodSecurityPrivileged}}})).To(Succeed())
	image := cluster.Settings.ProbeImage
	pod := func(name, node, app string, hostNet bool, args ...string) corev1.Pod {
		return workload.Prepare(corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: w.ns, Name: name, Labels: map[string]string{"app": app}},
			Spec: corev1.PodSpec{
				NodeName: node, HostNetwork: hostNet, TerminationGracePeriodSeconds: new(int64),
				Containers: []corev1.Container{{Name: "probe", Image: image, Args: args}},
			},
		})
	}
	server := pod("server", w.nodeA, "server", false, "netexec", "--http-port=80", "--udp-port=80")
	server.Spec.Containers[0].Ports = []corev1.ContainerPort{{Name: "http", ContainerPort: 80, HostPort: nsHostPort, Protocol: corev1.ProtocolTCP}}
	serve := fmt.Sprintf("--http-port=%d", nsNodePort)
	pods := []corev1.Pod{
		server,
		pod("client-a", w.nodeA, "client", false, "pause"),
		pod("client-b", w.nodeB, "client", false, "pause"),
		pod("host-a", w.nodeA, "host", true, "netexec", serve, "--udp-port=-1"),
		pod("host-b", w.nodeB, "host", true, "netexec", serve, "--udp-port=-1"),
	}
	Expect(workload.CreatePods(ctx, cluster.Clientset, pods)).To(Succeed())
	svc := corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: w.ns, Name: "server"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeNodePort, Selector: map[string]string{"app": "server"},
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(80), Protocol: corev1.ProtocolTCP}}},
	}
	Expect(workload.CreateServices(ctx, cluster.Clientset, []corev1.Service{svc})).To(Succeed())
	var keys []workload.Key
	for _, p := range pods {
		keys = append(keys, workload.Key{Namespace: w.ns, Name: p.Name})
	}
	Expect(workload.WaitPodsReady(ctx, cluster.Clientset, keys, 3*time.Minute)).To(Succeed())
	Expect(workload.WaitServiceEndpoints(ctx, cluster.Clientset, []workload.Key{{Namespace: w.ns, Name: "server"}}, time.Minute)).To(Succeed())
	got, err := cluster.Clientset.CoreV1().Services(w.ns).Get(ctx, "server", metav1.GetOptions{})
	Expect(err).NotTo(HaveOccurred())
	w.nodePort = int(got.Spec.Ports[0].NodePort)
	return w
}

// groups are the tables of the family: who probes what, and how the oracle decides it.
func (w nsWorkload) groups(snap workload.Snapshot, docker *podexec.Runner) []paths.Group {
	for _, n := range snap.Cluster.Nodes {
		w.nodeIPs[n.Name] = n.IP
	}
	server := oracle.PodPeer(w.ns, "server")
	serverIP := snap.PodIPs[server.String()]
	clusterIP := snap.ClusterIPs[w.ns+"/server"]
	hostPort := func(ip netip.Addr, port int) string { return netip.AddrPortFrom(ip, uint16(port)).String() }
	src := func(label, name string, peer oracle.Peer) paths.Source {
		return paths.Source{Label: label, Peer: peer, Exec: podexec.Pod{Namespace: w.ns, Name: name}, Runner: runner}
	}
	clientA, clientB := src("client-a", "client-a", oracle.PodPeer(w.ns, "client-a")), src("client-b", "client-b", oracle.PodPeer(w.ns, "client-b"))
	hostA, hostB := src("node "+w.nodeA, "host-a", oracle.NodePeer(w.nodeA)), src("node "+w.nodeB, "host-b", oracle.NodePeer(w.nodeB))
	outside := paths.Source{Label: "outside " + w.world.ClientIP.String(), Peer: oracle.WorldPeer(w.world.ClientIP),
		Exec: podexec.Pod{Namespace: "docker", Name: w.world.Client}, Runner: docker}

	toServer := paths.Dest{Label: "server " + serverIP.String(), Target: hostPort(serverIP, 80),
		Decide: func(o *oracle.Oracle, s oracle.Peer) (oracle.Verdict, error) {
			return o.Decide(s, server, 80, oracle.TCP)
		}}
	toClusterIP := paths.Dest{Label: "ClusterIP " + clusterIP.String(), Target: hostPort(clusterIP, 80),
		Decide: func(o *oracle.Oracle, s oracle.Peer) (oracle.Verdict, error) {
			v, _, err := o.DecideService(s, w.ns, "server", 80, oracle.TCP)
			return v, err
		}}
	name := "server." + w.ns + ".svc.cluster.local"
	toName := paths.Dest{Label: name, Target: name + ":80",
		Decide: func(o *oracle.Oracle, s oracle.Peer) (oracle.Verdict, error) {
			v, _, err := o.DecideServiceByName(s, w.ns, "server", 80, oracle.TCP, oracle.KubeDNS)
			return v, err
		}}
	toNodePort := func(node string) paths.Dest {
		return paths.Dest{Label: "NodePort " + node + ":" + strconv.Itoa(w.nodePort), Target: hostPort(w.nodeIPs[node], w.nodePort),
			Decide: func(o *oracle.Oracle, s oracle.Peer) (oracle.Verdict, error) {
				v, _, err := o.DecideNodePort(s, node, w.ns, "server", 80, oracle.TCP)
				return v, err
			}}
	}
	toHostPort := paths.Dest{Label: "hostPort " + w.nodeA + ":" + strconv.Itoa(nsHostPort), Target: hostPort(w.nodeIPs[w.nodeA], nsHostPort),
		Decide: func(o *oracle.Oracle, s oracle.Peer) (oracle.Verdict, error) {
			return o.DecideHostPort(s, server, nsHostPort, 80, oracle.TCP)
		}}
	toNode := func(node string, proto oracle.Protocol) paths.Dest {
		port := nsNodePort
		if proto == oracle.ICMP {
			port = 0
		}
		return paths.Dest{Label: "node " + node, Target: hostPort(w.nodeIPs[node], port),
			Decide: func(o *oracle.Oracle, s oracle.Peer) (oracle.Verdict, error) {
				return o.Decide(s, oracle.NodePeer(node), port, proto)
			}}
	}
	toWorld := func(i int, proto oracle.Protocol) paths.Dest {
		ip, port := w.world.Servers[i], 80
		if proto == oracle.ICMP {
			port = 0
		}
		return paths.Dest{Label: fmt.Sprintf("world %s", ip), Target: hostPort(ip, port),
			Decide: func(o *oracle.Oracle, s oracle.Peer) (oracle.Verdict, error) {
				return o.Decide(s, oracle.WorldPeer(ip), port, proto)
			}}
	}
	pingServer := paths.Dest{Label: "server " + serverIP.String(), Target: hostPort(serverIP, 0),
		Decide: func(o *oracle.Oracle, s oracle.Peer) (oracle.Verdict, error) {
			return o.Decide(s, server, 0, oracle.ICMP)
		}}
	tcp := reachability.PortProtocol{Port: 80, Protocol: oracle.TCP}
	icmp := reachability.PortProtocol{Port: 0, Protocol: oracle.ICMP}
	return []paths.Group{
		{Title: "pods -> pod, Service, NodePort, hostPort, nodes, world (TCP)", Port: tcp,
			From: []paths.Source{clientA, clientB},
			To: []paths.Dest{toServer, toClusterIP, toName, toNodePort(w.nodeA), toNodePort(w.nodeB), toHostPort,
				toNode(w.nodeA, oracle.TCP), toNode(w.nodeB, oracle.TCP), toWorld(0, oracle.TCP), toWorld(1, oracle.TCP)}},
		{Title: "nodes -> pod, Service, NodePort, hostPort (TCP)", Port: tcp,
			From: []paths.Source{hostA, hostB},
			To:   []paths.Dest{toServer, toClusterIP, toNodePort(w.nodeA), toNodePort(w.nodeB), toHostPort}},
		{Title: "outside -> pod, NodePort, hostPort (TCP)", Port: tcp,
			From: []paths.Source{outside},
			To:   []paths.Dest{toServer, toNodePort(w.nodeA), toNodePort(w.nodeB), toHostPort}},
		{Title: "pods -> pod, nodes, world (ICMP echo)", Port: icmp,
			From: []paths.Source{clientA, clientB},
			To:   []paths.Dest{pingServer, toNode(w.nodeA, oracle.ICMP), toNode(w.nodeB, oracle.ICMP), toWorld(0, oracle.ICMP), toWorld(1, oracle.ICMP)}},
		{Title: "nodes and outside -> pod (ICMP echo)", Port: icmp,
			From: []paths.Source{hostA, hostB, outside},
			To:   []paths.Dest{pingServer}},
	}
}
