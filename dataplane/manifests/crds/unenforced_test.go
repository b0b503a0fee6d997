package crds

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	structuralschema "k8s.io/apiextensions-apiserver/pkg/apiserver/schema"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/pruning"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/flatnet/flatnet/dataplane/policy"
)

// ciliumFields is Cilium's cilium.io/v2 policy API (pkg/policy/api: rule.go,
// ingress.go, egress.go, l4.go, cidr.go, selector.go), every field of every
// level of a rule, written down independently of flatnet's schema.
var ciliumFields = map[string][]string{
	"rule":              {"endpointSelector", "nodeSelector", "ingress", "ingressDeny", "egress", "egressDeny", "labels", "enableDefaultDeny", "description", "log"},
	"ingress":           {"fromEndpoints", "fromRequires", "fromCIDR", "fromCIDRSet", "fromEntities", "fromGroups", "fromNodes", "toPorts", "icmps", "authentication"},
	"ingressDeny":       {"fromEndpoints", "fromRequires", "fromCIDR", "fromCIDRSet", "fromEntities", "fromGroups", "fromNodes", "toPorts", "icmps"},
	"egress":            {"toEndpoints", "toRequires", "toCIDR", "toCIDRSet", "toEntities", "toServices", "toGroups", "toNodes", "toPorts", "toFQDNs", "icmps", "authentication"},
	"egressDeny":        {"toEndpoints", "toRequires", "toCIDR", "toCIDRSet", "toEntities", "toServices", "toGroups", "toNodes", "toPorts", "icmps"},
	"portRule":          {"ports", "terminatingTLS", "originatingTLS", "serverNames", "rules", "listener"},
	"portProtocol":      {"port", "endPort", "protocol"},
	"cidrRule":          {"cidr", "cidrGroupRef", "cidrGroupSelector", "except"},
	"selector":          {"matchLabels", "matchExpressions"},
	"requirement":       {"key", "operator", "values"},
	"enableDefaultDeny": {"ingress", "egress"},
}

// enforced are the fields flatnet enforces (dataplane/POLICY.md); labels and
// description are the rule's own metadata and change no verdict.
var enforced = map[string][]string{
	"rule":              {"endpointSelector", "ingress", "ingressDeny", "egress", "egressDeny", "labels", "enableDefaultDeny", "description"},
	"ingress":           {"fromEndpoints", "fromCIDR", "fromCIDRSet", "fromEntities", "toPorts"},
	"ingressDeny":       {"fromEndpoints", "fromCIDR", "fromCIDRSet", "fromEntities", "toPorts"},
	"egress":            {"toEndpoints", "toCIDR", "toCIDRSet", "toEntities", "toPorts"},
	"egressDeny":        {"toEndpoints", "toCIDR", "toCIDRSet", "toEntities", "toPorts"},
	"portRule":          {"ports"},
	"portProtocol":      {"port", "endPort", "protocol"},
	"cidrRule":          {"cidr", "except"},
	"selector":          {"matchLabels", "matchExpressions"},
	"requirement":       {"key", "operator", "values"},
	"enableDefaultDeny": {"ingress", "egress"},
}

// samples are plausible values of the unenforced fields, as users write them.
var samples = map[string]any{
	"nodeSelector":      map[string]any{"matchLabels": map[string]any{"role": "edge"}},
	"log":               map[string]any{"value": "audit"},
	"fromRequires":      []any{map[string]any{"matchLabels": map[string]any{"env": "prod"}}},
	"toRequires":        []any{map[string]any{"matchLabels": map[string]any{"env": "prod"}}},
	"fromGroups":        []any{map[string]any{"aws": map[string]any{"securityGroupsIds": []any{"sg-1"}}}},
	"toGroups":          []any{map[string]any{"aws": map[string]any{"securityGroupsIds": []any{"sg-1"}}}},
	"fromNodes":         []any{map[string]any{"matchLabels": map[string]any{"role": "edge"}}},
	"toNodes":           []any{map[string]any{"matchLabels": map[string]any{"role": "edge"}}},
	"toServices":        []any{map[string]any{"k8sService": map[string]any{"serviceName": "db", "namespace": "ns"}}},
	"toFQDNs":           []any{map[string]any{"matchName": "api.example.com"}},
	"icmps":             []any{map[string]any{"fields": []any{map[string]any{"type": int64(8), "family": "IPv4"}}}},
	"authentication":    map[string]any{"mode": "required"},
	"rules":             map[string]any{"http": []any{map[string]any{"method": "GET", "path": "/public"}}},
	"serverNames":       []any{"api.example.com"},
	"terminatingTLS":    map[string]any{"secret": map[string]any{"name": "tls"}},
	"originatingTLS":    map[string]any{"secret": map[string]any{"name": "tls"}},
	"listener":          map[string]any{"envoyConfig": map[string]any{"kind": "CiliumEnvoyConfig", "name": "e"}, "name": "l"},
	"cidrGroupRef":      "corp",
	"cidrGroupSelector": map[string]any{"matchLabels": map[string]any{"corp": "yes"}},
}

