package flows

import (
	flowpb "github.com/cilium/cilium/api/v1/flow"
	"github.com/google/uuid"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Proto is the flow in Hubble's API form (flow.Flow of github.com/cilium/cilium/api/v1),
// what the Observer serves, the exporter writes and Hubble's metrics count. It is
// built once, on first use, and shared: callers must not modify it.
func (r *Response) Proto() *flowpb.Flow {
	if p := r.proto.Load(); p != nil {
		return p
	}
	p := r.Flow.toProto()
	if r.proto.CompareAndSwap(nil, p) {
		return p
	}
	return r.proto.Load()
}

func (f *Flow) toProto() *flowpb.Flow {
	p := &flowpb.Flow{
		Time:                  timestamppb.New(f.Time),
		Uuid:                  f.UUID,
		Verdict:               flowpb.Verdict(flowpb.Verdict_value[f.Verdict]),
		DropReason:            f.DropReason,
		DropReasonDesc:        flowpb.DropReason(flowpb.DropReason_value[f.DropReasonDesc]),
		L4:                    f.L4.toProto(),
		Source:                f.Source.toProto(),
		Destination:           f.Destination.toProto(),
		Type:                  flowpb.FlowType_L3_L4,
		NodeName:              f.NodeName,
		EventType:             &flowpb.CiliumEventType{Type: int32(f.EventType.Type), SubType: int32(f.EventType.SubType)},
		TrafficDirection:      flowpb.TrafficDirection(flowpb.TrafficDirection_value[f.TrafficDirection]),
		TraceObservationPoint: flowpb.TraceObservationPoint(flowpb.TraceObservationPoint_value[f.TraceObservationPoint]),
		Summary:               f.Summary, //nolint:staticcheck // deprecated in the API, still what `hubble observe` prints
		IngressAllowedBy:      policiesProto(f.IngressAllowedBy),
		EgressAllowedBy:       policiesProto(f.EgressAllowedBy),
		IngressDeniedBy:       policiesProto(f.IngressDeniedBy),
		EgressDeniedBy:        policiesProto(f.EgressDeniedBy),
	}
	if p.Uuid == "" {
		// A flow no enricher named (built by hand): still unique, at
		// crypto/rand's price.
		p.Uuid = uuid.NewString()
	}
	if f.IP != nil {
		p.IP = &flowpb.IP{Source: f.IP.Source, Destination: f.IP.Destination, IpVersion: flowpb.IPVersion_IPv4}
	}
	if f.Verdict == VerdictForwarded {
		// The datapath reports a forwarded flow when it opens the connection (a
		// new conntrack entry), so it is never the reply direction. A drop carries
		// no conntrack state: is_reply stays unknown, as in Cilium's drop events.
		p.IsReply = wrapperspb.Bool(false)
	}
	return p
}

func (l *Layer4) toProto() *flowpb.Layer4 {
	switch {
	case l == nil:
		return nil
	case l.TCP != nil:
		t := &flowpb.TCP{SourcePort: uint32(l.TCP.SourcePort), DestinationPort: uint32(l.TCP.DestinationPort)}
		if fl := l.TCP.Flags; fl != nil {
			t.Flags = &flowpb.TCPFlags{FIN: fl.FIN, SYN: fl.SYN, RST: fl.RST, PSH: fl.PSH, ACK: fl.ACK, URG: fl.URG, ECE: fl.ECE, CWR: fl.CWR}
		}
		return &flowpb.Layer4{Protocol: &flowpb.Layer4_TCP{TCP: t}}
	case l.UDP != nil:
		return &flowpb.Layer4{Protocol: &flowpb.Layer4_UDP{UDP: &flowpb.UDP{SourcePort: uint32(l.UDP.SourcePort), DestinationPort: uint32(l.UDP.DestinationPort)}}}
	case l.SCTP != nil:
		return &flowpb.Layer4{Protocol: &flowpb.Layer4_SCTP{SCTP: &flowpb.SCTP{SourcePort: uint32(l.SCTP.SourcePort), DestinationPort: uint32(l.SCTP.DestinationPort)}}}
	case l.ICMPv4 != nil:
		return &flowpb.Layer4{Protocol: &flowpb.Layer4_ICMPv4{ICMPv4: &flowpb.ICMPv4{Type: l.ICMPv4.Type, Code: l.ICMPv4.Code}}}
	}
	return nil
}

func (e *Endpoint) toProto() *flowpb.Endpoint {
	if e == nil {
		return nil
	}
	return &flowpb.Endpoint{
		ID:          e.ID,
		Identity:    e.Identity,
		ClusterName: e.ClusterName,
		Namespace:   e.Namespace,
		Labels:      e.Labels,
		PodName:     e.PodName,
		Workloads:   workloadsProto(e.Workloads),
	}
}

func workloadsProto(ws []Workload) []*flowpb.Workload {
	if len(ws) == 0 {
		return nil
	}
	out := make([]*flowpb.Workload, len(ws))
	for i, w := range ws {
		out[i] = &flowpb.Workload{Name: w.Name, Kind: w.Kind}
	}
	return out
}

func policiesProto(ps []*Policy) []*flowpb.Policy {
	if len(ps) == 0 {
		return nil
	}
	out := make([]*flowpb.Policy, len(ps))
	for i, p := range ps {
		out[i] = &flowpb.Policy{Name: p.Name, Namespace: p.Namespace, Labels: p.Labels, Revision: p.Revision, Kind: p.Kind}
	}
	return out
}
