package policy

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
	kjson "sigs.k8s.io/json"
)

// CiliumNetworkPolicy is the subset of cilium.io/v2 CiliumNetworkPolicy and
// CiliumClusterwideNetworkPolicy flatnet enforces (same JSON shape as Cilium's).
// Fields of Cilium's API we do not enforce are decoded as Unsupported so that the
// object is rejected with their path instead of being silently half-applied.
type CiliumNetworkPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              *CiliumRule     `json:"spec,omitempty"`
	Specs             []CiliumRule    `json:"specs,omitempty"`
	Status            json.RawMessage `json:"status,omitempty"`
}

// CiliumRule is one rule (spec) of a CNP.
type CiliumRule struct {
	EndpointSelector  *metav1.LabelSelector `json:"endpointSelector,omitempty"`
	NodeSelector      json.RawMessage       `json:"nodeSelector,omitempty"`
	Ingress           []CiliumIngressRule   `json:"ingress,omitempty"`
	IngressDeny       []CiliumIngressRule   `json:"ingressDeny,omitempty"`
	Egress            []CiliumEgressRule    `json:"egress,omitempty"`
	EgressDeny        []CiliumEgressRule    `json:"egressDeny,omitempty"`
	EnableDefaultDeny *DefaultDenyConfig    `json:"enableDefaultDeny,omitempty"`
	Description       string                `json:"description,omitempty"`
	Labels            json.RawMessage       `json:"labels,omitempty"`
	Log               json.RawMessage       `json:"log,omitempty"`
}

// DefaultDenyConfig overrides whether a rule puts its subjects into default deny.
type DefaultDenyConfig struct {
	Ingress *bool `json:"ingress,omitempty"`
	Egress  *bool `json:"egress,omitempty"`
}

// CiliumIngressRule covers ingress and ingressDeny entries.
type CiliumIngressRule struct {
	FromEndpoints []metav1.LabelSelector `json:"fromEndpoints,omitempty"`
	FromCIDR      []string               `json:"fromCIDR,omitempty"`
	FromCIDRSet   []CIDRRule             `json:"fromCIDRSet,omitempty"`
	FromEntities  []string               `json:"fromEntities,omitempty"`
	ToPorts       []PortRule             `json:"toPorts,omitempty"`

	FromRequires   json.RawMessage `json:"fromRequires,omitempty"`
	FromNodes      json.RawMessage `json:"fromNodes,omitempty"`
	FromGroups     json.RawMessage `json:"fromGroups,omitempty"`
	ICMPs          json.RawMessage `json:"icmps,omitempty"`
	Authentication json.RawMessage `json:"authentication,omitempty"`
}

// CiliumEgressRule covers egress and egressDeny entries.
type CiliumEgressRule struct {
	ToEndpoints []metav1.LabelSelector `json:"toEndpoints,omitempty"`
	ToCIDR      []string               `json:"toCIDR,omitempty"`
	ToCIDRSet   []CIDRRule             `json:"toCIDRSet,omitempty"`
	ToEntities  []string               `json:"toEntities,omitempty"`
	ToPorts     []PortRule             `json:"toPorts,omitempty"`

	ToRequires     json.RawMessage `json:"toRequires,omitempty"`
	ToNodes        json.RawMessage `json:"toNodes,omitempty"`
	ToGroups       json.RawMessage `json:"toGroups,omitempty"`
	ToServices     json.RawMessage `json:"toServices,omitempty"`
	ToFQDNs        json.RawMessage `json:"toFQDNs,omitempty"`
	ICMPs          json.RawMessage `json:"icmps,omitempty"`
	Authentication json.RawMessage `json:"authentication,omitempty"`
}

// CIDRRule is a fromCIDRSet/toCIDRSet entry.
type CIDRRule struct {
	CIDR         string          `json:"cidr,omitempty"`
	Except       []string        `json:"except,omitempty"`
	CIDRGroupRef string          `json:"cidrGroupRef,omitempty"`
	CIDRGroupSel json.RawMessage `json:"cidrGroupSelector,omitempty"`
}

// PortRule is a toPorts entry; only L4 ports are enforced.
type PortRule struct {
	Ports          []PortProtocol  `json:"ports,omitempty"`
	Rules          json.RawMessage `json:"rules,omitempty"`
	ServerNames    json.RawMessage `json:"serverNames,omitempty"`
	TerminatingTLS json.RawMessage `json:"terminatingTLS,omitempty"`
	OriginatingTLS json.RawMessage `json:"originatingTLS,omitempty"`
	Listener       json.RawMessage `json:"listener,omitempty"`
}

