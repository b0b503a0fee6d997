package policyset

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/flatnet/flatnet/fixtures/oracle"
	"github.com/flatnet/flatnet/fixtures/policies"
	"github.com/flatnet/flatnet/fixtures/topology"
	"github.com/flatnet/flatnet/internal/apiservertest"
)

// apiServerAssets finds kube-apiserver and etcd (internal/apiservertest), or
// ends the test saying how to get them.
func apiServerAssets(t *testing.T) string {
	t.Helper()
	return apiservertest.Require(t)
}

func repoRoot(t *testing.T) string {
	t.Helper()
	d, _ := os.Getwd()
	for ; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d
		}
		if filepath.Dir(d) == d {
			t.Fatal("no go.mod above the test")
		}
	}
}

// A real kube-apiserver with the CRDs dataplane/manifests/crds ships: every
// policy of every fixture case goes through the Applier, is read back as the
// API server stored it (a schema that prunes a field would make the datapath
// enforce less than the oracle assumes), and is gone after a reset. Then the
// CNP CRD is removed and a set needing it is refused with nothing written.
func TestApplierAgainstARealAPIServer(t *testing.T) {
	te := &envtest.Environment{
		BinaryAssetsDirectory: apiServerAssets(t),
		CRDDirectoryPaths:     []string{filepath.Join(repoRoot(t), "dataplane", "manifests", "crds")},
		ErrorIfCRDPathMissing: true,
	}
	cfg, err := te.Start()
	if err != nil {
		t.Fatalf("starting kube-apiserver and etcd: %v", err)
	}
	t.Cleanup(func() { te.Stop() })
	cs := kubernetes.NewForConfigOrDie(cfg)
	dyn := dynamic.NewForConfigOrDie(cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	m := topology.Default("", false)
	subnet := netip.MustParsePrefix("10.224.0.0/16")
	planned, err := m.PlannedCluster(subnet, 3)
	if err != nil {
		t.Fatal(err)
	}
	for _, ns := range append(m.NamespaceObjects(), corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "default"}}) {
		if _, err := cs.CoreV1().Namespaces().Create(ctx, &ns, metav1.CreateOptions{}); err != nil && ns.Name != "default" {
			t.Fatal(err)
		}
	}
	env := policies.Env{Model: m, Cluster: planned, NodeSubnet: subnet, WorldCIDR: netip.MustParsePrefix("192.0.2.0/24")}
	cases, err := policies.All(env)
	if err != nil {
		t.Fatal(err)
	}
	random, err := policies.Random(env, 7, 25)
	if err != nil {
		t.Fatal(err)
	}
	cases = append(append(cases, random...), policies.SeedCases(topology.DefaultSeed())...)

	a := New(cs, dyn)
	objects := 0
	for _, c := range cases {
		for _, step := range c.Steps {
			if _, err := a.Apply(ctx, step.Policies); err != nil {
				t.Fatalf("case %s step %q: %v", c.Name, step.Name, err)
			}
			objects += checkStored(ctx, t, cs, dyn, c.Name, step.Policies)
		}
		if _, err := a.Apply(ctx, oracle.PolicySet{}); err != nil {
			t.Fatalf("case %s: removing its policies: %v", c.Name, err)
		}
		if left := managed(ctx, t, cs, dyn, m); len(left) > 0 {
			t.Fatalf("case %s: left behind %v", c.Name, left)
		}
	}
	t.Logf("%d cases, %d policy objects written and read back", len(cases), objects)

	// An update that changes a policy replaces it in place.
	upd := cases[0]
	for _, c := range cases {
		if c.Name == "update-networkpolicy" {
			upd = c
		}
	}
	changed, err := a.Apply(ctx, upd.Steps[0].Policies)
	if err != nil || len(changed) != 1 || !strings.HasPrefix(changed[0], "created") {
		t.Fatalf("first step: %v %v", changed, err)
	}
	changed, err = a.Apply(ctx, upd.Steps[1].Policies)
	if err != nil || len(changed) != 1 || !strings.HasPrefix(changed[0], "replaced") {
		t.Fatalf("second step: %v %v, want one replacement", changed, err)
	}
	if changed, err := a.Apply(ctx, upd.Steps[1].Policies); err != nil || len(changed) != 0 {
		t.Fatalf("the same set again: %v %v, want no change", changed, err)
	}
	if err := a.Reset(ctx); err != nil {
		t.Fatal(err)
	}

	// Without the CNP CRD: refused, naming the fix, and nothing written.
	c, err := client.New(cfg, client.Options{Scheme: scheme(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(ctx, &apiextensionsv1.CustomResourceDefinition{ObjectMeta: metav1.ObjectMeta{Name: "ciliumnetworkpolicies.cilium.io"}}); err != nil {
		t.Fatal(err)
	}
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		return CheckCiliumCRDs(cs.Discovery(), oracle.KindCNP) != nil, nil
	})
	if err != nil {
		t.Fatal("the API server still serves CiliumNetworkPolicy a minute after its CRD was deleted")
	}
	var mixed oracle.PolicySet
	for _, c := range cases {
		if c.Name == "cnp-and-networkpolicy" {
			mixed = c.Steps[0].Policies
		}
	}
	if len(mixed.NetworkPolicies) == 0 || len(mixed.CiliumPolicies) == 0 {
		t.Fatal("fixture cnp-and-networkpolicy should hold both kinds")
	}
	_, err = a.Apply(ctx, mixed)
	if err == nil || !strings.Contains(err.Error(), "CRDs are not installed") || !strings.Contains(err.Error(), "dataplane/manifests/crds") {
		t.Fatalf("Apply without the CRD: %v, want the missing CRD named with its fix", err)
	}
	if left := managed(ctx, t, cs, nil, m); len(left) > 0 {
		t.Fatalf("a refused set was half applied: %v", left)
	}
}

