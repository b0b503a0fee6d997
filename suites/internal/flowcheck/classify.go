package flowcheck

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	flowpb "github.com/cilium/cilium/api/v1/flow"

	"github.com/flatnet/flatnet/fixtures/oracle"
	"github.com/flatnet/flatnet/suites/reachability"
)

// Probe is one probed cell: who connected to what, what the oracle expects
// and what the probe saw.
type Probe struct {
	Table string
	Key   reachability.Key
	// Source is the client pod's address.
	Source netip.Addr
	// Addr and Port are what the probe aimed at: a pod IP, or a ClusterIP.
	Addr     netip.Addr
	Port     int
	Protocol oracle.Protocol
	// Backend and BackendPort are the pod the connection ends at and its
	// port: Addr and Port when probed by pod IP.
	Backend     netip.Addr
	BackendPort int
	// Expected carries the oracle's Verdict; Observed is the probe's answer.
	Expected, Observed reachability.Cell
	// Judged says the probe answered (Observed is set).
	Judged bool
}

// Class is what the flows say about one cell.
type Class string

const (
	// Proven: the flows show the oracle's verdict where the oracle decides it.
	Proven Class = "proven"
	// WrongReason: the answer is the oracle's, the flows do not prove it.
	WrongReason Class = "wrong reason"
	// Mismatched: the answer itself differs from the oracle's; Flows are
	// what the datapath recorded of it.
	Mismatched Class = "mismatched"
	// Unchecked: nothing the datapath sees to check (a pod reaching itself
	// crosses no veth; a cell never answered).
	Unchecked Class = "unchecked"
)

// Finding is the judgement of one cell.
type Finding struct {
	Probe Probe
	Class Class
	// Why says what was found or missing, for people.
	Why   string
	Flows []*flowpb.Flow
}

// end is one side of a connection as the datapath sees it: the source pod's
// egress or the destination pod's ingress.
type end struct {
	dir flowpb.TrafficDirection
	pod string
}

func (e end) String() string {
	return strings.ToLower(e.dir.String()) + " of " + e.pod
}

// Classify judges p by flows (any flows: those of other cells are ignored);
// nodes are the nodes' addresses, which a Service's masquerade may give the
// ingress side as source.
func Classify(p Probe, flows []*flowpb.Flow, nodes []netip.Addr) Finding {
	f := Finding{Probe: p}
	v := p.Expected.Verdict
	var egress, ingress []*flowpb.Flow
	for _, fl := range flows {
		switch {
		case p.atEgress(fl):
			egress = append(egress, fl)
		case p.atIngress(fl, nodes):
			ingress = append(ingress, fl)
		}
	}
	f.Flows = append(slices.Clone(egress), ingress...)
	slices.SortStableFunc(f.Flows, func(a, b *flowpb.Flow) int { return a.GetTime().AsTime().Compare(b.GetTime().AsTime()) })
	switch {
	case !p.Judged:
		f.Class, f.Why = Unchecked, "not answered"
		return f
	case v == nil:
		f.Class, f.Why = Unchecked, "no oracle verdict for this cell"
		return f
	case v.Ingress != nil && v.Ingress.Reason == oracle.ReasonSamePod:
		f.Class, f.Why = Unchecked, "a pod reaching itself: no datapath decision to see"
		return f
	case p.Expected.Reachable != p.Observed.Reachable:
		f.Class, f.Why = Mismatched, fmt.Sprintf("observed %s; %d flow(s) of this connection", word(p.Observed.Reachable), len(f.Flows))
		return f
	}
	if v.Allowed {
		f.Class, f.Why = allowedProof(v, egress, ingress)
		return f
	}
	f.Class, f.Why = deniedProof(v, egress, ingress)
	return f
}

// allowedProof looks for the opening forwarded at both ends, and no reply
// dropped. flatnet reports a forwarded flow only when a connection opens
// (is_reply false); replies of a tracked connection pass unreported, so a
// SYN-ACK is judged only where a CNI reports it (is_reply true).
func allowedProof(v *oracle.Verdict, egress, ingress []*flowpb.Flow) (Class, string) {
	var missing []string
	for _, side := range []struct {
		dv    *oracle.DirectionVerdict
		flows []*flowpb.Flow
	}{{v.Egress, egress}, {v.Ingress, ingress}} {
		if side.dv == nil {
			continue
		}
		e := endOf(side.dv)
		if slices.ContainsFunc(side.flows, func(f *flowpb.Flow) bool {
			return f.GetVerdict() == flowpb.Verdict_DROPPED && f.GetIsReply().GetValue()
		}) {
			return WrongReason, "a reply was DROPPED at the " + e.String()
		}
		if !slices.ContainsFunc(side.flows, func(f *flowpb.Flow) bool { return f.GetVerdict() == flowpb.Verdict_FORWARDED && opening(f) }) {
			missing = append(missing, e.String())
		}
	}
	if len(missing) > 0 {
		return WrongReason, "reachable, but no FORWARDED opening recorded at the " + strings.Join(missing, " nor at the ")
	}
	return Proven, "opening FORWARDED at both ends"
}

