package metrics

import (
	"strconv"
	"strings"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"github.com/prometheus/client_golang/prometheus"
)

// Cilium's monitor message types (pkg/monitor/api), which a flow's event_type.type is.
const (
	msgDrop          = 1
	msgCapture       = 3
	msgTrace         = 4
	msgPolicyVerdict = 5
	msgAccessLog     = 129
)

// traceObservationPoints names a trace event's sub_type as Hubble does
// (monitorAPI.TraceObservationPoints).
var traceObservationPoints = map[int32]string{
	0: "to-endpoint", 1: "to-proxy", 2: "to-host", 3: "to-stack", 4: "to-overlay",
	5: "from-endpoint", 6: "from-proxy", 7: "from-host", 8: "from-stack", 9: "from-overlay",
	10: "from-network", 11: "to-network", 12: "from-crypto", 13: "to-crypto",
}

// handler is one enabled metric: it counts the flows it is about.
type handler interface {
	process(f *flowpb.Flow, pv policyVerdict)
	vec() *prometheus.MetricVec
	collector() prometheus.Collector
	contexts() *contexts
}

// counter is a metric's counter vector with its context labels, which Hubble
// appends after the metric's own labels (drop puts them first).
type counter struct {
	v        *prometheus.CounterVec
	ctx      *contexts
	ctxFirst bool
}

func newCounter(name, help string, own []string, ctx *contexts, ctxFirst bool) *counter {
	labels := append(own[:len(own):len(own)], ctx.labelNames()...)
	if ctxFirst {
		labels = append(ctx.labelNames(), own...)
	}
	return &counter{
		v: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "hubble", Name: name, Help: help,
		}, labels),
		ctx: ctx, ctxFirst: ctxFirst,
	}
}

// inc counts f under the metric's own label values.
func (c *counter) inc(f *flowpb.Flow, own ...string) {
	var buf [16]string
	vals := buf[:0]
	if c.ctxFirst {
		vals = append(c.ctx.appendValues(vals, f), own...)
	} else {
		vals = c.ctx.appendValues(append(vals, own...), f)
	}
	c.v.WithLabelValues(vals...).Inc()
}

func (c *counter) vec() *prometheus.MetricVec { return c.v.MetricVec }
func (c *counter) contexts() *contexts        { return c.ctx }

// flowProtocol is Hubble's protocol label of a flow (v1.FlowProtocol).
func flowProtocol(f *flowpb.Flow) string {
	switch f.GetEventType().GetType() {
	case msgAccessLog:
		if p := l7Protocol(f); p != "" {
			return p
		}
		return "Unknown L7"
	case msgDrop, msgTrace, msgPolicyVerdict, msgCapture:
		switch l4 := f.GetL4(); {
		case l4.GetTCP() != nil:
			return "TCP"
		case l4.GetUDP() != nil:
			return "UDP"
		case l4.GetICMPv4() != nil:
			return "ICMPv4"
		case l4.GetICMPv6() != nil:
			return "ICMPv6"
		case l4.GetSCTP() != nil:
			return "SCTP"
		case l4.GetVRRP() != nil:
			return "VRRP"
		case l4.GetIGMP() != nil:
			return "IGMP"
		}
		return "Unknown L4"
	}
	return "Unknown flow"
}

// l7Protocol names the L7 record of an access-log flow ("" if none).
func l7Protocol(f *flowpb.Flow) string {
	switch l7 := f.GetL7(); {
	case l7.GetDns() != nil:
		return "DNS"
	case l7.GetHttp() != nil:
		return "HTTP"
	//lint:ignore SA1019 deprecated in the API, still what Hubble's metrics name
	case l7.GetKafka() != nil:
		return "Kafka"
	}
	return ""
}

// flowHandler is "flow": hubble_flows_processed_total{protocol,type,subtype,verdict}.
type flowHandler struct{ *counter }

func (h flowHandler) process(f *flowpb.Flow, _ policyVerdict) {
	var typ, sub string
	switch t := f.GetEventType().GetType(); t {
	case msgAccessLog:
		typ, sub = "L7", l7Protocol(f)
	case msgDrop:
		typ = "Drop"
	case msgCapture:
		typ = "Capture"
	case msgTrace:
		typ, sub = "Trace", traceObservationPoints[f.GetEventType().GetSubType()]
	case msgPolicyVerdict:
		typ = "PolicyVerdict"
	default:
		typ, sub = "Unknown", strconv.Itoa(int(t))
	}
	h.inc(f, flowProtocol(f), typ, sub, f.GetVerdict().String())
}

// dropHandler is "drop": hubble_drop_total{reason,protocol}, dropped flows only.
type dropHandler struct{ *counter }

func (h dropHandler) process(f *flowpb.Flow, _ policyVerdict) {
	if f.GetVerdict() != flowpb.Verdict_DROPPED {
		return
	}
	h.inc(f, f.GetDropReasonDesc().String(), flowProtocol(f))
}

