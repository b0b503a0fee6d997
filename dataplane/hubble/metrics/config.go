package metrics

import (
	"fmt"
	"slices"
	"strings"
)

// DefaultSpec is the --hubble-metrics default: the set Cilium's documentation
// installs (dns,drop,tcp,flow,port-distribution,icmp,httpV2) without the three
// flatnet cannot serve (see refused).
const DefaultSpec = "drop tcp flow port-distribution"

// Spec is one metric of a --hubble-metrics value: its name and its options,
// "flow:sourceContext=namespace;destinationContext=namespace".
type Spec struct {
	Name    string
	Options []Option
}

// Option is one "key=value|value" (or a bare "key") of a metric's options.
type Option struct {
	Name   string
	Values []string
}

// served lists the metric names flatnet implements, with the options each takes
// beyond the context options every one of them takes.
var served = map[string][]string{
	"flow":              nil,
	"drop":              nil,
	"tcp":               nil,
	"policy":            nil,
	"port-distribution": nil,
	"flows-to-world":    {"any-drop", "port", "syn-only"},
}

// refused are Hubble's metrics that flatnet cannot serve, with the reason.
var refused = map[string]string{
	"dns":    "needs DNS visibility (Hubble's L7 DNS proxy), which flatnet does not have yet",
	"http":   "needs HTTP visibility (an L7 proxy), which flatnet does not have yet",
	"httpV2": "needs HTTP visibility (an L7 proxy), which flatnet does not have yet",
	"kafka":  "needs Kafka visibility (an L7 proxy), which flatnet does not have yet",
	"icmp":   "needs each flow's ICMP type and code, which flatnet's datapath does not report (its events carry the echo id)",
}

// contextOptions are the options every metric takes (Hubble's context options),
// lower-cased: Hubble matches option names case-insensitively.
var contextOptions = []string{
	"sourcecontext", "sourceegresscontext", "sourceingresscontext",
	"destinationcontext", "destinationegresscontext", "destinationingresscontext",
	"labelscontext",
}

// ParseSpecs parses a --hubble-metrics value as Hubble does: metrics separated by
// white space, each "name" or "name:option;option", an option "key=v1|v2" (or
// "key=v1,v2"). Unlike Hubble, which skips unknown metrics and ignores unknown
// options, every mistake is an error naming the metric and the option, since a
// silently missing series only shows as an empty dashboard.
func ParseSpecs(s string) ([]Spec, error) {
	var specs []Spec
	seen := map[string]bool{}
	for _, field := range strings.Fields(s) {
		name, opts, hasOpts := strings.Cut(field, ":")
		if reason, ok := refused[name]; ok {
			return nil, fmt.Errorf("metric %q: %s; flatnet serves %s", name, reason, servedNames())
		}
		if _, ok := served[name]; !ok {
			return nil, fmt.Errorf("unknown metric %q; flatnet serves %s", name, servedNames())
		}
		if seen[name] {
			return nil, fmt.Errorf("metric %q given twice: give its options once, separated by ';'", name)
		}
		seen[name] = true
		spec := Spec{Name: name}
		if hasOpts {
			given := map[string]bool{}
			for o := range strings.SplitSeq(opts, ";") {
				if o == "" {
					continue
				}
				opt, err := parseOption(name, o)
				if err != nil {
					return nil, err
				}
				if given[strings.ToLower(opt.Name)] {
					return nil, fmt.Errorf("metric %q: option %q given twice: list its values once, separated by '|'", name, opt.Name)
				}
				given[strings.ToLower(opt.Name)] = true
				spec.Options = append(spec.Options, opt)
			}
		}
		if _, err := parseContexts(name, spec.Options); err != nil {
			return nil, err
		}
		specs = append(specs, spec)
	}
	return specs, nil
}

func parseOption(metric, s string) (Option, error) {
	key, vals, hasVals := strings.Cut(s, "=")
	lk := strings.ToLower(key)
	o := Option{Name: key}
	switch {
	case slices.Contains(contextOptions, lk):
		if !hasVals || vals == "" {
			return o, fmt.Errorf("metric %q, option %q: needs a value, e.g. %s=namespace", metric, key, key)
		}
	case slices.Contains(served[metric], lk):
		if hasVals {
			return o, fmt.Errorf("metric %q, option %q: takes no value", metric, key)
		}
		return o, nil
	default:
		want := append(slices.Clone(served[metric]), "sourceContext", "destinationContext",
			"sourceEgressContext", "sourceIngressContext", "destinationEgressContext",
			"destinationIngressContext", "labelsContext")
		return o, fmt.Errorf("metric %q: unknown option %q; want one of %s", metric, key, strings.Join(want, ", "))
	}
	// Hubble splits on '|', or on ',' when there is no '|' (labelsContext's form).
	sep := ","
	if strings.Contains(vals, "|") {
		sep = "|"
	}
	for v := range strings.SplitSeq(vals, sep) {
		if v != "" {
			o.Values = append(o.Values, v)
		}
	}
	return o, nil
}

func servedNames() string {
	names := make([]string, 0, len(served))
	for n := range served {
		names = append(names, n)
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}
