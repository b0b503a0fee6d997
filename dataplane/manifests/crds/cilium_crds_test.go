package crds

import (
	"context"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"os"
	"testing"

	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	crdvalidation "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/validation"
	structuralschema "k8s.io/apiextensions-apiserver/pkg/apiserver/schema"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/cel"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/validation"
	celconfig "k8s.io/apiserver/pkg/apis/cel"
	"sigs.k8s.io/yaml"

	"github.com/flatnet/flatnet/dataplane/policy"
)

// apiValidator validates objects as the API server does for a CRD: the CRD itself
// (structural schema, CEL cost), then objects against the OpenAPI schema and the CEL
// rules.
type apiValidator struct {
	schema     validation.SchemaValidator
	structural *structuralschema.Structural
	cel        *cel.Validator
}

func loadCRD(t *testing.T, file, kind string, short string) *apiValidator {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var v1 apiextensionsv1.CustomResourceDefinition
	if err := yaml.UnmarshalStrict(data, &v1); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	if v1.Spec.Names.Kind != kind || len(v1.Spec.Names.ShortNames) != 1 || v1.Spec.Names.ShortNames[0] != short {
		t.Fatalf("%s: kind %s short names %v, want %s with %s", file, v1.Spec.Names.Kind, v1.Spec.Names.ShortNames, kind, short)
	}
	apiextensionsv1.SetObjectDefaults_CustomResourceDefinition(&v1)
	var crd apiextensions.CustomResourceDefinition
	if err := apiextensionsv1.Convert_v1_CustomResourceDefinition_To_apiextensions_CustomResourceDefinition(&v1, &crd, nil); err != nil {
		t.Fatal(err)
	}
	if errs := crdvalidation.ValidateCustomResourceDefinition(context.Background(), &crd); len(errs) > 0 {
		t.Fatalf("%s is not a valid CRD: %v", file, errs.ToAggregate())
	}
	// The internal form hoists a schema shared by all versions to spec.validation.
	var s *apiextensions.JSONSchemaProps
	if crd.Spec.Validation != nil {
		s = crd.Spec.Validation.OpenAPIV3Schema
	} else {
		s = crd.Spec.Versions[0].Schema.OpenAPIV3Schema
	}
	sv, _, err := validation.NewSchemaValidator(s)
	if err != nil {
		t.Fatal(err)
	}
	st, err := structuralschema.NewStructural(s)
	if err != nil {
		t.Fatal(err)
	}
	return &apiValidator{schema: sv, structural: st, cel: cel.NewValidator(st, true, celconfig.PerCallLimit)}
}

func (v *apiValidator) validate(obj map[string]any) error {
	errs := validation.ValidateCustomResource(nil, obj, v.schema)
	celErrs, _ := v.cel.Validate(context.Background(), nil, v.structural, obj, nil, celconfig.RuntimeCELCostBudget)
	errs = append(errs, celErrs...)
	if len(errs) > 0 {
		return errs.ToAggregate()
	}
	return nil
}

func toObj(t *testing.T, doc string) (map[string]any, []byte) {
	js, err := yaml.YAMLToJSON([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	var obj map[string]any
	// Integers as int64, as the API server decodes them.
	if err := utiljson.Unmarshal(js, &obj); err != nil {
		t.Fatal(err)
	}
	return obj, js
}

const header = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p, namespace: ns}
`

// Each case is judged by the API (the CRD) and by flatnet's parser: both must agree.
var cases = []struct {
	name  string
	spec  string
	valid bool
}{
	{"seed default deny", "spec:\n  endpointSelector: {matchLabels: {app: server}}\n  ingress: [{}]\n  egress: [{}]\n", true},
	{"full subset", `spec:
  endpointSelector: {matchExpressions: [{key: app, operator: In, values: [a, b]}]}
  ingress:
  - fromEndpoints: [{matchLabels: {"k8s:io.kubernetes.pod.namespace": other}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}, {port: "8000", endPort: 8100}, {port: http}]}]
  - fromCIDR: [10.0.0.0/8]
    fromCIDRSet: [{cidr: 192.168.0.0/16, except: [192.168.1.0/24]}]
  - fromEntities: [world, cluster, host, remote-node, all]
  ingressDeny: [{fromEndpoints: [{}]}]
  egressDeny: [{toEntities: [world]}]
  enableDefaultDeny: {ingress: true, egress: false}