// tcpHandler is "tcp": hubble_tcp_flags_total{flag,family}, for forwarded TCP
// flows: FIN, SYN or SYN-ACK, RST, each counted once per flow carrying it.
type tcpHandler struct{ *counter }

func (h tcpHandler) process(f *flowpb.Flow, _ policyVerdict) {
	if v := f.GetVerdict(); v != flowpb.Verdict_FORWARDED && v != flowpb.Verdict_REDIRECTED {
		return
	}
	fl := f.GetL4().GetTCP().GetFlags()
	if f.GetIP() == nil || fl == nil {
		return
	}
	family := f.GetIP().GetIpVersion().String()
	if fl.GetFIN() {
		h.inc(f, "FIN", family)
	}
	if fl.GetSYN() {
		if fl.GetACK() {
			h.inc(f, "SYN-ACK", family)
		} else {
			h.inc(f, "SYN", family)
		}
	}
	if fl.GetRST() {
		h.inc(f, "RST", family)
	}
}

// portDistributionHandler is "port-distribution":
// hubble_port_distribution_total{protocol,port}, forwarded flows known not to be
// replies, by destination port (0 for ICMP, IGMP, VRRP).
type portDistributionHandler struct{ *counter }

func (h portDistributionHandler) process(f *flowpb.Flow, _ policyVerdict) {
	if v := f.GetVerdict(); v != flowpb.Verdict_FORWARDED && v != flowpb.Verdict_REDIRECTED {
		return
	}
	// A flow that may be a reply would count its ephemeral port.
	if f.GetIsReply() == nil || f.GetIsReply().GetValue() {
		return
	}
	switch l4 := f.GetL4(); {
	case l4.GetTCP() != nil:
		h.inc(f, "TCP", strconv.Itoa(int(l4.GetTCP().GetDestinationPort())))
	case l4.GetUDP() != nil:
		h.inc(f, "UDP", strconv.Itoa(int(l4.GetUDP().GetDestinationPort())))
	case l4.GetSCTP() != nil:
		h.inc(f, "SCTP", strconv.Itoa(int(l4.GetSCTP().GetDestinationPort())))
	case l4.GetICMPv4() != nil:
		h.inc(f, "ICMPv4", "0")
	case l4.GetICMPv6() != nil:
		h.inc(f, "ICMPv6", "0")
	case l4.GetVRRP() != nil:
		h.inc(f, "VRRP", "0")
	case l4.GetIGMP() != nil:
		h.inc(f, "IGMP", "0")
	}
}

// flowsToWorldHandler is "flows-to-world": hubble_flows_to_world_total
// {protocol,verdict[,port]}, flows to an endpoint labelled reserved:world that
// are not replies; drops only for policy (unless any-drop), TCP only SYNs (with
// syn-only).
type flowsToWorldHandler struct {
	*counter
	anyDrop, port, synOnly bool
}

func (h flowsToWorldHandler) process(f *flowpb.Flow, _ policyVerdict) {
	l4 := f.GetL4()
	if l4 == nil || f.GetEventType() == nil || !isWorld(f.GetDestination()) {
		return
	}
	dropped := f.GetVerdict() == flowpb.Verdict_DROPPED
	if dropped && !h.anyDrop && f.GetDropReasonDesc() != flowpb.DropReason_POLICY_DENIED {
		return
	}
	reply := f.GetIsReply().GetValue()
	if !dropped && reply {
		return
	}
	if h.synOnly && (!l4.GetTCP().GetFlags().GetSYN() || reply) {
		return
	}
	if !h.port {
		h.inc(f, flowProtocol(f), f.GetVerdict().String())
		return
	}
	port := ""
	switch {
	case l4.GetTCP() != nil:
		port = strconv.Itoa(int(l4.GetTCP().GetDestinationPort()))
	case l4.GetUDP() != nil:
		port = strconv.Itoa(int(l4.GetUDP().GetDestinationPort()))
	case l4.GetSCTP() != nil:
		port = strconv.Itoa(int(l4.GetSCTP().GetDestinationPort()))
	}
	h.inc(f, flowProtocol(f), f.GetVerdict().String(), port)
}

func isWorld(ep *flowpb.Endpoint) bool {
	for _, l := range ep.GetLabels() {
		switch l {
		case "reserved:world", "reserved:world-ipv4", "reserved:world-ipv6":
			return true
		}
	}
	return false
}

// policyHandler is "policy": hubble_policy_verdicts_total{direction,match,action};
// see policyVerdict for which flatnet flows are verdicts.
type policyHandler struct{ *counter }

func (h policyHandler) process(f *flowpb.Flow, pv policyVerdict) {
	if !pv.ok {
		return
	}
	h.inc(f, strings.ToLower(f.GetTrafficDirection().String()), pv.match, strings.ToLower(f.GetVerdict().String()))
}
