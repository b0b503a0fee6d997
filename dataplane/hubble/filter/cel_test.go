package filter

import (
	"errors"
	"strings"
	"testing"

	flowpb "github.com/cilium/cilium/api/v1/flow"
)

func celFilter(exprs ...string) []*flowpb.FlowFilter {
	return []*flowpb.FlowFilter{{Experimental: &flowpb.FlowFilter_Experimental{CelExpression: exprs}}}
}

// The expressions are the kind Hubble's documentation of experimental.cel_expression shows: _flow is the
// flow.Flow message, enums are named in the flow package.
func TestCELExpression(t *testing.T) {
	runMatchCases(t, []matchCase{
		{name: "verdict enum", allow: celFilter("_flow.verdict == Verdict.DROPPED"), pass: []string{"denied"}},
		{name: "expressions are ORed", allow: celFilter(`_flow.source.namespace == "kube-system"`, "_flow.l4.UDP.destination_port == 53u"),
			pass: []string{"egressUDP"}},
		{name: "nested fields and functions",
			allow: celFilter(`_flow.destination.pod_name.startsWith("server") && _flow.l4.TCP.flags.SYN && !_flow.l4.TCP.flags.ACK`),
			pass:  []string{"denied", "forwarded"}},
		{name: "list membership", allow: celFilter(`"reserved:host" in _flow.source.labels`), pass: []string{"icmp"}},
		{name: "ANDed with other fields",
			allow: []*flowpb.FlowFilter{{Verdict: []flowpb.Verdict{flowpb.Verdict_FORWARDED},
				Experimental: &flowpb.FlowFilter_Experimental{CelExpression: []string{"_flow.is_reply == true"}}}},
			pass: []string{"reply"}},
		{name: "an empty experimental message sets nothing", allow: []*flowpb.FlowFilter{{Experimental: &flowpb.FlowFilter_Experimental{}}}, pass: all},
	})
}

func TestCELExpressionErrors(t *testing.T) {
	for _, tc := range []struct {
		expr, says string
	}{
		{"_flow.verdict ==", "not a valid CEL expression"},
		{"_flow.no_such_field", "not a valid CEL expression"},
		{"_flow.uuid", "not bool"},
	} {
		_, err := Compile(nil, append([]*flowpb.FlowFilter{{}}, celFilter("true", tc.expr)...))
		var fe *Error
		if !errors.As(err, &fe) || fe.Path != "blacklist[1].experimental.cel_expression[1]" || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("%q: error %v, want one at blacklist[1].experimental.cel_expression[1] saying %q", tc.expr, err, tc.says)
		}
	}
}
