package flows

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flatnet/flatnet/dataplane/bpf"
	"github.com/flatnet/flatnet/dataplane/compile"
	"github.com/flatnet/flatnet/dataplane/identity"
	"github.com/flatnet/flatnet/dataplane/policy"
)

// The enricher names flows through small getters, as Hubble's parser does
// (pkg/hubble/parser/getters), not through the enforcer: compile.Latest
// implements them over the compiler's published snapshots, and none of them
// waits for the policy lock.

// PeerGetter names the owner of an address.
type PeerGetter interface {
	PeerOf(ip netip.Addr) (compile.Peer, bool)
}

// RuleGetter names the rule a flow event carries.
type RuleGetter interface {
	RuleName(id compile.RuleID) (compile.RuleInfo, bool)
}

// DefaultDenyGetter lists the policies putting a local pod in default deny.
type DefaultDenyGetter interface {
	DefaultDenyBy(namespace, name string, dir policy.Direction) []policy.Ref
}

// Source is the getters flows are named with.
type Source interface {
	PeerGetter
	RuleGetter
	DefaultDenyGetter
}

// Enricher turns datapath events into flow records.
type Enricher struct {
	node string
	src  Source
	ids  *flowIDs
	// boot is the wall-clock time of CLOCK_MONOTONIC zero: event stamps are monotonic.
	boot time.Time
}

// NewEnricher names flows of node from src.
func NewEnricher(node string, src Source) (*Enricher, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return nil, fmt.Errorf("reading CLOCK_MONOTONIC to date flow events: %w", err)
	}
	ids, err := newFlowIDs()
	if err != nil {
		return nil, err
	}
	return &Enricher{node: node, src: src, ids: ids, boot: time.Now().Add(-time.Duration(ts.Nano()))}, nil
}

// dropReasons gives Cilium's DropReason enum name for each drop code, by meaning
// (flatnet's codes follow Cilium's numbers except where noted in bpf.Code).
var dropReasons = map[bpf.Code]string{
	bpf.DropInvalidSrcMAC: "INVALID_SOURCE_MAC",
	bpf.DropInvalidSource: "INVALID_SOURCE_IP",
	bpf.DropPolicy:        "POLICY_DENIED",
	bpf.DropMalformed:     "INVALID_PACKET_DROPPED",
	bpf.DropUnknownL3:     "UNSUPPORTED_L3_PROTOCOL",
	bpf.DropUnsupportedL2: "UNSUPPORTED_L2_PROTOCOL",
	bpf.DropFragNotFound:  "FIRST_LOGICAL_DATAGRAM_FRAGMENT_NOT_FOUND",
	bpf.DropPolicyDeny:    "POLICY_DENY",
	bpf.DropUnroutable:    "UNROUTABLE",
	bpf.DropNoEndpoint:    "UNKNOWN_SENDER",
	bpf.DropNoPolicy:      "POLICY_DENIED",
}

// DropReason is Cilium's name of a drop code; false for a code it has no name
// for (and for forwards).
func DropReason(c bpf.Code) (string, bool) {
	s, ok := dropReasons[c]
	return s, ok
}

// DropReasonDesc is the drop_reason_desc of a code ("" for forwards).
func DropReasonDesc(c bpf.Code) string {
	if !c.Dropped() {
		return ""
	}
	if s, ok := DropReason(c); ok {
		return s
	}
	return "DROP_REASON_UNKNOWN"
}

// Flow builds the record of one event.
func (e *Enricher) Flow(ev bpf.FlowEvent) *Flow {
	f := &Flow{
		Time:     e.boot.Add(ev.Monotonic).UTC(),
		UUID:     e.ids.next(),
		Verdict:  VerdictForwarded,
		IP:       &IP{Source: ev.Src.String(), Destination: ev.Dst.String(), IPVersion: "IPv4"},
		L4:       layer4(ev),
		Type:     "L3_L4",
		NodeName: e.node,
		Reason:   ev.Code.String(),
	}
	f.EventType.Type = 4 // trace
	local, remote := ev.Dst, ev.Src
	f.TrafficDirection, f.TraceObservationPoint = Ingress, "TO_ENDPOINT"
	if ev.Direction == policy.Egress {
		local, remote = ev.Src, ev.Dst
		f.TrafficDirection, f.TraceObservationPoint = Egress, "FROM_ENDPOINT"
		// A trace's sub_type is its observation point in Cilium's numbering
		// (TraceFromLxc = 5; TO_ENDPOINT is TraceToLxc = 0): Hubble's flow metric
		// names it from there.
		f.EventType.SubType = 5
	}
	if ev.Code.Dropped() {
		f.Verdict = VerdictDropped
		f.DropReason = uint32(ev.Code)
		f.DropReasonDesc = DropReasonDesc(ev.Code)
		f.EventType.Type = 1 // drop
		f.EventType.SubType = int(ev.Code)
	}
	localEP := e.endpoint(local, ev.LocalIdentity)
	remoteEP := e.endpoint(remote, ev.RemoteIdentity)
	if ev.Code == bpf.DropUnknownL3 || ev.Code == bpf.DropUnsupportedL2 {
		// Not an IPv4 packet: no addresses, ports or peer; the datapath gives the
		// pod's own address so that the pod is named.
		f.IP, f.L4, remoteEP = nil, nil, nil
	}
	if ev.Direction == policy.Egress {
		f.Source, f.Destination = localEP, remoteEP
	} else {
		f.Source, f.Destination = remoteEP, localEP
	}
	f.Summary = summary(ev)

	var pols []*Policy
	if ev.RuleID != 0 {
		if ri, ok := e.src.RuleName(ev.RuleID); ok {
			pols = []*Policy{PolicyOf(ri.Policy)}
			f.Rule = ri.Rule
		}
	} else if ev.Code == bpf.DropPolicy && localEP.PodName != "" {
		// No rule matched: the policies enforcing default deny decided.
		for _, r := range e.src.DefaultDenyBy(localEP.Namespace, localEP.PodName, ev.Direction) {
			pols = append(pols, PolicyOf(r))
		}
	}
	switch {
	case ev.Code.Dropped() && ev.Direction == policy.Ingress:
		f.IngressDeniedBy = pols
	case ev.Code.Dropped():
		f.EgressDeniedBy = pols
	case ev.Direction == policy.Ingress:
		f.IngressAllowedBy = pols
	default:
		f.EgressAllowedBy = pols
	}
	return f
}

