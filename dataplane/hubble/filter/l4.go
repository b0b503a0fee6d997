package filter

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	flowpb "github.com/cilium/cilium/api/v1/flow"
)

// protocols are the names Hubble's protocol field accepts, each with the test of whether a flow carries
// that protocol (its L4 or L7 record is present).
var protocols = map[string]func(*flowpb.Flow) bool{
	"icmp":   func(f *flowpb.Flow) bool { return f.GetL4().GetICMPv4() != nil || f.GetL4().GetICMPv6() != nil },
	"icmpv4": func(f *flowpb.Flow) bool { return f.GetL4().GetICMPv4() != nil },
	"icmpv6": func(f *flowpb.Flow) bool { return f.GetL4().GetICMPv6() != nil },
	"tcp":    func(f *flowpb.Flow) bool { return f.GetL4().GetTCP() != nil },
	"udp":    func(f *flowpb.Flow) bool { return f.GetL4().GetUDP() != nil },
	"sctp":   func(f *flowpb.Flow) bool { return f.GetL4().GetSCTP() != nil },
	"vrrp":   func(f *flowpb.Flow) bool { return f.GetL4().GetVRRP() != nil },
	"igmp":   func(f *flowpb.Flow) bool { return f.GetL4().GetIGMP() != nil },
	"dns":    func(f *flowpb.Flow) bool { return f.GetL7().GetDns() != nil },
	"http":   func(f *flowpb.Flow) bool { return f.GetL7().GetHttp() != nil },
	"kafka":  func(f *flowpb.Flow) bool { return f.GetL7().GetKafka() != nil },
}

// compileProtocol matches L4 or L7 protocol names, case-insensitively as Hubble does.
func compileProtocol(ff *flowpb.FlowFilter, path string) (Func, error) {
	tests, err := each(path, ff.GetProtocol(), func(path, p string) (func(*flowpb.Flow) bool, error) {
		test, ok := protocols[strings.ToLower(p)]
		if !ok {
			return nil, &Error{Path: path, Problem: fmt.Sprintf("unknown protocol %q", p),
				Fix: "use one of icmp, icmpv4, icmpv6, tcp, udp, sctp, vrrp, igmp, dns, http, kafka"}
		}
		return test, nil
	})
	if err != nil {
		return nil, err
	}
	return func(f *flowpb.Flow) bool {
		for _, test := range tests {
			if test(f) {
				return true
			}
		}
		return false
	}, nil
}

// l4Ports returns a flow's TCP, UDP or SCTP ports; ok is false for flows without ports (ICMP).
func l4Ports(f *flowpb.Flow) (src, dst uint32, ok bool) {
	l4 := f.GetL4()
	if tcp := l4.GetTCP(); tcp != nil {
		return tcp.GetSourcePort(), tcp.GetDestinationPort(), true
	}
	if udp := l4.GetUDP(); udp != nil {
		return udp.GetSourcePort(), udp.GetDestinationPort(), true
	}
	if sctp := l4.GetSCTP(); sctp != nil {
		return sctp.GetSourcePort(), sctp.GetDestinationPort(), true
	}
	return 0, 0, false
}

func parsePorts(path string, values []string) ([]uint32, error) {
	return each(path, values, func(path, p string) (uint32, error) {
		n, err := strconv.ParseUint(p, 10, 16)
		if err != nil {
			return 0, &Error{Path: path, Problem: fmt.Sprintf("%q is not a port", p),
				Fix: "use a decimal number from 0 to 65535"}
		}
		return uint32(n), nil
	})
}

func compileSourcePort(ff *flowpb.FlowFilter, path string) (Func, error) {
	ports, err := parsePorts(path, ff.GetSourcePort())
	if err != nil {
		return nil, err
	}
	return func(f *flowpb.Flow) bool {
		src, _, ok := l4Ports(f)
		return ok && slices.Contains(ports, src)
	}, nil
}

func compileDestinationPort(ff *flowpb.FlowFilter, path string) (Func, error) {
	ports, err := parsePorts(path, ff.GetDestinationPort())
	if err != nil {
		return nil, err
	}
	return func(f *flowpb.Flow) bool {
		_, dst, ok := l4Ports(f)
		return ok && slices.Contains(ports, dst)
	}, nil
}

// compileTCPFlags matches a flow whose TCP flags include every flag of any one filter value: SYN matches
// SYN and SYN-ACK. A value with no flag set matches every flow that has TCP flags, as in Hubble.
func compileTCPFlags(ff *flowpb.FlowFilter, path string) (Func, error) {
	wants, err := each(path, ff.GetTcpFlags(), func(path string, t *flowpb.TCPFlags) (uint16, error) {
		if err := refuseUnknown(path, t.ProtoReflect()); err != nil {
			return 0, err
		}
		return tcpFlagBits(t), nil
	})
	if err != nil {
		return nil, err
	}
	return func(f *flowpb.Flow) bool {
		flags := f.GetL4().GetTCP().GetFlags()
		if flags == nil {
			return false
		}
		have := tcpFlagBits(flags)
		for _, want := range wants {
			if have&want == want {
				return true
			}
		}
		return false
	}, nil
}

func tcpFlagBits(t *flowpb.TCPFlags) uint16 {
	var bits uint16
	for i, set := range []bool{t.GetFIN(), t.GetSYN(), t.GetRST(), t.GetPSH(), t.GetACK(), t.GetURG(), t.GetECE(), t.GetCWR(), t.GetNS()} {
		if set {
			bits |= 1 << i
		}
	}
	return bits
}

// compileReply matches is_reply. A flow whose direction is unknown matches neither value, except that a
// dropped one counts as not a reply: Hubble keeps that for clients written against the deprecated reply
// field, where dropped flows were never replies.
func compileReply(ff *flowpb.FlowFilter, _ string) (Func, error) {
	replies := ff.GetReply()
	return func(f *flowpb.Flow) bool {
		if f.GetIsReply() == nil && f.GetVerdict() != flowpb.Verdict_DROPPED {
			return false
		}
		return slices.Contains(replies, f.GetIsReply().GetValue())
	}, nil
}

// compileEncrypted matches the IP record's encrypted bit (WireGuard/IPsec); flatnet encrypts nothing, so
// its flows match only false.
func compileEncrypted(ff *flowpb.FlowFilter, _ string) (Func, error) {
	values := ff.GetEncrypted()
	return func(f *flowpb.Flow) bool { return slices.Contains(values, f.GetIP().GetEncrypted()) }, nil
}

// compileInterface matches the interface the flow was observed on; an index of 0 or an empty name matches
// any.
func compileInterface(ff *flowpb.FlowFilter, path string) (Func, error) {
	ifaces := ff.GetInterface()
	for i, iface := range ifaces {
		if err := refuseUnknown(fmt.Sprintf("%s[%d]", path, i), iface.ProtoReflect()); err != nil {
			return nil, err
		}
	}
	return func(f *flowpb.Flow) bool {
		have := f.GetInterface()
		if have == nil {
			return false
		}
		for _, want := range ifaces {
			if (want.GetIndex() == 0 || want.GetIndex() == have.GetIndex()) &&
				(want.GetName() == "" || want.GetName() == have.GetName()) {
				return true
			}
		}
		return false
	}, nil
}
