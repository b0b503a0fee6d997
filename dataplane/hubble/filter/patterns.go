package filter

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	flowpb "github.com/cilium/cilium/api/v1/flow"
)

// defaultClusterName is the cluster a node name without one belongs to, as Cilium names it.
const defaultClusterName = "default"

// anyFQDN is what an empty cluster or node element of a node-name pattern matches.
const anyFQDN = `(?:[-0-9_a-z]+(?:\.[-0-9_a-z]+)*)`

// writeFQDNPattern writes the regular expression of a Hubble FQDN pattern: case-insensitive, one trailing
// dot ignored, '*' standing for any run of letters, digits, '-' and '.'.
func writeFQDNPattern(sb *strings.Builder, path, pattern string) error {
	p := strings.ToLower(strings.TrimSuffix(strings.TrimSpace(pattern), "."))
	switch {
	case p == "":
		return &Error{Path: path, Problem: fmt.Sprintf("%q is an empty pattern", pattern),
			Fix: "write a name such as kube-dns.kube-system.svc.cluster.local or *.example.com"}
	case strings.HasSuffix(p, "."):
		return &Error{Path: path, Problem: fmt.Sprintf("%q ends in more than one dot", pattern), Fix: "end it in one dot at most"}
	}
	for _, r := range p {
		switch {
		case r == '.':
			sb.WriteString(`\.`)
		case r == '*':
			sb.WriteString(`[-.0-9a-z]*`)
		case r == '-' || r == '_' || '0' <= r && r <= '9' || 'a' <= r && r <= 'z':
			sb.WriteRune(r)
		default:
			return &Error{Path: path, Problem: fmt.Sprintf("%q has %q, which a name pattern cannot", pattern, r),
				Fix: "use letters, digits, '-', '_', '.' and '*'"}
		}
	}
	return nil
}

// compileFQDNs matches flows having any name (source_names or destination_names, from DNS) that one of
// the patterns matches. flatnet has no DNS proxy yet, so its flows carry no names and match nothing.
func compileFQDNs(path string, patterns []string, names func(*flowpb.Flow) []string) (Func, error) {
	var sb strings.Builder
	sb.WriteString(`\A(?:`)
	for i, p := range patterns {
		if i > 0 {
			sb.WriteByte('|')
		}
		if err := writeFQDNPattern(&sb, fmt.Sprintf("%s[%d]", path, i), p); err != nil {
			return nil, err
		}
	}
	sb.WriteString(`)\z`)
	re := regexp.MustCompile(sb.String()) // built only of escaped, checked runes
	return func(f *flowpb.Flow) bool { return slices.ContainsFunc(names(f), re.MatchString) }, nil
}

func compileSourceFQDN(ff *flowpb.FlowFilter, path string) (Func, error) {
	return compileFQDNs(path, ff.GetSourceFqdn(), (*flowpb.Flow).GetSourceNames)
}

func compileDestinationFQDN(ff *flowpb.FlowFilter, path string) (Func, error) {
	return compileFQDNs(path, ff.GetDestinationFqdn(), (*flowpb.Flow).GetDestinationNames)
}

// compileNodeName matches Hubble's node-name patterns, "[cluster-pattern/]node-pattern", against the
// flow's node name, which is read as "default/<name>" when it names no cluster. Each element is an FQDN
// pattern; an empty one matches any name, so "k8s*" is any cluster's node k8s*, "prod/" every node of
// cluster prod.
func compileNodeName(ff *flowpb.FlowFilter, path string) (Func, error) {
	var sb strings.Builder
	sb.WriteString(`\A(?:`)
	for i, p := range ff.GetNodeName() {
		elemPath := fmt.Sprintf("%s[%d]", path, i)
		if i > 0 {
			sb.WriteByte('|')
		}
		if p == "" {
			return nil, &Error{Path: elemPath, Problem: "is empty", Fix: `write a pattern such as "kind-worker*" or "cluster/node"`}
		}
		elems := strings.Split(p, "/")
		var cluster, node string
		switch len(elems) {
		case 1:
			node = elems[0]
		case 2:
			cluster, node = elems[0], elems[1]
		default:
			return nil, &Error{Path: elemPath, Problem: fmt.Sprintf("%q has more than one '/'", p), Fix: `write "cluster-pattern/node-pattern"`}
		}
		for j, elem := range []string{cluster, node} {
			if j == 1 {
				sb.WriteByte('/')
			}
			if elem == "" {
				sb.WriteString(anyFQDN)
			} else if err := writeFQDNPattern(&sb, elemPath, elem); err != nil {
				return nil, err
			}
		}
	}
	sb.WriteString(`)\z`)
	re := regexp.MustCompile(sb.String())
	return func(f *flowpb.Flow) bool {
		name := f.GetNodeName()
		if name == "" {
			return false
		}
		if !strings.Contains(name, "/") {
			name = defaultClusterName + "/" + name
		}
		return re.MatchString(name)
	}, nil
}