func scheme(t *testing.T) *runtime.Scheme {
	s := runtime.NewScheme()
	if err := apiextensionsv1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	return s
}

// checkStored reads every policy of ps back and compares its spec with what
// was sent; it returns how many objects it checked.
func checkStored(ctx context.Context, t *testing.T, cs kubernetes.Interface, dyn dynamic.Interface, name string, ps oracle.PolicySet) int {
	t.Helper()
	for _, np := range ps.NetworkPolicies {
		got, err := cs.NetworkingV1().NetworkPolicies(np.Namespace).Get(ctx, np.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("case %s: %v", name, err)
		}
		if got.Labels[managedByLabel] != managedByValue {
			t.Errorf("case %s: NetworkPolicy %s/%s not labelled as the suite's", name, np.Namespace, np.Name)
		}
		want := np.Spec.DeepCopy()
		// The API server defaults policyTypes and port protocols.
		if len(want.PolicyTypes) == 0 {
			want.PolicyTypes = got.Spec.PolicyTypes
		}
		if !equality.Semantic.DeepEqual(got.Spec.PodSelector, want.PodSelector) || len(got.Spec.Ingress) != len(want.Ingress) || len(got.Spec.Egress) != len(want.Egress) {
			t.Errorf("case %s: NetworkPolicy %s/%s stored as %+v, sent %+v", name, np.Namespace, np.Name, got.Spec, np.Spec)
		}
	}
	for _, cp := range ps.CiliumPolicies {
		sent, err := cp.Unstructured()
		if err != nil {
			t.Fatal(err)
		}
		got, err := Get(ctx, dyn, cp.Ref())
		if err != nil {
			t.Fatalf("case %s: %v", name, err)
		}
		same, err := SameSpec(got.Object["spec"], sent.Object["spec"])
		if err != nil {
			t.Fatal(err)
		}
		if !same {
			t.Errorf("case %s: %s: the API server stored spec\n  %v\nthe suite sent\n  %v\n(the CRD schema prunes or defaults fields the oracle relies on)", name, cp.Ref(), got.Object["spec"], sent.Object["spec"])
		}
	}
	return len(ps.NetworkPolicies) + len(ps.CiliumPolicies)
}

// managed lists the suite's policies left in the model's namespaces.
func managed(ctx context.Context, t *testing.T, cs kubernetes.Interface, dyn dynamic.Interface, m topology.Model) []string {
	t.Helper()
	sel := metav1.ListOptions{LabelSelector: managedByLabel + "=" + managedByValue}
	var out []string
	for _, ns := range append(m.NamespaceObjects(), corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "default"}}) {
		nps, err := cs.NetworkingV1().NetworkPolicies(ns.Name).List(ctx, sel)
		if err != nil {
			t.Fatal(err)
		}
		for _, np := range nps.Items {
			out = append(out, "NetworkPolicy "+np.Namespace+"/"+np.Name)
		}
		if dyn == nil {
			continue
		}
		cnps, err := dyn.Resource(CNPResource).Namespace(ns.Name).List(ctx, sel)
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range cnps.Items {
			out = append(out, "CiliumNetworkPolicy "+o.GetNamespace()+"/"+o.GetName())
		}
	}
	return out
}

func TestSameSpec(t *testing.T) {
	fromAPI := map[string]any{"ports": []any{map[string]any{"port": "80", "endPort": int64(81)}}}
	fromYAML := map[string]any{"ports": []any{map[string]any{"port": "80", "endPort": float64(81)}}}
	if same, err := SameSpec(fromAPI, fromYAML); err != nil || !same {
		t.Errorf("int64 81 and float64 81: same=%v err=%v, want the same spec", same, err)
	}
	pruned := map[string]any{"ports": []any{map[string]any{"port": "80"}}}
	if same, _ := SameSpec(fromAPI, pruned); same {
		t.Error("a spec missing endPort compares equal")
	}
}
