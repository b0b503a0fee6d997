package filter

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	flowpb "github.com/cilium/cilium/api/v1/flow"
)

// ipMatcher holds exact addresses in canonical text, compared with the flow's text without parsing it, and
// CIDRs, for which the flow's address is parsed once.
type ipMatcher struct {
	addrs    []string
	prefixes []netip.Prefix
}

func compileIPs(path string, values []string) (ipMatcher, error) {
	var m ipMatcher
	for i, v := range values {
		if strings.Contains(v, "/") {
			p, err := netip.ParsePrefix(v)
			if err != nil {
				return m, &Error{Path: fmt.Sprintf("%s[%d]", path, i), Problem: fmt.Sprintf("%q is not an IP or CIDR", v),
					Err: err, Fix: "write a CIDR such as 10.0.0.0/8 or fd00::/64"}
			}
			m.prefixes = append(m.prefixes, p)
			continue
		}
		a, err := netip.ParseAddr(v)
		if err != nil {
			return m, &Error{Path: fmt.Sprintf("%s[%d]", path, i), Problem: fmt.Sprintf("%q is not an IP or CIDR", v),
				Err: err, Fix: "write an address such as 10.0.0.1 or fd00::1, or a CIDR such as 10.0.0.0/8"}
		}
		// Flows write addresses canonically (lower case, shortest IPv6 form); so must the filter.
		m.addrs = append(m.addrs, a.String())
	}
	return m, nil
}

func (m ipMatcher) match(ip string) bool {
	if ip == "" {
		return false
	}
	if slices.Contains(m.addrs, ip) {
		return true
	}
	if len(m.prefixes) == 0 {
		return false
	}
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return false
	}
	for _, p := range m.prefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func compileSourceIP(ff *flowpb.FlowFilter, path string) (Func, error) {
	m, err := compileIPs(path, ff.GetSourceIp())
	return func(f *flowpb.Flow) bool { return m.match(f.GetIP().GetSource()) }, err
}

func compileDestinationIP(ff *flowpb.FlowFilter, path string) (Func, error) {
	m, err := compileIPs(path, ff.GetDestinationIp())
	return func(f *flowpb.Flow) bool { return m.match(f.GetIP().GetDestination()) }, err
}

// compileSourceIPXlated matches the source address after SNAT (flatnet does none, so flows leave it
// empty and match no value).
func compileSourceIPXlated(ff *flowpb.FlowFilter, path string) (Func, error) {
	m, err := compileIPs(path, ff.GetSourceIpXlated())
	return func(f *flowpb.Flow) bool { return m.match(f.GetIP().GetSourceXlated()) }, err
}

// namespacedName is one value of a pod or service filter: an empty field matches anything.
type namespacedName struct{ namespace, prefix string }

// parseNamespacedName reads Hubble's forms: "ns/name-prefix", "ns/" (the whole namespace), "/name-prefix"
// (any namespace) and "name-prefix", which means the default namespace, as in Hubble.
func parseNamespacedName(path, v string) (namespacedName, error) {
	if v == "" {
		return namespacedName{}, &Error{Path: path, Problem: "is empty",
			Fix: `write "namespace/name-prefix", "namespace/", "/name-prefix" or "name-prefix" (in namespace default)`}
	}
	ns, name, found := strings.Cut(v, "/")
	if !found {
		return namespacedName{namespace: "default", prefix: v}, nil
	}
	if strings.Contains(name, "/") {
		return namespacedName{}, &Error{Path: path, Problem: fmt.Sprintf("%q has more than one '/'", v),
			Fix: `write "namespace/name-prefix"`}
	}
	return namespacedName{namespace: ns, prefix: name}, nil
}

func matchNamespacedNames(want []namespacedName, namespace, name string) bool {
	if namespace == "" && name == "" {
		return false
	}
	for _, w := range want {
		if (w.prefix == "" || strings.HasPrefix(name, w.prefix)) && (w.namespace == "" || w.namespace == namespace) {
			return true
		}
	}
	return false
}

func compileSourcePod(ff *flowpb.FlowFilter, path string) (Func, error) {
	want, err := each(path, ff.GetSourcePod(), parseNamespacedName)
	return func(f *flowpb.Flow) bool {
		return matchNamespacedNames(want, f.GetSource().GetNamespace(), f.GetSource().GetPodName())
	}, err
}

func compileDestinationPod(ff *flowpb.FlowFilter, path string) (Func, error) {
	want, err := each(path, ff.GetDestinationPod(), parseNamespacedName)
	return func(f *flowpb.Flow) bool {
		return matchNamespacedNames(want, f.GetDestination().GetNamespace(), f.GetDestination().GetPodName())
	}, err
}