func (e *Enricher) endpoint(ip netip.Addr, id identity.ID) *Endpoint {
	ep := &Endpoint{Identity: uint32(id)}
	p, ok := e.src.PeerOf(ip)
	if ok {
		ep.Namespace, ep.PodName, ep.Workloads = p.Namespace, p.Name, p.Workloads
		if p.Namespace != "" {
			ep.ClusterName = policy.ClusterName
		}
		if id == 0 {
			ep.Identity = uint32(p.Identity)
		}
	}
	if len(p.Labels) > 0 {
		ep.Labels = LabelStrings(p.Labels)
	} else if identity.ID(ep.Identity).Reserved() && ep.Identity != 0 {
		ep.Labels = []string{identity.ID(ep.Identity).String()}
	}
	return ep
}

// LabelStrings renders identity labels as Cilium prints them: "k8s:key=value", sorted.
func LabelStrings(l map[string]string) []string {
	out := make([]string, 0, len(l))
	for k, v := range l {
		out = append(out, "k8s:"+k+"="+v)
	}
	sort.Strings(out)
	return out
}

// PolicyOf is a policy as flows (and explanations) name it, with Cilium's labels.
func PolicyOf(r policy.Ref) *Policy {
	p := &Policy{Name: r.Name, Namespace: r.Namespace, Kind: string(r.Kind)}
	p.Labels = []string{
		"k8s:io.cilium.k8s.policy.derived-from=" + string(r.Kind),
		"k8s:io.cilium.k8s.policy.name=" + r.Name,
	}
	if r.Namespace != "" {
		p.Labels = append(p.Labels, "k8s:io.cilium.k8s.policy.namespace="+r.Namespace)
	}
	return p
}

const (
	tcpFIN = 1 << iota
	tcpSYN
	tcpRST
	tcpPSH
	tcpACK
	tcpURG
	tcpECE
	tcpCWR
)

func layer4(ev bpf.FlowEvent) *Layer4 {
	switch policy.Protocol(ev.Protocol) {
	case policy.ProtoTCP:
		fl := ev.TCPFlags
		return &Layer4{TCP: &TCP{SourcePort: ev.SrcPort, DestinationPort: ev.DstPort, Flags: &TCPFlags{
			FIN: fl&tcpFIN != 0, SYN: fl&tcpSYN != 0, RST: fl&tcpRST != 0, PSH: fl&tcpPSH != 0,
			ACK: fl&tcpACK != 0, URG: fl&tcpURG != 0, ECE: fl&tcpECE != 0, CWR: fl&tcpCWR != 0,
		}}}
	case policy.ProtoUDP:
		return &Layer4{UDP: &UDP{SourcePort: ev.SrcPort, DestinationPort: ev.DstPort}}
	case policy.ProtoSCTP:
		return &Layer4{SCTP: &UDP{SourcePort: ev.SrcPort, DestinationPort: ev.DstPort}}
	case 1: // ICMP: the datapath carries the echo id, not type/code
		return &Layer4{ICMPv4: &ICMP{}}
	}
	return nil
}

func summary(ev bpf.FlowEvent) string {
	switch policy.Protocol(ev.Protocol) {
	case policy.ProtoTCP:
	case 1:
		return "ICMPv4"
	default:
		return policy.Protocol(ev.Protocol).String()
	}
	var names []string
	for i, n := range []string{"FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"} {
		if ev.TCPFlags&(1<<i) != 0 {
			names = append(names, n)
		}
	}
	return "TCP Flags: " + strings.Join(names, ", ")
}