// placement builds a valid CNP/CCNP whose rule (spec or specs[0]) carries
// field f at one level; path is where f sits.
type placement struct {
	level string
	build func(rule map[string]any, f string, v any) (at string)
}

func portsOnly() []any {
	return []any{map[string]any{"ports": []any{map[string]any{"port": "443", "protocol": "TCP"}}}}
}

func placements() []placement {
	var out []placement
	out = append(out, placement{"rule", func(r map[string]any, f string, v any) string { r[f] = v; return "" }})
	for _, dir := range []string{"ingress", "ingressDeny", "egress", "egressDeny"} {
		pre := "to"
		if strings.HasPrefix(dir, "ingress") {
			pre = "from"
		}
		out = append(out,
			placement{dir, func(r map[string]any, f string, v any) string {
				r[dir] = []any{map[string]any{"toPorts": portsOnly(), f: v}}
				return "." + dir + "[0]"
			}},
			placement{"portRule", func(r map[string]any, f string, v any) string {
				pr := portsOnly()
				pr[0].(map[string]any)[f] = v
				r[dir] = []any{map[string]any{"toPorts": pr}}
				return "." + dir + "[0].toPorts[0]"
			}},
			placement{"cidrRule", func(r map[string]any, f string, v any) string {
				r[dir] = []any{map[string]any{pre + "CIDRSet": []any{map[string]any{"cidr": "10.0.0.0/8", f: v}}, "toPorts": portsOnly()}}
				return "." + dir + "[0]." + pre + "CIDRSet[0]"
			}})
	}
	return out
}

// Every Cilium field flatnet does not enforce is refused by the API server,
// at every level, in spec and in specs[], for CNP and CCNP, whether or not
// the object was pruned first (a client without strict field validation
// gets pruning), with a message naming the field; flatnet's parser refuses
// it too with the field's path (for a client that bypasses the CRD).
func TestUnenforcedCiliumFieldsAreRefused(t *testing.T) {
	for _, crd := range []struct{ file, kind, short, meta string }{
		{"cilium.io_ciliumnetworkpolicies.yaml", "CiliumNetworkPolicy", "cnp", `{"name": "p", "namespace": "ns"}`},
		{"cilium.io_ciliumclusterwidenetworkpolicies.yaml", "CiliumClusterwideNetworkPolicy", "ccnp", `{"name": "p"}`},
	} {
		v := loadCRD(t, crd.file, crd.kind, crd.short)
		for _, specs := range []bool{false, true} {
			for _, pl := range placements() {
				for _, f := range ciliumFields[pl.level] {
					if slices.Contains(enforced[pl.level], f) {
						continue
					}
					name := fmt.Sprintf("%s/specs=%v/%s/%s", crd.short, specs, pl.level, f)
					t.Run(name, func(t *testing.T) {
						rule := map[string]any{"endpointSelector": map[string]any{}}
						at := pl.build(rule, f, samples[f])
						var meta map[string]any
						_ = json.Unmarshal([]byte(crd.meta), &meta)
						obj := map[string]any{"apiVersion": "cilium.io/v2", "kind": crd.kind, "metadata": meta}
						path := "spec" + at + "." + f
						if specs {
							obj["specs"] = []any{rule}
							path = "specs[0]" + at + "." + f
						} else {
							obj["spec"] = rule
						}
						js, err := json.Marshal(obj)
						if err != nil {
							t.Fatal(err)
						}
						want := f + ": flatnet does not enforce"
						if err := v.validate(runtime.DeepCopyJSON(obj)); err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), path) {
							t.Errorf("API validation without pruning: %v\nwant an error at %s saying %q", err, path, want)
						}
						pruned := runtime.DeepCopyJSON(obj)
						pruning.Prune(pruned, v.structural, true)
						if err := v.validate(pruned); err == nil || !strings.Contains(err.Error(), want) {
							t.Errorf("API validation after pruning: %v\nwant an error saying %q (pruned object: %v)", err, want, pruned)
						}
						cnp, err := policy.DecodeCilium(js)
						if err == nil {
							_, err = policy.FromCilium(cnp)
						}
						if err == nil || !strings.Contains(err.Error(), path) {
							t.Errorf("parser: %v, want an error naming %s", err, path)
						}
					})
				}
			}
		}
	}
}