// PortProtocol is a port (number or name, as a string as in Cilium), an optional
// endPort and a protocol (TCP, UDP, SCTP or ANY; ANY when empty).
type PortProtocol struct {
	Port     string `json:"port,omitempty"`
	EndPort  int32  `json:"endPort,omitempty"`
	Protocol string `json:"protocol,omitempty"`
}

// DecodeCilium decodes a CNP or CCNP from JSON (or YAML converted to JSON). Unknown
// fields are an error naming their path: a field we do not know is a rule we would
// not enforce. Field names match case-sensitively, as in the API server (encoding/json
// would take "ToPorts" for toPorts, which the API server prunes).
func DecodeCilium(data []byte) (*CiliumNetworkPolicy, error) {
	var c CiliumNetworkPolicy
	strict, err := kjson.UnmarshalStrict(data, &c, kjson.DisallowUnknownFields, kjson.DisallowDuplicateFields)
	if err != nil {
		return nil, fmt.Errorf("decoding Cilium policy: %w", err)
	}
	if len(strict) > 0 {
		return nil, fmt.Errorf("decoding Cilium policy: %w (flatnet refuses fields it does not enforce; see dataplane/POLICY.md)", errors.Join(strict...))
	}
	return &c, nil
}

// CiliumFromUnstructured decodes the object an informer delivers.
func CiliumFromUnstructured(u *unstructured.Unstructured) (*CiliumNetworkPolicy, error) {
	data, err := u.MarshalJSON()
	if err != nil {
		return nil, fmt.Errorf("encoding %s %s/%s: %w", u.GetKind(), u.GetNamespace(), u.GetName(), err)
	}
	c, err := DecodeCilium(data)
	if err != nil {
		return nil, fmt.Errorf("%s %s/%s: %w", u.GetKind(), u.GetNamespace(), u.GetName(), err)
	}
	return c, nil
}

// FromCilium converts a CNP (namespaced) or CCNP (Namespace empty and Kind
// CiliumClusterwideNetworkPolicy) into one Policy per spec. Any invalid field rejects
// the whole object.
func FromCilium(c *CiliumNetworkPolicy) ([]*Policy, error) {
	ref := Ref{Kind: KindCNP, Namespace: c.Namespace, Name: c.Name}
	if c.Kind == string(KindCCNP) {
		ref = Ref{Kind: KindCCNP, Name: c.Name}
	}
	var errs field.ErrorList
	if ref.Kind == KindCNP && ref.Namespace == "" {
		errs = append(errs, field.Required(field.NewPath("metadata", "namespace"), "a CiliumNetworkPolicy is namespaced"))
	}
	type specAt struct {
		rule *CiliumRule
		path *field.Path
	}
	var specs []specAt
	if c.Spec != nil {
		specs = append(specs, specAt{c.Spec, field.NewPath("spec")})
	}
	for i := range c.Specs {
		specs = append(specs, specAt{&c.Specs[i], field.NewPath("specs").Index(i)})
	}
	if len(specs) == 0 {
		errs = append(errs, field.Required(field.NewPath("spec"), "spec or specs must be set"))
	}
	var out []*Policy
	for i, s := range specs {
		p, e := ciliumRule(ref, s.rule, s.path)
		errs = append(errs, e...)
		if p != nil {
			p.Spec = i
			out = append(out, p)
		}
	}
	if len(errs) > 0 {
		return nil, &Error{Ref: ref, Errs: errs}
	}
	return out, nil
}

