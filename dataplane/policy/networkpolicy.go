package policy

import (
	"fmt"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/flatnet/flatnet/dataplane/ipv4"
)

// FromNetworkPolicy converts a networking.k8s.io/v1 NetworkPolicy. A policy with any
// invalid field is rejected whole (*Error lists every field), never partly converted.
func FromNetworkPolicy(np *networkingv1.NetworkPolicy) (*Policy, error) {
	ref := Ref{Kind: KindNetworkPolicy, Namespace: np.Namespace, Name: np.Name}
	var errs field.ErrorList
	spec := field.NewPath("spec")
	inNS := Eq(NamespaceLabel, np.Namespace)

	subject, e := fromLabelSelector(&np.Spec.PodSelector, spec.Child("podSelector"), identityKey)
	errs = append(errs, e...)
	p := &Policy{Ref: ref, Subject: subject.And(inNS)}

	// policyTypes defaulting: Ingress always, Egress when egress rules are present.
	types := np.Spec.PolicyTypes
	if len(types) == 0 {
		types = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
		if len(np.Spec.Egress) > 0 {
			types = append(types, networkingv1.PolicyTypeEgress)
		}
	}
	for i, t := range types {
		switch t {
		case networkingv1.PolicyTypeIngress:
			p.DefaultDeny[Ingress] = true
		case networkingv1.PolicyTypeEgress:
			p.DefaultDeny[Egress] = true
		default:
			errs = append(errs, field.NotSupported(spec.Child("policyTypes").Index(i), t, []string{"Ingress", "Egress"}))
		}
	}
	// Rules of a direction the policy does not isolate are ignored, as the API says.
	if p.DefaultDeny[Ingress] {
		for i, r := range np.Spec.Ingress {
			path := spec.Child("ingress").Index(i)
			rule, e := npRule(np.Namespace, Ingress, r.From, r.Ports, path, path.Child("from"))
			errs = append(errs, e...)
			p.Rules = append(p.Rules, rule)
		}
	}
	if p.DefaultDeny[Egress] {
		for i, r := range np.Spec.Egress {
			path := spec.Child("egress").Index(i)
			rule, e := npRule(np.Namespace, Egress, r.To, r.Ports, path, path.Child("to"))
			errs = append(errs, e...)
			p.Rules = append(p.Rules, rule)
		}
	}
	if len(errs) > 0 {
		return nil, &Error{Ref: ref, Errs: errs}
	}
	return p, nil
}

func npRule(ns string, dir Direction, peers []networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort,
	path, peersPath *field.Path) (Rule, field.ErrorList) {
	var errs field.ErrorList
	rule := Rule{Direction: dir, Name: path.String(), AnyPeer: len(peers) == 0}
	for i, peer := range peers {
		pp := peersPath.Index(i)
		switch {
		case peer.IPBlock != nil:
			if peer.PodSelector != nil || peer.NamespaceSelector != nil {
				errs = append(errs, field.Forbidden(pp, "ipBlock may not be combined with podSelector or namespaceSelector"))
				continue
			}
			c, e := parseCIDR(peer.IPBlock.CIDR, peer.IPBlock.Except, pp.Child("ipBlock", "cidr"), pp.Child("ipBlock", "except"))
			errs = append(errs, e...)
			if c != nil {
				rule.Peers = append(rule.Peers, Peer{CIDR: c})
			}
		case peer.PodSelector != nil || peer.NamespaceSelector != nil:
			var sel Selector
			if peer.PodSelector != nil {
				s, e := fromLabelSelector(peer.PodSelector, pp.Child("podSelector"), identityKey)
				errs = append(errs, e...)
				sel = s
			}
			if peer.NamespaceSelector != nil {
				s, e := fromLabelSelector(peer.NamespaceSelector, pp.Child("namespaceSelector"), namespaceKey)
				errs = append(errs, e...)
				sel = sel.And(s.Requirements...)
			} else {
				sel = sel.And(Eq(NamespaceLabel, ns))
			}
			rule.Peers = append(rule.Peers, Peer{Endpoints: &sel})
		default:
			errs = append(errs, field.Required(pp, "a peer needs podSelector, namespaceSelector or ipBlock"))
		}
	}
	for i, port := range ports {
		pp := path.Child("ports").Index(i)
		proto := corev1.ProtocolTCP
		if port.Protocol != nil {
			proto = *port.Protocol
		}
		pr, e := parseProtocol(string(proto), pp.Child("protocol"), false)
		errs = append(errs, e...)
		out := Port{Protocol: pr}
		switch {
		case port.Port == nil:
			if port.EndPort != nil {
				errs = append(errs, field.Required(pp.Child("port"), "endPort needs a numeric port"))
			}
		case port.Port.Type == intstr.String:
			if msgs := validation.IsValidPortName(port.Port.StrVal); len(msgs) > 0 {
				errs = append(errs, field.Invalid(pp.Child("port"), port.Port.StrVal, msgs[0]))
			}
			if port.EndPort != nil {
				errs = append(errs, field.Invalid(pp.Child("endPort"), *port.EndPort, "endPort needs a numeric port, not a named one"))
			}
			out.Name = port.Port.StrVal
		default:
			lo, hi, e := portRange(int64(port.Port.IntVal), port.EndPort, pp)
			errs = append(errs, e...)
			out.Port, out.EndPort = lo, hi
		}
		rule.Ports = append(rule.Ports, out)
	}
	return rule, errs
}

