package crds

import (
	"context"
	"strings"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

	"github.com/flatnet/flatnet/internal/apiservertest"
)

// On a real kube-apiserver with the shipped CRDs, a CNP with toFQDNs sent
// with client-go's default field validation (none: the server prunes unknown
// fields with a warning), or Ignore, is refused with the field named; the
// enforced subset is still stored.
func TestAPIServerRefusesUnenforcedFields(t *testing.T) {
	dir := apiservertest.Require(t) // TestUnenforcedCiliumFieldsAreRefused covers the same in-process
	dyn, stop, err := apiservertest.Start(dir, "cilium.io_ciliumnetworkpolicies.yaml", "cilium.io_ciliumclusterwidenetworkpolicies.yaml")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stop() })
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