func ciliumRule(ref Ref, r *CiliumRule, path *field.Path) (*Policy, field.ErrorList) {
	var errs field.ErrorList
	if r.EndpointSelector == nil {
		if len(r.NodeSelector) > 0 {
			return nil, field.ErrorList{field.Forbidden(path.Child("nodeSelector"), "host policies are not supported by flatnet; use endpointSelector")}
		}
		return nil, field.ErrorList{field.Required(path.Child("endpointSelector"), "selects the endpoints the rule applies to ({} for all)")}
	}
	if len(r.NodeSelector) > 0 {
		errs = append(errs, field.Forbidden(path.Child("nodeSelector"), "endpointSelector and nodeSelector are mutually exclusive"))
	}
	errs = append(errs, unsupported(path, map[string]json.RawMessage{"log": r.Log})...)
	subject, e := fromLabelSelector(r.EndpointSelector, path.Child("endpointSelector"), ciliumKey)
	errs = append(errs, e...)
	if ref.Namespace != "" {
		// A namespaced policy only ever selects endpoints of its own namespace.
		subject = subject.And(Eq(NamespaceLabel, ref.Namespace))
	}
	p := &Policy{Ref: ref, Subject: subject}
	// Default deny per direction when the rule has rules for it, unless overridden.
	p.DefaultDeny[Ingress] = len(r.Ingress)+len(r.IngressDeny) > 0
	p.DefaultDeny[Egress] = len(r.Egress)+len(r.EgressDeny) > 0
	if d := r.EnableDefaultDeny; d != nil {
		if d.Ingress != nil {
			p.DefaultDeny[Ingress] = *d.Ingress
		}
		if d.Egress != nil {
			p.DefaultDeny[Egress] = *d.Egress
		}
	}
	for i := range r.Ingress {
		rule, e := ciliumIngress(ref, &r.Ingress[i], false, path.Child("ingress").Index(i))
		errs = append(errs, e...)
		p.Rules = append(p.Rules, rule)
	}
	for i := range r.IngressDeny {
		rule, e := ciliumIngress(ref, &r.IngressDeny[i], true, path.Child("ingressDeny").Index(i))
		errs = append(errs, e...)
		p.Rules = append(p.Rules, rule)
	}
	for i := range r.Egress {
		rule, e := ciliumEgress(ref, &r.Egress[i], false, path.Child("egress").Index(i))
		errs = append(errs, e...)
		p.Rules = append(p.Rules, rule)
	}
	for i := range r.EgressDeny {
		rule, e := ciliumEgress(ref, &r.EgressDeny[i], true, path.Child("egressDeny").Index(i))
		errs = append(errs, e...)
		p.Rules = append(p.Rules, rule)
	}
	return p, errs
}

// unsupported reports set fields of Cilium's API that flatnet does not enforce.
func unsupported(path *field.Path, fields map[string]json.RawMessage) field.ErrorList {
	var errs field.ErrorList
	for _, name := range sortedKeys(fields) {
		if len(fields[name]) > 0 {
			errs = append(errs, field.Forbidden(path.Child(name), "not supported by flatnet (see dataplane/POLICY.md)"))
		}
	}
	return errs
}

func ciliumIngress(ref Ref, r *CiliumIngressRule, deny bool, path *field.Path) (Rule, field.ErrorList) {
	errs := unsupported(path, map[string]json.RawMessage{
		"fromRequires": r.FromRequires, "fromNodes": r.FromNodes, "fromGroups": r.FromGroups,
		"icmps": r.ICMPs, "authentication": r.Authentication,
	})
	rule, e := ciliumPeers(ref, Ingress, deny, path, "from", r.FromEndpoints, r.FromCIDR, r.FromCIDRSet, r.FromEntities, r.ToPorts)
	return rule, append(errs, e...)
}

func ciliumEgress(ref Ref, r *CiliumEgressRule, deny bool, path *field.Path) (Rule, field.ErrorList) {
	errs := unsupported(path, map[string]json.RawMessage{
		"toRequires": r.ToRequires, "toNodes": r.ToNodes, "toGroups": r.ToGroups, "toServices": r.ToServices,
		"toFQDNs": r.ToFQDNs, "icmps": r.ICMPs, "authentication": r.Authentication,
	})
	rule, e := ciliumPeers(ref, Egress, deny, path, "to", r.ToEndpoints, r.ToCIDR, r.ToCIDRSet, r.ToEntities, r.ToPorts)
	return rule, append(errs, e...)
}

