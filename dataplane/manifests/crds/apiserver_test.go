package crds

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// apiServerAssets finds kube-apiserver and etcd: KUBEBUILDER_ASSETS, else what
// scripts/node-image.sh built into the flatnet cache; "" when neither.
func apiServerAssets() string {
	has := func(dir string) bool {
		for _, b := range []string{"kube-apiserver", "etcd"} {
			if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
				return false
			}
		}
		return true
	}
	if d := os.Getenv("KUBEBUILDER_ASSETS"); d != "" && has(d) {
		return d
	}
	cache := os.Getenv("FLATNET_CACHE")
	if cache == "" {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, ".cache", "flatnet")
	}
	dirs, _ := filepath.Glob(filepath.Join(cache, "node-bin", "*"))
	slices.Sort(dirs)
	slices.Reverse(dirs)
	for _, d := range dirs {
		if has(d) {
			return d
		}
	}
	return ""
}

// On a real kube-apiserver with the shipped CRDs, a CNP with toFQDNs sent
// with client-go's default field validation (none: the server prunes unknown
// fields with a warning), or Ignore, is refused with the field named; the
// enforced subset is still stored.
func TestAPIServerRefusesUnenforcedFields(t *testing.T) {
	dir := apiServerAssets()
	if dir == "" {
		t.Skip("needs kube-apiserver and etcd (make node-image builds them, or set KUBEBUILDER_ASSETS); TestUnenforcedCiliumFieldsAreRefused covers the same in-process")
	}
	env := &envtest.Environment{
		BinaryAssetsDirectory: dir,
		CRDDirectoryPaths:     []string{"cilium.io_ciliumnetworkpolicies.yaml", "cilium.io_ciliumclusterwidenetworkpolicies.yaml"},
		ErrorIfCRDPathMissing: true,
	}
	cfg, err := env.Start()
	if err != nil {
		t.Fatalf("start kube-apiserver and etcd: %v", err)
	}
	t.Cleanup(func() { env.Stop() })
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	cnp := dyn.Resource(schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumnetworkpolicies"}).Namespace("default")
	ccnp := dyn.Resource(schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumclusterwidenetworkpolicies"})
	for _, c := range []struct {
		res   dynamic.ResourceInterface
		doc   string
		field string
	}{
		{cnp, "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: fqdn, namespace: default}\nspec:\n  endpointSelector: {}\n  egress:\n  - toFQDNs: [{matchName: api.example.com}]\n    toPorts: [{ports: [{port: \"443\", protocol: TCP}]}]\n", "toFQDNs"},
		{cnp, "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: svc, namespace: default}\nspecs:\n- endpointSelector: {}\n  egress: [{toServices: [{k8sService: {serviceName: db, namespace: default}}]}]\n", "toServices"},
		{ccnp, "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: l7}\nspec:\n  endpointSelector: {}\n  ingress: [{toPorts: [{ports: [{port: \"80\"}], rules: {http: [{method: GET}]}}]}]\n", "rules"},
		{ccnp, "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: grp}\nspec:\n  endpointSelector: {}\n  egressDeny: [{toCIDRSet: [{cidr: 10.0.0.0/8, cidrGroupRef: corp}]}]\n", "cidrGroupRef"},
	} {
		for _, v := range []string{"", metav1.FieldValidationIgnore, metav1.FieldValidationWarn} {
			obj, _ := toObj(t, c.doc)
			u := &unstructured.Unstructured{Object: obj}
			_, err := c.res.Create(ctx, u, metav1.CreateOptions{FieldValidation: v})
			if err == nil || !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), c.field+": flatnet does not enforce") {
				t.Errorf("%s with fieldValidation=%q: %v, want 422 naming %s", c.field, v, err, c.field)
			}
			if _, err := c.res.Get(ctx, u.GetName(), metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				t.Errorf("%s with fieldValidation=%q: the object was stored (%v)", c.field, v, err)
			}
		}
	}
	ok, _ := toObj(t, "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: subset, namespace: default}\nspec:\n  endpointSelector: {matchLabels: {app: a}}\n  egress:\n  - toCIDRSet: [{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}]\n    toPorts: [{ports: [{port: \"443\", protocol: TCP}]}]\n")
	if _, err := cnp.Create(ctx, &unstructured.Unstructured{Object: ok}, metav1.CreateOptions{}); err != nil {
		t.Errorf("a CNP of the enforced subset: %v", err)
	}
}
