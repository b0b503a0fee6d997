package filter

import (
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"

	flowpb "github.com/cilium/cilium/api/v1/flow"
)

// The L7 fields match the flow's L7 record as Hubble defines them. flatnet has no L7 proxy yet, so its
// flows carry no L7 record and match none of them; the filters are still checked and honoured, so that a
// request means the same here as against Cilium.

// messageTypeAccessLog is the monitor message type of L7 flows ("l7" in hubble observe --type).
const messageTypeAccessLog = 129

func compileRegexps(path string, exprs []string) ([]*regexp.Regexp, error) {
	return each(path, exprs, func(path, expr string) (*regexp.Regexp, error) {
		re, err := regexp.Compile(expr)
		if err != nil {
			return nil, &Error{Path: path, Problem: fmt.Sprintf("%q is not a regular expression", expr), Err: err,
				Fix: "write an RE2 regular expression (https://github.com/google/re2/wiki/Syntax)"}
		}
		return re, nil
	})
}

func matchAny(res []*regexp.Regexp, s string) bool {
	return slices.ContainsFunc(res, func(re *regexp.Regexp) bool { return re.MatchString(s) })
}

// compileDNSQuery matches the query of DNS flows against regular expressions (unanchored, as in Hubble).
func compileDNSQuery(ff *flowpb.FlowFilter, path string) (Func, error) {
	res, err := compileRegexps(path, ff.GetDnsQuery())
	if err != nil {
		return nil, err
	}
	return func(f *flowpb.Flow) bool {
		dns := f.GetL7().GetDns()
		return dns != nil && matchAny(res, dns.GetQuery())
	}, nil
}

// requireL7Events refuses an HTTP field beside event types that exclude L7 flows: Hubble refuses that
// filter, which could match nothing.
func requireL7Events(ff *flowpb.FlowFilter, path string) error {
	types := ff.GetEventType()
	if len(types) == 0 || slices.ContainsFunc(types, func(t *flowpb.EventTypeFilter) bool { return t.GetType() == messageTypeAccessLog }) {
		return nil
	}
	return &Error{Path: path, Problem: "filters HTTP flows, but event_type excludes L7 events",
		Fix: "add event type 129 (l7) or leave event_type unset"}
}

var (
	httpStatusFull   = regexp.MustCompile(`^[1-5][0-9]{2}$`)
	httpStatusPrefix = regexp.MustCompile(`^[1-5][0-9]?\+$`)
)

// compileHTTPStatusCode matches HTTP responses by code: "404" exactly, "4+" or "40+" by prefix.
func compileHTTPStatusCode(ff *flowpb.FlowFilter, path string) (Func, error) {
	if err := requireL7Events(ff, path); err != nil {
		return nil, err
	}
	var full, prefixes []string
	for i, s := range ff.GetHttpStatusCode() {
		switch {
		case httpStatusFull.MatchString(s):
			full = append(full, s)
		case httpStatusPrefix.MatchString(s):
			prefixes = append(prefixes, strings.TrimSuffix(s, "+"))
		default:
			return nil, &Error{Path: fmt.Sprintf("%s[%d]", path, i), Problem: fmt.Sprintf("%q is not a status code or prefix", s),
				Fix: `write a code such as "404" or a prefix such as "5+" or "40+"`}
		}
	}
	return func(f *flowpb.Flow) bool {
		http := f.GetL7().GetHttp()
		if http.GetCode() == 0 { // no HTTP record, or a request
			return false
		}
		code := fmt.Sprintf("%03d", http.GetCode())
		return slices.Contains(full, code) ||
			slices.ContainsFunc(prefixes, func(p string) bool { return strings.HasPrefix(code, p) })
	}, nil
}

func compileHTTPMethod(ff *flowpb.FlowFilter, path string) (Func, error) {
	if err := requireL7Events(ff, path); err != nil {
		return nil, err
	}
	methods := ff.GetHttpMethod()
	if i := slices.Index(methods, ""); i >= 0 {
		return nil, &Error{Path: path + "[" + strconv.Itoa(i) + "]", Problem: "is empty", Fix: "name a method such as GET"}
	}
	return func(f *flowpb.Flow) bool {
		method := f.GetL7().GetHttp().GetMethod()
		return method != "" && slices.ContainsFunc(methods, func(m string) bool { return strings.EqualFold(m, method) })
	}, nil
}

// compileHTTPPath matches the path of the request URL against regular expressions.
func compileHTTPPath(ff *flowpb.FlowFilter, path string) (Func, error) {
	if err := requireL7Events(ff, path); err != nil {
		return nil, err
	}
	res, err := compileRegexps(path, ff.GetHttpPath())
	if err != nil {
		return nil, err
	}
	return func(f *flowpb.Flow) bool {
		raw := f.GetL7().GetHttp().GetUrl()
		if raw == "" {
			return false
		}
		u, err := url.ParseRequestURI(raw)
		return err == nil && matchAny(res, u.Path)
	}, nil
}

// compileHTTPURL matches the whole request URL against regular expressions.
func compileHTTPURL(ff *flowpb.FlowFilter, path string) (Func, error) {
	if err := requireL7Events(ff, path); err != nil {
		return nil, err
	}
	res, err := compileRegexps(path, ff.GetHttpUrl())
	if err != nil {
		return nil, err
	}
	return func(f *flowpb.Flow) bool {
		u := f.GetL7().GetHttp().GetUrl()
		return u != "" && matchAny(res, u)
	}, nil
}

// compileHTTPHeader matches flows having any header equal (key and value, exactly) to a filter header.
func compileHTTPHeader(ff *flowpb.FlowFilter, path string) (Func, error) {
	if err := requireL7Events(ff, path); err != nil {
		return nil, err
	}
	want := ff.GetHttpHeader()
	for i, h := range want {
		if err := refuseUnknown(fmt.Sprintf("%s[%d]", path, i), h.ProtoReflect()); err != nil {
			return nil, err
		}
	}
	return func(f *flowpb.Flow) bool {
		for _, have := range f.GetL7().GetHttp().GetHeaders() {
			for _, w := range want {
				if w.GetKey() == have.GetKey() && w.GetValue() == have.GetValue() {
					return true
				}
			}
		}
		return false
	}, nil
}