`, true},
	{"specs list", "specs:\n- endpointSelector: {}\n  egress: [{toCIDR: [1.2.3.4/32]}]\n", true},
	{"no spec", "metadata: {name: p}\n", false},
	{"missing endpointSelector", "spec:\n  ingress: [{}]\n", false},
	{"bad CIDR", "spec:\n  endpointSelector: {}\n  egress: [{toCIDR: [10.0.0.0/33]}]\n", false},
	{"bare address as CIDR", "spec:\n  endpointSelector: {}\n  egress: [{toCIDR: [10.0.0.1]}]\n", true},
	{"IPv6 block (matches nothing here)", "spec:\n  endpointSelector: {}\n  egress: [{toCIDR: [\"::/0\"]}]\n", true},
	{"CIDR with a bad address", "spec:\n  endpointSelector: {}\n  egress: [{toCIDR: [10.0.0.256/24]}]\n", false},
	{"bad except", "spec:\n  endpointSelector: {}\n  egress: [{toCIDRSet: [{cidr: 10.0.0.0/8, except: [nope]}]}]\n", false},
	{"port 0", "spec:\n  endpointSelector: {}\n  ingress: [{toPorts: [{ports: [{port: \"0\"}]}]}]\n", false},
	{"port too big", "spec:\n  endpointSelector: {}\n  ingress: [{toPorts: [{ports: [{port: \"65536\"}]}]}]\n", false},
	{"endPort below port", "spec:\n  endpointSelector: {}\n  ingress: [{toPorts: [{ports: [{port: \"90\", endPort: 80}]}]}]\n", false},
	{"endPort with a named port", "spec:\n  endpointSelector: {}\n  ingress: [{toPorts: [{ports: [{port: http, endPort: 80}]}]}]\n", false},
	{"unknown protocol", "spec:\n  endpointSelector: {}\n  ingress: [{toPorts: [{ports: [{port: \"80\", protocol: ICMP}]}]}]\n", false},
	{"unknown entity", "spec:\n  endpointSelector: {}\n  egress: [{toEntities: [internet]}]\n", false},
	{"bad operator", "spec:\n  endpointSelector: {matchExpressions: [{key: a, operator: Equals, values: [b]}]}\n", false},
	{"In without values", "spec:\n  endpointSelector: {matchExpressions: [{key: a, operator: In}]}\n", false},
}

func TestCNPCRDAgreesWithParser(t *testing.T) {
	v := loadCRD(t, "cilium.io_ciliumnetworkpolicies.yaml", "CiliumNetworkPolicy", "cnp")
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			obj, js := toObj(t, header+c.spec)
			apiErr := v.validate(obj)
			if (apiErr == nil) != c.valid {
				t.Errorf("API validation: %v, want valid=%v", apiErr, c.valid)
			}
			cnp, err := policy.DecodeCilium(js)
			if err == nil {
				_, err = policy.FromCilium(cnp)
			}
			if (err == nil) != c.valid {
				t.Errorf("parser: %v, want valid=%v", err, c.valid)
			}
		})
	}
}

func TestCCNPCRD(t *testing.T) {
	v := loadCRD(t, "cilium.io_ciliumclusterwidenetworkpolicies.yaml", "CiliumClusterwideNetworkPolicy", "ccnp")
	good, _ := toObj(t, "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: c}\nspec:\n  endpointSelector: {}\n  egressDeny: [{toEntities: [world]}]\n")
	if err := v.validate(good); err != nil {
		t.Fatalf("valid CCNP rejected: %v", err)
	}
	bad, _ := toObj(t, "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: c}\nspec:\n  endpointSelector: {}\n  egress: [{toPorts: [{ports: [{port: \"99999\"}]}]}]\n")
	if err := v.validate(bad); err == nil {
		t.Fatalf("CCNP with port 99999 accepted")
	}
}
