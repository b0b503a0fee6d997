package flows

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Filter selects flows as `hubble observe` does: namespace, pod, label and port match
// either side of a flow; all set fields must match.
type Filter struct {
	Namespace string
	Pod       string   // pod name, or namespace/name
	Labels    []string // key=value (or "k8s:key=value"), all on the same side
	Verdict   string   // FORWARDED or DROPPED
	Port      uint16
	Protocol  string // TCP, UDP, SCTP, ICMPv4
	Since     time.Time
}

// Match reports whether r passes the filter.
func (f Filter) Match(r *Response) bool {
	fl := r.Flow
	if fl == nil {
		return false
	}
	if f.Verdict != "" && fl.Verdict != f.Verdict {
		return false
	}
	if !f.Since.IsZero() && fl.Time.Before(f.Since) {
		return false
	}
	if f.Protocol != "" && protocolOf(fl) != f.Protocol {
		return false
	}
	if f.Port != 0 {
		s, d := ports(fl)
		if s != f.Port && d != f.Port {
			return false
		}
	}
	if f.Namespace == "" && f.Pod == "" && len(f.Labels) == 0 {
		return true
	}
	return f.matchEndpoint(fl.Source) || f.matchEndpoint(fl.Destination)
}

func (f Filter) matchEndpoint(ep *Endpoint) bool {
	if ep == nil {
		return false
	}
	if f.Namespace != "" && ep.Namespace != f.Namespace {
		return false
	}
	if f.Pod != "" {
		if ns, name, ok := strings.Cut(f.Pod, "/"); ok {
			if ep.Namespace != ns || ep.PodName != name {
				return false
			}
		} else if ep.PodName != f.Pod {
			return false
		}
	}
	for _, want := range f.Labels {
		if !strings.Contains(want, ":") {
			want = "k8s:" + want
		}
		found := false
		for _, l := range ep.Labels {
			if l == want {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

func protocolOf(f *Flow) string {
	switch {
	case f.L4 == nil:
		return ""
	case f.L4.TCP != nil:
		return "TCP"
	case f.L4.UDP != nil:
		return "UDP"
	case f.L4.SCTP != nil:
		return "SCTP"
	case f.L4.ICMPv4 != nil:
		return "ICMPv4"
	}
	return ""
}

func ports(f *Flow) (src, dst uint16) {
	switch {
	case f.L4 == nil:
	case f.L4.TCP != nil:
		return f.L4.TCP.SourcePort, f.L4.TCP.DestinationPort
	case f.L4.UDP != nil:
		return f.L4.UDP.SourcePort, f.L4.UDP.DestinationPort
	case f.L4.SCTP != nil:
		return f.L4.SCTP.SourcePort, f.L4.SCTP.DestinationPort
	}
	return 0, 0
}

// Query parameters of GET /v1/flows (flatnetctl sends them, the agent filters).
const (
	ParamNamespace = "namespace"
	ParamPod       = "pod"
	ParamLabel     = "label"
	ParamVerdict   = "verdict"
	ParamPort      = "port"
	ParamProtocol  = "protocol"
	ParamSince     = "since"
	ParamLast      = "last"
	ParamFollow    = "follow"
)

// Values encodes the filter as query parameters.
func (f Filter) Values() url.Values {
	v := url.Values{}
	set := func(k, s string) {
		if s != "" {
			v.Set(k, s)
		}
	}
	set(ParamNamespace, f.Namespace)
	set(ParamPod, f.Pod)
	for _, l := range f.Labels {
		v.Add(ParamLabel, l)
	}
	set(ParamVerdict, f.Verdict)
	if f.Port != 0 {
		v.Set(ParamPort, strconv.Itoa(int(f.Port)))
	}
	set(ParamProtocol, f.Protocol)
	if !f.Since.IsZero() {
		v.Set(ParamSince, f.Since.UTC().Format(time.RFC3339Nano))
	}
	return v
}

// ParseFilter checks user input; errors name the flag or parameter and the fix.
// since is an RFC 3339 time or a duration back from now ("5m").
func ParseFilter(namespace, pod string, labels []string, verdict, port, protocol, since string, now time.Time) (Filter, error) {
	f := Filter{Namespace: namespace, Pod: pod, Labels: labels}
	for _, l := range labels {
		if k, _, ok := strings.Cut(strings.TrimPrefix(l, "k8s:"), "="); !ok || k == "" {
			return Filter{}, fmt.Errorf("label %q: want key=value, e.g. app=server", l)
		}
	}
	switch v := strings.ToUpper(verdict); v {
	case "", VerdictForwarded, VerdictDropped:
		f.Verdict = v
	default:
		return Filter{}, fmt.Errorf("verdict %q: use FORWARDED or DROPPED", verdict)
	}
	if port != "" {
		n, err := strconv.ParseUint(port, 10, 16)
		if err != nil || n == 0 {
			return Filter{}, fmt.Errorf("port %q: want a number 1-65535", port)
		}
		f.Port = uint16(n)
	}
	switch p := strings.ToUpper(protocol); p {
	case "":
	case "TCP", "UDP", "SCTP":
		f.Protocol = p
	case "ICMP", "ICMPV4":
		f.Protocol = "ICMPv4"
	default:
		return Filter{}, fmt.Errorf("protocol %q: use TCP, UDP, SCTP or ICMP", protocol)
	}
	if since != "" {
		if t, err := time.Parse(time.RFC3339Nano, since); err == nil {
			f.Since = t
		} else if d, err := time.ParseDuration(since); err == nil && d >= 0 {
			f.Since = now.Add(-d)
		} else {
			return Filter{}, fmt.Errorf("since %q: want an RFC 3339 time (2006-01-02T15:04:05Z) or a duration (5m)", since)
		}
	}
	return f, nil
}

// FilterFromQuery parses GET /v1/flows parameters.
func FilterFromQuery(q url.Values, now time.Time) (Filter, error) {
	return ParseFilter(q.Get(ParamNamespace), q.Get(ParamPod), q[ParamLabel], q.Get(ParamVerdict),
		q.Get(ParamPort), q.Get(ParamProtocol), q.Get(ParamSince), now)
}
