package main

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/flatnet/flatnet/fixtures/oracle"
	policycases "github.com/flatnet/flatnet/fixtures/policies"
	"github.com/flatnet/flatnet/internal/apiservertest"
	"github.com/flatnet/flatnet/suites/reachability"
)

// --cluster against a real kube-apiserver with Cilium's CRDs: the seed's nodes,
// pods (and a finished pod that held the server's address) and its
// default-deny CNP as the API server stores them. analyze's table is the
// oracle's on the seed's model; -f adds a policy and replaces the cluster's of
// the same name; a CNP in force with a field outside the subset is named.
func TestAnalyzeCluster(t *testing.T) {
	env := &envtest.Environment{
		BinaryAssetsDirectory: apiservertest.Require(t),
		CRDDirectoryPaths:     []string{filepath.Join("..", "..", "manifests", "crds")},
		ErrorIfCRDPathMissing: true,
	}
	rc, err := env.Start()
	if err != nil {
		t.Fatalf("start kube-apiserver and etcd: %v", err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	kube := kubernetes.NewForConfigOrDie(rc)
	dyn := dynamic.NewForConfigOrDie(rc)
	ctx := context.Background()

	seed, step := seedStep(t)
	cluster, err := seed.PlannedCluster(syntheticSubnet)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range cluster.Nodes {
		node, err := kube.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.Name}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: n.IP.String()}}
		if _, err := kube.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	createPod := func(p corev1.Pod, node, ip string, phase corev1.PodPhase) {
		t.Helper()
		p.Spec.NodeName = node
		created, err := kube.CoreV1().Pods(p.Namespace).Create(ctx, &p, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		created.Status.Phase = phase
		created.Status.PodIP = ip
		created.Status.PodIPs = []corev1.PodIP{{IP: ip}}
		if _, err := kube.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range cluster.Pods {
		obj := seed.ClientPod("probe")
		if p.Name == seed.Server {
			obj = seed.ServerPod("probe")
			// A finished pod keeps the address a running one now has.
			old := seed.ClientPod("probe")
			old.Name = "finished"
			createPod(old, p.Node, p.IP.String(), corev1.PodSucceeded)
		}
		createPod(obj, p.Node, p.IP.String(), corev1.PodRunning)
	}
	createCNP := func(cp oracle.CiliumPolicy) {
		t.Helper()
		u, err := cp.Unstructured()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := dyn.Resource(cnpResource).Namespace(cp.Metadata.Namespace).Create(ctx, u, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, cp := range step.Policies.CiliumPolicies {
		createCNP(cp)
	}

	admin, err := env.AddUser(envtest.User{Name: "analyst", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	kc, err := admin.KubeConfig()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	kubeconfig := writeFile(t, dir, "kubeconfig", kc)

	eps := []reachability.Endpoint{}
	for _, p := range cluster.Pods {
		peer := oracle.PodPeer(p.Namespace, p.Name)
		eps = append(eps, reachability.Endpoint{Label: peer.String(), Peer: peer})
	}
	ports := []reachability.PortProtocol{{Port: int(seed.Port.Number), Protocol: oracle.TCP}}
	// check runs analyze and holds every cell to the oracle's on the seed's
	// model with policies ps.
	check := func(what string, ps oracle.PolicySet, extra ...string) {
		t.Helper()
		orc, err := oracle.New(cluster, ps)
		if err != nil {
			t.Fatal(err)
		}
		want, err := reachability.Expected(orc, tableTitle, eps, eps, ports)
		if err != nil {
			t.Fatal(err)
		}
		args := append([]string{"analyze", "--kubeconfig", kubeconfig, "--cluster", "-n", seed.Namespace, "--port", ports[0].String(), "-o", "json"}, extra...)
		out, err := runCLI(t, args...)
		if err != nil {
			t.Fatalf("%s: analyze --cluster: %v\n%s", what, err, out)
		}
		var got tableJSON
		if err := json.Unmarshal([]byte(out), &got); err != nil {
			t.Fatalf("%s: %v\n%s", what, err, out)
		}
		if len(got.Cells) != len(want.Keys()) {
			t.Fatalf("%s: %d cells (pods %v), want %d", what, len(got.Cells), got.From, len(want.Keys()))
		}
		for _, c := range got.Cells {
			k := reachability.Key{From: c.From, To: c.To, PortProtocol: reachability.PortProtocol{Port: c.Port, Protocol: oracle.Protocol(c.Protocol)}}
			w, ok := want.Get(k)
			if !ok || w.Reachable != c.Allowed {
				t.Errorf("%s: %s: analyze allowed=%v, oracle %v (%s)", what, k, c.Allowed, w.Reachable, w.Detail)
			}
		}
	}
	check("the cluster's default-deny", step.Policies)
	// The finished pod is named as left out, not silently missing.
	if out, err := runCLI(t, "analyze", "--kubeconfig", kubeconfig, "--cluster", "-n", seed.Namespace); err != nil || !strings.Contains(out, "pods left out: 1 finished") {
		t.Errorf("analyze --cluster: want the finished pod named as left out; got %v\n%s", err, out)
	}

	// -f adds the seed's allow of the client on the port: the set of the
	// seed-allow-client-port case.
	var allowStep policycases.Step
	for _, c := range policycases.SeedCases(seed) {
		if c.Name == "seed-allow-client-port" {
			allowStep = c.Steps[0]
		}
	}
	var allow oracle.CiliumPolicy
	for _, cp := range allowStep.Policies.CiliumPolicies {
		if strings.HasPrefix(cp.Metadata.Name, "allow-client") {
			allow = cp
		}
	}
	data, err := policycases.Manifests(oracle.PolicySet{CiliumPolicies: []oracle.CiliumPolicy{allow}})
	if err != nil {
		t.Fatal(err)
	}
	check("plus -f allow-client", allowStep.Policies, "-f", writeFile(t, dir, "allow.yaml", data))

	// -f replaces the cluster's default-deny with one that selects no pod:
	// everything is open again.
	moved := step.Policies.CiliumPolicies[0]
	spec := *moved.Spec
	spec.EndpointSelector = metav1.LabelSelector{MatchLabels: map[string]string{"app": "nobody"}}
	moved.Spec = &spec
	data, err = policycases.Manifests(oracle.PolicySet{CiliumPolicies: []oracle.CiliumPolicy{moved}})
	if err != nil {
		t.Fatal(err)
	}
	check("-f default-deny on no pod instead", oracle.PolicySet{CiliumPolicies: []oracle.CiliumPolicy{moved}}, "-f", writeFile(t, dir, "moved.yaml", data))

	// A CNP the API server (with flatnet's CRD) accepts but the oracle does
	// not model (package oracle: enableDefaultDeny).
	partial, err := oracle.ParseCiliumPolicy([]byte("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: partial, namespace: default}\nspec:\n  endpointSelector: {}\n  egress:\n  - toPorts: [{ports: [{port: \"53\"}]}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	u, err := partial.Unstructured()
	if err != nil {
		t.Fatal(err)
	}
	u.Object["spec"].(map[string]any)["enableDefaultDeny"] = map[string]any{"egress": false}
	if _, err := dyn.Resource(cnpResource).Namespace("default").Create(ctx, u, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	out, err := runCLI(t, "analyze", "--kubeconfig", kubeconfig, "--cluster")
	if err == nil || !strings.Contains(err.Error(), "CiliumNetworkPolicy default/partial") || !strings.Contains(err.Error(), "spec.enableDefaultDeny") {
		t.Errorf("a CNP with enableDefaultDeny in the cluster: want an error naming it and the field, got %v\n%s", err, out)
	}
	if out != "" {
		t.Errorf("printed before failing:\n%s", out)
	}
}
