package metrics

import (
	flowpb "github.com/cilium/cilium/api/v1/flow"

	"github.com/flatnet/flatnet/dataplane/bpf"
	"github.com/flatnet/flatnet/dataplane/flows"
)

// policyVerdict is what hubble_policy_verdicts_total reads of a flow: whether it
// records a policy decision, and the match label.
type policyVerdict struct {
	ok    bool
	match string
}

// hostIdentity is Cilium's reserved:host identity, whose traffic to local pods
// is always allowed: Hubble leaves its verdicts out.
const hostIdentity = 1

// policyVerdictOf derives a policy verdict from a flatnet flow. Cilium counts its
// datapath's policy-verdict events, sent when a connection's first packet is
// judged by the endpoint's policy and when policy drops a packet; flatnet sends no
// such events, but its flows are the same decisions: a forwarded flow is reported
// once, when the datapath opens the connection, and a drop for each dropped packet
// (both sampled by the datapath's rate limit). So a flow counts when
//
//   - it was forwarded by the endpoint's policy (flatnet reason "allowed by
//     policy"); flows forwarded for another reason are not policy decisions: to or
//     from the node itself (always allowed; Hubble skips reserved:host too), or to a
//     Service address, whose egress is judged later on the backend;
//   - it was dropped by policy: drop reason POLICY_DENIED (no rule allowed it,
//     flatnet code 133, or the endpoint had no policy yet, 191) or POLICY_DENY (a
//     deny rule, 181). Other drops (invalid source, unroutable ...) are not.
//
// The labels: direction and action are the flow's traffic direction and verdict,
// lower case ("ingress", "forwarded"), as Hubble writes them. match is Cilium's
// policy match type (monitorAPI.PolicyMatchType, lower case): the flow's
// policy_match_type when it carries one; otherwise
//
//   - "all" for a flow allowed with no deciding rule: no policy enforces that
//     direction of the pod, which Cilium allows by an allow-all entry;
//   - "none" for a drop no rule decided (default deny), as Cilium reports it;
//   - "unknown" for a flow a rule decided: Cilium tells L3-only, L3-L4 and L4-only
//     matches apart by the policy-map entry that matched, and flatnet's flow events
//     do not say which entry matched (the policy and rule are in
//     *_allowed_by/*_denied_by).
func policyVerdictOf(f *flowpb.Flow, native *flows.Flow) policyVerdict {
	if f.GetSource().GetIdentity() == hostIdentity {
		return policyVerdict{}
	}
	var ruled bool
	switch f.GetVerdict() {
	case flowpb.Verdict_FORWARDED:
		if native == nil || native.Reason != bpf.ForwardPolicy.String() {
			return policyVerdict{}
		}
		ruled = len(f.GetIngressAllowedBy())+len(f.GetEgressAllowedBy()) > 0
	case flowpb.Verdict_DROPPED:
		switch f.GetDropReasonDesc() {
		case flowpb.DropReason_POLICY_DENIED:
			// Default deny: the policies putting the pod in it are named in
			// *_denied_by, but none of their rules decided.
		case flowpb.DropReason_POLICY_DENY:
			ruled = true
		default:
			return policyVerdict{}
		}
	default:
		return policyVerdict{}
	}
	match := "unknown"
	switch {
	case f.GetPolicyMatchType() != 0:
		match = policyMatchName(f.GetPolicyMatchType())
	case !ruled && f.GetVerdict() == flowpb.Verdict_FORWARDED:
		match = "all"
	case !ruled:
		match = "none"
	}
	return policyVerdict{ok: true, match: match}
}

// policyMatchName is monitorAPI.PolicyMatchType's String, lower case (as Hubble's
// policy metric writes it).
func policyMatchName(t uint32) string {
	switch t {
	case 0:
		return "none"
	case 1:
		return "l3-only"
	case 2:
		return "l3-l4"
	case 3:
		return "l4-only"
	case 4:
		return "all"
	case 5:
		return "l3-proto"
	case 6:
		return "proto-only"
	}
	return "unknown"
}
