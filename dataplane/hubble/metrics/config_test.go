package metrics

import (
	"reflect"
	"strings"
	"testing"
)

// The forms Cilium's documentation gives for --hubble-metrics parse as it
// describes them.
func TestParseSpecs(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []Spec
	}{
		{"", nil},
		{DefaultSpec, []Spec{{Name: "drop"}, {Name: "tcp"}, {Name: "flow"}, {Name: "port-distribution"}}},
		{"flow:sourceContext=namespace;destinationContext=namespace drop tcp policy", []Spec{
			{Name: "flow", Options: []Option{{"sourceContext", []string{"namespace"}}, {"destinationContext", []string{"namespace"}}}},
			{Name: "drop"}, {Name: "tcp"}, {Name: "policy"},
		}},
		// "multiple contexts can be specified by separating them via the | symbol"
		{"flow:destinationContext=dns|ip", []Spec{{Name: "flow", Options: []Option{{"destinationContext", []string{"dns", "ip"}}}}}},
		// labelsContext lists labels separated by ','.
		{"drop:labelsContext=source_namespace,source_pod", []Spec{{Name: "drop", Options: []Option{{"labelsContext", []string{"source_namespace", "source_pod"}}}}}},
		{"flows-to-world:any-drop;port;syn-only;sourceContext=pod", []Spec{{Name: "flows-to-world", Options: []Option{
			{Name: "any-drop"}, {Name: "port"}, {Name: "syn-only"}, {"sourceContext", []string{"pod"}}}}}},
		// White space of any kind separates metrics; a trailing ';' is harmless.
		{"  tcp\n\tpolicy:sourceIngressContext=app; ", []Spec{{Name: "tcp"}, {Name: "policy", Options: []Option{{"sourceIngressContext", []string{"app"}}}}}},
	} {
		got, err := ParseSpecs(tc.in)
		if err != nil {
			t.Errorf("ParseSpecs(%q): %v", tc.in, err)
			continue
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("ParseSpecs(%q) = %+v, want %+v", tc.in, got, tc.want)
		}
		if _, err := New(Config{Specs: got}); err != nil {
			t.Errorf("New(%q): %v", tc.in, err)
		}
	}
}

// Every mistake is refused with an error naming the metric and the option at
// fault, and what would be right.
func TestParseSpecsErrors(t *testing.T) {
	for in, want := range map[string][]string{
		"flows":                    {`unknown metric "flows"`, "flow, flows-to-world"},
		"dns":                      {`metric "dns"`, "DNS visibility", "does not have yet"},
		"httpV2:exemplars=true":    {`metric "httpV2"`, "HTTP visibility", "does not have yet"},
		"http":                     {`metric "http"`, "HTTP visibility"},
		"kafka":                    {`metric "kafka"`, "Kafka"},
		"icmp":                     {`metric "icmp"`, "ICMP type and code"},
		"drop flow drop":           {`metric "drop" given twice`},
		"flow:sourcecontext":       {`metric "flow", option "sourcecontext": needs a value`},
		"flow:destinationContext=": {`option "destinationContext": needs a value`},
		"flow:sourceContext=pod;SourceContext=ip": {`metric "flow": option "SourceContext" given twice`},
		"flow:srcContext=namespace":               {`metric "flow": unknown option "srcContext"`, "sourceContext"},
		"flow:port":                               {`metric "flow": unknown option "port"`},
		"flows-to-world:port=80":                  {`metric "flows-to-world", option "port": takes no value`},
		"tcp:sourceContext=namespace|nmespace":    {`metric "tcp", option "sourceContext": unknown context "nmespace"`, "workload-name"},
		"drop:labelsContext=source_pod,src_pod":   {`metric "drop", option "labelsContext": unknown label "src_pod"`, "destination_workload_kind"},
	} {
		_, err := ParseSpecs(in)
		if err == nil {
			t.Errorf("%q: accepted", in)
			continue
		}
		for _, w := range want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%q: error %q does not say %q", in, err, w)
			}
		}
	}
}