// deniedProof looks for a policy drop at the end the oracle says denies, by
// a policy it names.
func deniedProof(v *oracle.Verdict, egress, ingress []*flowpb.Flow) (Class, string) {
	dv, flows, other := v.Egress, egress, ingress
	if dv == nil || dv.Allowed {
		dv, flows, other = v.Ingress, ingress, egress
	}
	if dv == nil || dv.Allowed {
		return Unchecked, "the oracle denies at neither end"
	}
	e := endOf(dv)
	want := dv.SelectedBy
	if dv.Reason == oracle.ReasonDenied {
		want = dv.DeniedBy
	}
	var named []string
	for _, f := range flows {
		if f.GetVerdict() != flowpb.Verdict_DROPPED || !policyDrop(f) {
			continue
		}
		by := deniedBy(f)
		if len(by) == 0 || slices.ContainsFunc(by, func(p *flowpb.Policy) bool { return names(want, p) }) {
			return Proven, fmt.Sprintf("dropped (%s) at the %s", f.GetDropReasonDesc(), e)
		}
		for _, p := range by {
			named = append(named, policyString(p))
		}
	}
	if len(named) > 0 {
		return WrongReason, fmt.Sprintf("dropped at the %s by %s; the oracle names %s", e, strings.Join(slices.Compact(named), ", "), refs(want))
	}
	for _, f := range other {
		if f.GetVerdict() == flowpb.Verdict_DROPPED && policyDrop(f) {
			return WrongReason, fmt.Sprintf("dropped by policy at the %s; the oracle denies at the %s", strings.ToLower(f.GetTrafficDirection().String()), e)
		}
	}
	for _, f := range append(slices.Clone(flows), other...) {
		if f.GetVerdict() == flowpb.Verdict_DROPPED {
			return WrongReason, fmt.Sprintf("dropped for %s, not by policy; the oracle denies at the %s", f.GetDropReasonDesc(), e)
		}
	}
	return WrongReason, fmt.Sprintf("blocked for the wrong reason: no policy drop recorded at the %s (a broken route, a lost packet?)", e)
}

func endOf(dv *oracle.DirectionVerdict) end {
	if dv.Direction == oracle.Egress {
		return end{flowpb.TrafficDirection_EGRESS, dv.Pod}
	}
	return end{flowpb.TrafficDirection_INGRESS, dv.Pod}
}

// atEgress: a flow of this connection leaving the source pod, to the
// address probed or (judged after a Service's DNAT) to the backend.
func (p Probe) atEgress(f *flowpb.Flow) bool {
	if f.GetTrafficDirection() != flowpb.TrafficDirection_EGRESS || addr(f.GetIP().GetSource()) != p.Source {
		return false
	}
	dst, port, ok := p.l4(f)
	return ok && ((dst == p.Addr && port == p.Port) || (dst == p.Backend && port == p.BackendPort))
}

// atIngress: a flow of this connection entering the backend pod, from the
// source or (masqueraded) from a node.
func (p Probe) atIngress(f *flowpb.Flow, nodes []netip.Addr) bool {
	if f.GetTrafficDirection() != flowpb.TrafficDirection_INGRESS {
		return false
	}
	src := addr(f.GetIP().GetSource())
	if src != p.Source && !slices.Contains(nodes, src) {
		return false
	}
	dst, port, ok := p.l4(f)
	return ok && dst == p.Backend && port == p.BackendPort
}

// l4 is the flow's destination and port when its protocol is the probe's.
func (p Probe) l4(f *flowpb.Flow) (netip.Addr, int, bool) {
	var port uint32
	switch p.Protocol {
	case oracle.TCP:
		t := f.GetL4().GetTCP()
		if t == nil {
			return netip.Addr{}, 0, false
		}
		port = t.GetDestinationPort()
	case oracle.UDP:
		u := f.GetL4().GetUDP()
		if u == nil {
			return netip.Addr{}, 0, false
		}
		port = u.GetDestinationPort()
	case oracle.SCTP:
		s := f.GetL4().GetSCTP()
		if s == nil {
			return netip.Addr{}, 0, false
		}
		port = s.GetDestinationPort()
	default:
		return netip.Addr{}, 0, false
	}
	return addr(f.GetIP().GetDestination()), int(port), true
}