func ciliumPeers(ref Ref, dir Direction, deny bool, path *field.Path, pre string,
	endpoints []metav1.LabelSelector, cidrs []string, cidrSets []CIDRRule, entities []string, ports []PortRule) (Rule, field.ErrorList) {
	var errs field.ErrorList
	rule := Rule{Direction: dir, Deny: deny, Name: path.String()}
	for i := range endpoints {
		p := path.Child(pre + "Endpoints").Index(i)
		sel, e := fromLabelSelector(&endpoints[i], p, ciliumKey)
		errs = append(errs, e...)
		// As in Cilium: a namespaced policy's peer selectors stay in its namespace
		// unless they name the namespace label themselves.
		if ref.Namespace != "" && !sel.HasKey(NamespaceLabel) {
			sel = sel.And(Eq(NamespaceLabel, ref.Namespace))
		}
		rule.Peers = append(rule.Peers, Peer{Endpoints: &sel})
	}
	for i, c := range cidrs {
		cp, e := parseCIDR(c, nil, path.Child(pre+"CIDR").Index(i), nil)
		errs = append(errs, e...)
		if cp != nil {
			cp.WorldOnly = true
			rule.Peers = append(rule.Peers, Peer{CIDR: cp})
		}
	}
	for i, c := range cidrSets {
		p := path.Child(pre + "CIDRSet").Index(i)
		if c.CIDRGroupRef != "" {
			errs = append(errs, field.Forbidden(p.Child("cidrGroupRef"), "CiliumCIDRGroup references are not supported by flatnet; use cidr"))
		}
		if len(c.CIDRGroupSel) > 0 {
			errs = append(errs, field.Forbidden(p.Child("cidrGroupSelector"), "CiliumCIDRGroup selectors are not supported by flatnet; use cidr"))
		}
		if c.CIDRGroupRef != "" || len(c.CIDRGroupSel) > 0 {
			continue
		}
		cp, e := parseCIDR(c.CIDR, c.Except, p.Child("cidr"), p.Child("except"))
		errs = append(errs, e...)
		if cp != nil {
			cp.WorldOnly = true
			rule.Peers = append(rule.Peers, Peer{CIDR: cp})
		}
	}
	for i, name := range entities {
		p := path.Child(pre + "Entities").Index(i)
		ent, ok := entityNames[name]
		if !ok {
			errs = append(errs, field.NotSupported(p, name, sortedKeys(entityNames)))
			continue
		}
		rule.Peers = append(rule.Peers, Peer{Entity: ent})
	}
	l3 := len(endpoints)+len(cidrs)+len(cidrSets)+len(entities) > 0
	for i, pr := range ports {
		p := path.Child("toPorts").Index(i)
		errs = append(errs, unsupported(p, map[string]json.RawMessage{
			"rules": pr.Rules, "serverNames": pr.ServerNames, "terminatingTLS": pr.TerminatingTLS,
			"originatingTLS": pr.OriginatingTLS, "listener": pr.Listener,
		})...)
		for j, pp := range pr.Ports {
			port, e := ciliumPort(pp, p.Child("ports").Index(j))
			errs = append(errs, e...)
			rule.Ports = append(rule.Ports, port)
		}
		if len(pr.Ports) == 0 {
			// toPorts without ports restricts nothing at L4 (Cilium treats it as all ports).
			rule.Ports = append(rule.Ports, Port{Protocol: ProtoAny})
		}
	}
	// An L4-only rule (toPorts without peers) applies to every peer, as in Cilium. The
	// empty rule `{}` selects no peer at all: it only turns default deny on.
	rule.AnyPeer = !l3 && len(ports) > 0
	return rule, errs
}

func ciliumPort(pp PortProtocol, path *field.Path) (Port, field.ErrorList) {
	proto, errs := parseProtocol(pp.Protocol, path.Child("protocol"), true)
	out := Port{Protocol: proto}
	if pp.Port == "" {
		if pp.EndPort != 0 {
			errs = append(errs, field.Required(path.Child("port"), "endPort needs a numeric port"))
		}
		return out, errs
	}
	n, err := strconv.ParseInt(pp.Port, 10, 64)
	if err != nil {
		if msgs := validation.IsValidPortName(pp.Port); len(msgs) > 0 {
			return out, append(errs, field.Invalid(path.Child("port"), pp.Port, "neither a port number nor a port name: "+msgs[0]))
		}
		if pp.EndPort != 0 {
			errs = append(errs, field.Invalid(path.Child("endPort"), pp.EndPort, "endPort needs a numeric port, not a named one"))
		}
		out.Name = pp.Port
		return out, errs
	}
	var end *int32
	if pp.EndPort != 0 {
		end = &pp.EndPort
	}
	lo, hi, e := portRange(n, end, path)
	out.Port, out.EndPort = lo, hi
	return out, append(errs, e...)
}

var entityNames = map[string]Entity{
	"all":            EntityAll,
	"world":          EntityWorld,
	"world-ipv4":     EntityWorld,
	"cluster":        EntityCluster,
	"host":           EntityHost,
	"remote-node":    EntityRemoteNode,
	"kube-apiserver": EntityKubeAPI,
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sortStrings(out)
	return out
}
