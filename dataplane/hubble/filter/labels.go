package filter

import (
	"fmt"
	"net/netip"
	"strings"
	"unicode"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	k8slabels "k8s.io/apimachinery/pkg/labels"
)

// Label selectors are Kubernetes label selectors over Cilium labels, which carry a source:
// "k8s:app=web", "reserved:host". As Hubble does, a key written "source:key" in the selector matches only
// labels of that source and a bare key matches any source ("app=web" selects "k8s:app=web"). Kubernetes'
// parser does not allow ':' in keys, so the selector is rewritten with the source before the first '.'
// ("k8s.app=web", "any.app=web") and flowLabels reads keys back the same way.

// anySource is the source of a selector key that names none.
const anySource = "any"

// translateSelector rewrites every key of a selector to "source.key", giving bare keys the source "any".
// Keys start after spaces and '!' and end at a space, '=', '!' or ','; what follows a key up to the comma
// ending its requirement (outside parentheses) is copied as it is.
func translateSelector(selector string) string {
	var out strings.Builder
	s := selector
	for len(s) > 0 {
		// up to the key
		i := strings.IndexFunc(s, func(r rune) bool { return !unicode.IsSpace(r) && r != '!' })
		if i < 0 {
			// A requirement with no key: Hubble writes an empty key, which the parser refuses.
			out.WriteString(s + anySource + ".")
			break
		}
		out.WriteString(s[:i])
		s = s[i:]
		// the key
		end := strings.IndexFunc(s, func(r rune) bool { return unicode.IsSpace(r) || r == '=' || r == '!' || r == ',' })
		if end < 0 {
			end = len(s)
		}
		key := s[:end]
		s = s[end:]
		if !strings.Contains(key, ":") {
			key = anySource + ":" + key
		}
		out.WriteString(strings.Replace(key, ":", ".", 1))
		// the rest of the requirement, through its comma
		depth := 0
		i = strings.IndexFunc(s, func(r rune) bool {
			switch r {
			case '(':
				depth++
			case ')':
				depth--
			case ',':
				return depth == 0
			}
			return false
		})
		if i < 0 {
			out.WriteString(s)
			break
		}
		out.WriteString(s[:i+1])
		s = s[i+1:]
	}
	return out.String()
}

func compileSelectors(path string, selectors []string, labels func(*flowpb.Flow) k8slabels.Labels) (Func, error) {
	parsed, err := each(path, selectors, func(path, sel string) (k8slabels.Selector, error) {
		s, err := k8slabels.Parse(translateSelector(sel))
		if err != nil {
			return nil, &Error{Path: path, Problem: fmt.Sprintf("%q is not a label selector", sel), Err: err,
				Fix: `write a Kubernetes label selector such as "k8s:app=web", "app in (web,api)" or "!reserved:world"`}
		}
		return s, nil
	})
	if err != nil {
		return nil, err
	}
	return func(f *flowpb.Flow) bool {
		ls := labels(f)
		for _, s := range parsed {
			if s.Matches(ls) {
				return true
			}
		}
		return false
	}, nil
}

func compileSourceLabel(ff *flowpb.FlowFilter, path string) (Func, error) {
	return compileSelectors(path, ff.GetSourceLabel(), func(f *flowpb.Flow) k8slabels.Labels {
		return (*endpointLabels)(f.GetSource())
	})
}

func compileDestinationLabel(ff *flowpb.FlowFilter, path string) (Func, error) {
	return compileSelectors(path, ff.GetDestinationLabel(), func(f *flowpb.Flow) k8slabels.Labels {
		return (*endpointLabels)(f.GetDestination())
	})
}

func compileNodeLabels(ff *flowpb.FlowFilter, path string) (Func, error) {
	return compileSelectors(path, ff.GetNodeLabels(), func(f *flowpb.Flow) k8slabels.Labels { return (*nodeLabels)(f) })
}

// endpointLabels and nodeLabels are an endpoint's and a node's Cilium labels ("source:key=value") seen as
// Kubernetes labels whose keys are translated selector keys ("source.key"). They are the flow's own
// structs under another name, so that handing them to a selector allocates nothing; a nil endpoint has no
// labels.
type (
	endpointLabels flowpb.Endpoint
	nodeLabels     flowpb.Flow
)

func (e *endpointLabels) Lookup(key string) (string, bool) {
	return lookupLabel((*flowpb.Endpoint)(e).GetLabels(), key)
}
func (e *endpointLabels) Has(key string) bool   { _, ok := e.Lookup(key); return ok }
func (e *endpointLabels) Get(key string) string { v, _ := e.Lookup(key); return v }

func (n *nodeLabels) Lookup(key string) (string, bool) {
	return lookupLabel((*flowpb.Flow)(n).GetNodeLabels(), key)
}
func (n *nodeLabels) Has(key string) bool   { _, ok := n.Lookup(key); return ok }
func (n *nodeLabels) Get(key string) string { v, _ := n.Lookup(key); return v }

// lookupLabel finds the first label with the selector key's source (any, for "any") and key. Two CIDR
// labels match when the selector's prefix contains the label's ("cidr.10.0.0.0/8" selects
// cidr:10.1.0.0/16).
func lookupLabel(ls []string, selectorKey string) (string, bool) {
	wantSource, wantKey := splitSelectorKey(selectorKey)
	for _, l := range ls {
		source, key, value := splitLabel(l)
		if wantSource != anySource && source != wantSource {
			continue
		}
		if source == "cidr" && wantSource == "cidr" {
			if cidrContains(wantKey, key) {
				return value, true
			}
			continue
		}
		if key == wantKey {
			return value, true
		}
	}
	return "", false
}

// splitSelectorKey splits a translated selector key at its first '.'; "$host" is "reserved.host" and a key
// of no or "unspec" source selects any source, as in Cilium.
func splitSelectorKey(k string) (source, key string) {
	if strings.HasPrefix(k, "$") {
		return "reserved", k[1:]
	}
	source, key, found := strings.Cut(k, ".")
	if !found {
		return anySource, k
	}
	if source == "" || source == "unspec" {
		return anySource, key
	}
	return source, key
}

// splitLabel parses a flow's label as Cilium does: "source:key=value", "$key" and "reserved.key" for
// reserved labels, and a label with no source is of source "unspec".
func splitLabel(l string) (source, key, value string) {
	switch {
	case strings.HasPrefix(l, "$"):
		source, l = "reserved", l[1:]
	default:
		var found bool
		if source, key, found = strings.Cut(l, ":"); found {
			l = key
		} else if rest, ok := strings.CutPrefix(l, "reserved."); ok {
			source, l = "reserved", rest
		} else {
			source = "unspec"
		}
	}
	if source == "" {
		source = "unspec"
	}
	key, value, _ = strings.Cut(l, "=")
	if key == "" && source == "reserved" {
		key, value = value, ""
	}
	return source, key, value
}

// cidrContains reports whether the CIDR label key outer contains inner; IPv6 keys write ':' as '-'.
func cidrContains(outer, inner string) bool {
	o, err := netip.ParsePrefix(strings.ReplaceAll(outer, "-", ":"))
	if err != nil {
		return false
	}
	i, err := netip.ParsePrefix(strings.ReplaceAll(inner, "-", ":"))
	if err != nil {
		return false
	}
	return o.Bits() <= i.Bits() && o.Contains(i.Addr())
}