// The schema declares every field of Cilium's API at every level (so none is
// pruned), and refuses by a CEL rule each one flatnet does not enforce.
func TestSchemaDeclaresEveryCiliumField(t *testing.T) {
	v := loadCRD(t, "cilium.io_ciliumnetworkpolicies.yaml", "CiliumNetworkPolicy", "cnp")
	for _, top := range []string{"spec", "specs"} {
		r := v.structural.Properties[top]
		if top == "specs" {
			r = *r.Items
		}
		levels := map[string]structuralAt{"rule": {r, top}, "selector": {r.Properties["endpointSelector"], top + ".endpointSelector"},
			"requirement":       {*r.Properties["endpointSelector"].Properties["matchExpressions"].Items, top + ".endpointSelector.matchExpressions[]"},
			"enableDefaultDeny": {r.Properties["enableDefaultDeny"], top + ".enableDefaultDeny"}}
		for _, dir := range []string{"ingress", "ingressDeny", "egress", "egressDeny"} {
			pre := "to"
			if strings.HasPrefix(dir, "ingress") {
				pre = "from"
			}
			it := *r.Properties[dir].Items
			pr := *it.Properties["toPorts"].Items
			levels[dir] = structuralAt{it, top + "." + dir + "[]"}
			levels[dir+" portRule"] = structuralAt{pr, top + "." + dir + "[].toPorts[]"}
			levels[dir+" portProtocol"] = structuralAt{*pr.Properties["ports"].Items, top + "." + dir + "[].toPorts[].ports[]"}
			levels[dir+" cidrRule"] = structuralAt{*it.Properties[pre+"CIDRSet"].Items, top + "." + dir + "[]." + pre + "CIDRSet[]"}
			levels[dir+" selector"] = structuralAt{*it.Properties[pre+"Endpoints"].Items, top + "." + dir + "[]." + pre + "Endpoints[]"}
		}
		for key, s := range levels {
			level := key[strings.LastIndex(key, " ")+1:]
			for _, f := range ciliumFields[level] {
				if _, ok := s.s.Properties[f]; !ok {
					t.Errorf("%s: Cilium's field %s is not declared: a client without strict field validation has it pruned", s.path, f)
					continue
				}
				refused := slices.ContainsFunc(s.s.XValidations, func(r apiextensionsv1.ValidationRule) bool { return r.Rule == "!has(self."+f+")" })
				if refused == slices.Contains(enforced[level], f) {
					t.Errorf("%s.%s: refused by a CEL rule=%v, enforced by flatnet=%v: exactly one must hold", s.path, f, refused, slices.Contains(enforced[level], f))
				}
			}
		}
	}
}

type structuralAt struct {
	s    structuralschema.Structural
	path string
}

// A field outside Cilium's API (a typo, another case) reaching the parser,
// from a client that bypassed the CRD, is refused with its path; field names
// match case-sensitively, as in the API server.
func TestParserNamesUnknownFields(t *testing.T) {
	for doc, path := range map[string]string{
		"spec:\n  endpointSelector: {}\n  egress: [{toFQDN: [{matchName: a.example}], toPorts: [{ports: [{port: \"443\"}]}]}]\n": "spec.egress[0].toFQDN",
		"spec:\n  endpointSelector: {}\n  egress: [{ToPorts: [{ports: [{port: \"443\"}]}]}]\n":                                   "spec.egress[0].ToPorts",
		"specs:\n- endpointSelector: {}\n  ingress: [{toPorts: [{ports: [{port: \"80\", Protocol: UDP}]}]}]\n":                   "specs[0].ingress[0].toPorts[0].ports[0].Protocol",
	} {
		_, js := toObj(t, header+doc)
		_, err := policy.DecodeCilium(js)
		if err == nil || !strings.Contains(err.Error(), path) {
			t.Errorf("%s: %v, want an error naming %s", doc, err, path)
		}
	}
}