// opening: a flow of the packet that opens the connection (TCP: SYN without
// ACK), not a reply.
func opening(f *flowpb.Flow) bool {
	if f.GetIsReply().GetValue() {
		return false
	}
	if t := f.GetL4().GetTCP(); t != nil {
		return t.GetFlags().GetSYN() && !t.GetFlags().GetACK()
	}
	return true
}

func policyDrop(f *flowpb.Flow) bool {
	d := f.GetDropReasonDesc()
	return d == flowpb.DropReason_POLICY_DENIED || d == flowpb.DropReason_POLICY_DENY
}

func deniedBy(f *flowpb.Flow) []*flowpb.Policy {
	if f.GetTrafficDirection() == flowpb.TrafficDirection_EGRESS {
		return f.GetEgressDeniedBy()
	}
	return f.GetIngressDeniedBy()
}

// names says whether p (a flow's policy) is one of refs, by namespace and
// name: CNIs spell the kind differently.
func names(refs []oracle.PolicyRef, p *flowpb.Policy) bool {
	return slices.ContainsFunc(refs, func(r oracle.PolicyRef) bool { return r.Name == p.GetName() && r.Namespace == p.GetNamespace() })
}

func policyString(p *flowpb.Policy) string {
	s := p.GetName()
	if p.GetNamespace() != "" {
		s = p.GetNamespace() + "/" + s
	}
	if p.GetKind() != "" {
		s = p.GetKind() + " " + s
	}
	return s
}

func refs(rs []oracle.PolicyRef) string {
	if len(rs) == 0 {
		return "none"
	}
	var out []string
	for _, r := range rs {
		out = append(out, r.String())
	}
	return strings.Join(out, ", ")
}

func addr(s string) netip.Addr {
	a, _ := netip.ParseAddr(s)
	return a
}

func word(reachable bool) string {
	if reachable {
		return "reachable"
	}
	return "blocked"
}

// Line is a flow on one line for reports: time, node, direction, verdict and
// reason, addresses and ports, TCP flags, the policies named.
func Line(f *flowpb.Flow) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s %s %s", f.GetTime().AsTime().UTC().Format("15:04:05.000"), f.GetNodeName(), f.GetTrafficDirection(), f.GetVerdict())
	if f.GetVerdict() == flowpb.Verdict_DROPPED {
		fmt.Fprintf(&b, " (%s)", f.GetDropReasonDesc())
	}
	var sport, dport uint32
	proto := "?"
	switch l := f.GetL4(); {
	case l.GetTCP() != nil:
		sport, dport, proto = l.GetTCP().GetSourcePort(), l.GetTCP().GetDestinationPort(), "TCP"
		var fl []string
		t := l.GetTCP().GetFlags()
		for _, x := range []struct {
			on   bool
			name string
		}{{t.GetSYN(), "SYN"}, {t.GetACK(), "ACK"}, {t.GetFIN(), "FIN"}, {t.GetRST(), "RST"}} {
			if x.on {
				fl = append(fl, x.name)
			}
		}
		if len(fl) > 0 {
			proto += " " + strings.Join(fl, ",")
		}
	case l.GetUDP() != nil:
		sport, dport, proto = l.GetUDP().GetSourcePort(), l.GetUDP().GetDestinationPort(), "UDP"
	case l.GetSCTP() != nil:
		sport, dport, proto = l.GetSCTP().GetSourcePort(), l.GetSCTP().GetDestinationPort(), "SCTP"
	}
	fmt.Fprintf(&b, " %s:%d -> %s:%d %s", f.GetIP().GetSource(), sport, f.GetIP().GetDestination(), dport, proto)
	if f.GetIsReply().GetValue() {
		b.WriteString(" reply")
	}
	var by []string
	for _, p := range append(slices.Clone(deniedBy(f)), append(f.GetEgressAllowedBy(), f.GetIngressAllowedBy()...)...) {
		by = append(by, policyString(p))
	}
	if len(by) > 0 {
		fmt.Fprintf(&b, " by %s", strings.Join(by, ", "))
	}
	return b.String()
}