// portRange checks a numeric port and optional endPort (both 1..65535, end >= start).
func portRange(port int64, endPort *int32, path *field.Path) (uint16, uint16, field.ErrorList) {
	if port < 1 || port > 65535 {
		return 0, 0, field.ErrorList{field.Invalid(path.Child("port"), port, "must be between 1 and 65535 (omit it for all ports)")}
	}
	end := port
	if endPort != nil {
		end = int64(*endPort)
		if end < port || end > 65535 {
			return 0, 0, field.ErrorList{field.Invalid(path.Child("endPort"), end,
				fmt.Sprintf("must be between port (%d) and 65535", port))}
		}
	}
	return uint16(port), uint16(end), nil
}

func parseProtocol(s string, path *field.Path, allowAny bool) (Protocol, field.ErrorList) {
	switch s {
	case "TCP":
		return ProtoTCP, nil
	case "UDP":
		return ProtoUDP, nil
	case "SCTP":
		return ProtoSCTP, nil
	case "ANY", "":
		if allowAny {
			return ProtoAny, nil
		}
	}
	valid := []string{"TCP", "UDP", "SCTP"}
	if allowAny {
		valid = append(valid, "ANY")
	}
	return 0, field.ErrorList{field.NotSupported(path, s, valid)}
}

// parseCIDR parses an IPv4 block and its exceptions, each of which must lie inside it.
// A valid IPv6 block returns nil and no error: it can match nothing in this IPv4-only
// cluster, and rejecting it would throw away the dual-stack policies people write.
// An IPv4-mapped IPv6 block (::ffff:a.b.c.d[/n]) is rejected, as the API server's
// strict CIDR validation does: it is neither the IPv6 block nor, unless written so,
// the IPv4 one, and the message says which IPv4 block to write.
func parseCIDR(cidr string, except []string, path, exceptPath *field.Path) (*CIDR, field.ErrorList) {
	pfx, errs := parseBlock(cidr, path, "10.0.0.0/8")
	if errs != nil {
		return nil, errs
	}
	if !pfx.Addr().Is4() {
		// An IPv6 block: it matches nothing here, but its exceptions must still make sense.
		for i, ex := range except {
			ep, e := parseBlock(ex, exceptPath.Index(i), "fd00::/8")
			switch {
			case e != nil:
				errs = append(errs, e...)
			case ep.Addr().Is4() || ep.Bits() < pfx.Bits() || !pfx.Contains(ep.Addr()):
				errs = append(errs, field.Invalid(exceptPath.Index(i), ex, "must lie inside "+pfx.Masked().String()))
			}
		}
		return nil, errs
	}
	block, err := ipv4.PrefixFrom(pfx)
	if err != nil { // cannot happen for a valid IPv4 prefix; keep the field's name if it does
		return nil, field.ErrorList{field.Invalid(path, cidr, err.Error())}
	}
	c := &CIDR{Prefix: block}
	for i, ex := range except {
		ep, e := parseBlock(ex, exceptPath.Index(i), "10.1.0.0/16")
		if e != nil {
			errs = append(errs, e...)
			continue
		}
		eb, err := ipv4.PrefixFrom(ep)
		if err != nil || !eb.Within(block) {
			errs = append(errs, field.Invalid(exceptPath.Index(i), ex, "must lie inside "+block.String()))
			continue
		}
		c.Except = append(c.Except, eb)
	}
	if len(errs) > 0 {
		return nil, errs
	}
	return c, nil
}

// parseBlock parses a CIDR (or, as Cilium also takes, a bare address for one host),
// refusing IPv4-mapped IPv6 forms with the IPv4 block to write instead.
func parseBlock(s string, path *field.Path, example string) (netip.Prefix, field.ErrorList) {
	pfx, err := netip.ParsePrefix(s)
	if err != nil {
		a, aerr := netip.ParseAddr(s)
		if aerr != nil {
			return netip.Prefix{}, field.ErrorList{field.Invalid(path, s, "not a CIDR (want e.g. "+example+"): "+err.Error())}
		}
		pfx = netip.PrefixFrom(a, a.BitLen())
	}
	if pfx.Addr().Is4In6() {
		msg := "must not be an IPv4-mapped IPv6 address (::ffff:a.b.c.d), as in Kubernetes' strict CIDR validation"
		if v4, ok := ipv4.Unmapped(pfx); ok {
			msg += "; write the IPv4 block " + v4.String()
		} else {
			msg += "; write the IPv4 block"
		}
		return netip.Prefix{}, field.ErrorList{field.Invalid(path, s, msg)}
	}
	return pfx, nil
}
