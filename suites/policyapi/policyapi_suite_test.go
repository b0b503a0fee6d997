//go:build e2e

// Package policyapi checks what the API server itself does with Cilium
// policies flatnet cannot enforce: a field outside flatnet's subset must be
// refused, never pruned into a broader rule, whatever the client's field
// validation (client-go, Helm and controllers send none, which prunes).
package policyapi

import (
	"context"
	"testing"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/e2e-framework/klient/decoder"

	"github.com/flatnet/flatnet/suites/framework"
)

func TestPolicyAPI(t *testing.T) { kc.Run(t) }

const ns = "flatnet-policyapi"

var (
	kc   = framework.New("policyapi", framework.Options{})
	cnp  = schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumnetworkpolicies"}
	ccnp = schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumclusterwidenetworkpolicies"}
)

var _ = kc.BeforeSuite(func(ctx SpecContext) {
	Expect(kc.CreateNamespace(ctx, corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})).To(Succeed(), "create namespace %s", ns)
})

func object(doc string) *unstructured.Unstructured {
	obj := &unstructured.Unstructured{}
	Expect(decoder.DecodeString(doc, obj)).To(Succeed(), "test object:\n%s", doc)
	return obj
}

// refused creates obj with the given field validation ("" is client-go's
// default: the server warns and prunes unknown fields) and expects the API
// server to refuse it with a message naming field, storing nothing.
func refused(ctx context.Context, gvr schema.GroupVersionResource, obj *unstructured.Unstructured, validation, field string) {
	res := dynamic.ResourceInterface(kc.Dynamic.Resource(gvr))
	if obj.GetNamespace() != "" {
		res = kc.Dynamic.Resource(gvr).Namespace(obj.GetNamespace())
	}
	_, err := res.Create(ctx, obj, metav1.CreateOptions{FieldValidation: validation})
	Expect(err).To(HaveOccurred(), "%s %s with %s created with fieldValidation=%q: the field was dropped and the rule widened", obj.GetKind(), obj.GetName(), field, validation)
	Expect(apierrors.IsInvalid(err)).To(BeTrue(), "want 422 Invalid, got %v", err)
	Expect(err.Error()).To(ContainSubstring(field+": flatnet does not enforce"), "the refusal names the field")
	_, err = res.Get(ctx, obj.GetName(), metav1.GetOptions{})
	Expect(apierrors.IsNotFound(err)).To(BeTrue(), "%s %s must not exist after the refusal: %v", obj.GetKind(), obj.GetName(), err)
}

var _ = Describe("Cilium fields flatnet does not enforce [flatnet]", Label("flatnet", "cilium", "policyapi"), func() {
	It("refuses a CNP with toFQDNs created with client-go's default field validation instead of pruning it to port 443 to anywhere", func(ctx SpecContext) {
		doc := `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: fqdn, namespace: ` + ns + `}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toFQDNs: [{matchName: api.example.com}]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
`
		for _, v := range []string{"", metav1.FieldValidationIgnore, metav1.FieldValidationWarn, metav1.FieldValidationStrict} {
			refused(ctx, cnp, object(doc), v, "toFQDNs")
		}
	})

	It("refuses L7 rules in toPorts and toServices in a CCNP, and still accepts the enforced subset", func(ctx SpecContext) {
		l7 := object(`apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: flatnet-policyapi-l7}
specs:
- endpointSelector: {}
  ingress:
  - toPorts: [{ports: [{port: "80"}], rules: {http: [{method: GET}]}}]
`)
		refused(ctx, ccnp, l7, "", "rules")
		svc := object(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: svc, namespace: ` + ns + `}
spec:
  endpointSelector: {}
  egress: [{toServices: [{k8sService: {serviceName: db, namespace: ` + ns + `}}]}]
`)
		refused(ctx, cnp, svc, "", "toServices")
		ok := object(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: subset, namespace: ` + ns + `}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toCIDRSet: [{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
`)
		_, err := kc.Dynamic.Resource(cnp).Namespace(ns).Create(ctx, ok, metav1.CreateOptions{})
		Expect(err).NotTo(HaveOccurred(), "a CNP of the enforced subset must still be accepted")
		Expect(kc.Dynamic.Resource(cnp).Namespace(ns).Delete(ctx, "subset", metav1.DeleteOptions{})).To(Succeed())
	})
})