func compileSourceService(ff *flowpb.FlowFilter, path string) (Func, error) {
	want, err := each(path, ff.GetSourceService(), parseNamespacedName)
	return func(f *flowpb.Flow) bool {
		return matchNamespacedNames(want, f.GetSourceService().GetNamespace(), f.GetSourceService().GetName())
	}, err
}

func compileDestinationService(ff *flowpb.FlowFilter, path string) (Func, error) {
	want, err := each(path, ff.GetDestinationService(), parseNamespacedName)
	return func(f *flowpb.Flow) bool {
		return matchNamespacedNames(want, f.GetDestinationService().GetNamespace(), f.GetDestinationService().GetName())
	}, err
}

// compileWorkloads matches an endpoint with any workload (Deployment, StatefulSet...) equal to a filter
// value; an empty name or kind in the filter matches any.
func compileWorkloads(path string, want []*flowpb.Workload, endpoint func(*flowpb.Flow) *flowpb.Endpoint) (Func, error) {
	for i, w := range want {
		if err := refuseUnknown(fmt.Sprintf("%s[%d]", path, i), w.ProtoReflect()); err != nil {
			return nil, err
		}
	}
	return func(f *flowpb.Flow) bool {
		for _, have := range endpoint(f).GetWorkloads() {
			for _, w := range want {
				if (w.GetName() == "" || w.GetName() == have.GetName()) && (w.GetKind() == "" || w.GetKind() == have.GetKind()) {
					return true
				}
			}
		}
		return false
	}, nil
}

func sourceEndpoint(f *flowpb.Flow) *flowpb.Endpoint      { return f.GetSource() }
func destinationEndpoint(f *flowpb.Flow) *flowpb.Endpoint { return f.GetDestination() }

func compileSourceWorkload(ff *flowpb.FlowFilter, path string) (Func, error) {
	return compileWorkloads(path, ff.GetSourceWorkload(), sourceEndpoint)
}

func compileDestinationWorkload(ff *flowpb.FlowFilter, path string) (Func, error) {
	return compileWorkloads(path, ff.GetDestinationWorkload(), destinationEndpoint)
}

func compileClusterNames(path string, names []string, endpoint func(*flowpb.Flow) *flowpb.Endpoint) (Func, error) {
	if i := slices.Index(names, ""); i >= 0 {
		return nil, &Error{Path: fmt.Sprintf("%s[%d]", path, i), Problem: "is empty", Fix: "name a cluster"}
	}
	return func(f *flowpb.Flow) bool { return slices.Contains(names, endpoint(f).GetClusterName()) }, nil
}

func compileSourceClusterName(ff *flowpb.FlowFilter, path string) (Func, error) {
	return compileClusterNames(path, ff.GetSourceClusterName(), sourceEndpoint)
}

func compileDestinationClusterName(ff *flowpb.FlowFilter, path string) (Func, error) {
	return compileClusterNames(path, ff.GetDestinationClusterName(), destinationEndpoint)
}

func compileIdentities(ids []uint32, endpoint func(*flowpb.Flow) *flowpb.Endpoint) Func {
	return func(f *flowpb.Flow) bool {
		ep := endpoint(f)
		return ep != nil && slices.Contains(ids, ep.GetIdentity())
	}
}

func compileSourceIdentity(ff *flowpb.FlowFilter, _ string) (Func, error) {
	return compileIdentities(ff.GetSourceIdentity(), sourceEndpoint), nil
}

func compileDestinationIdentity(ff *flowpb.FlowFilter, _ string) (Func, error) {
	return compileIdentities(ff.GetDestinationIdentity(), destinationEndpoint), nil
}

func compileUUID(ff *flowpb.FlowFilter, path string) (Func, error) {
	uuids := ff.GetUuid()
	if i := slices.Index(uuids, ""); i >= 0 {
		return nil, &Error{Path: fmt.Sprintf("%s[%d]", path, i), Problem: "is empty", Fix: "give a flow's uuid"}
	}
	return func(f *flowpb.Flow) bool { return slices.Contains(uuids, f.GetUuid()) }, nil
}

// compileTraceID matches the flow's OpenTelemetry parent trace ID; flows without one have "".
func compileTraceID(ff *flowpb.FlowFilter, _ string) (Func, error) {
	ids := ff.GetTraceId()
	return func(f *flowpb.Flow) bool {
		return slices.Contains(ids, f.GetTraceContext().GetParent().GetTraceId())
	}, nil
}

// compileIPTraceID matches the IP option trace ID; flows without one have 0.
func compileIPTraceID(ff *flowpb.FlowFilter, _ string) (Func, error) {
	ids := ff.GetIpTraceId()
	return func(f *flowpb.Flow) bool { return slices.Contains(ids, f.GetIpTraceId().GetTraceId()) }, nil
}
