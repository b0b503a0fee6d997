// Package filter compiles Hubble's FlowFilters (github.com/cilium/cilium/api/v1/flow, v1.19.4) into a
// predicate over flows, with the semantics Hubble gives them, so that the upstream hubble CLI, hubble-relay
// and Hubble's exporter configuration select the same flows from flatnet as they would from Cilium.
//
// A list of FlowFilters is an OR: a flow passes an allow list when it matches any of its filters (an empty
// list lets everything through) and passes a deny list when it matches none of them. Within one FlowFilter
// every set field must match (AND), and a field matches when any of its values does (OR). A repeated field
// is set when it has values, as on the wire (Hubble also treats an empty non-nil Go slice as set, matching
// nothing; no decoded request has one), and a FlowFilter with no field set matches every flow.
//
// Everything is validated when the filters are compiled, never while flows are matched: a bad CIDR, label
// selector, port, regular expression, enum value, an unknown field (from a newer client) or a field flatnet
// cannot honour is a *Error naming the field's path and saying how to fix it. A set field is never
// silently ignored.
package filter

import (
	"fmt"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Func reports whether a flow passes.
type Func func(*flowpb.Flow) bool

// Error is a FlowFilter that cannot be compiled. The observer turns it into gRPC InvalidArgument.
type Error struct {
	// Path names the field, as the request spells it: "whitelist[0].source_ip[1]".
	Path string
	// Problem says what is wrong with it: `"10.0.0/8" is not an IP or CIDR`.
	Problem string
	// Fix says what to send instead.
	Fix string
	// Err is the parser's own error, when there is one.
	Err error
}

func (e *Error) Error() string {
	s := e.Path + ": " + e.Problem
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	if e.Fix != "" {
		s += " (" + e.Fix + ")"
	}
	return s
}

func (e *Error) Unwrap() error { return e.Err }

// Compile builds the predicate of a GetFlows request: a flow passes when it matches ANY allow filter (or
// allow is empty) and NO deny filter. Within one FlowFilter every set field must match (AND); within one
// field, any of its values (OR). Errors name the request's fields, whitelist and blacklist.
//
// A nil flow never passes.
func Compile(allow, deny []*flowpb.FlowFilter) (Func, error) {
	return CompileNamed("whitelist", allow, "blacklist", deny)
}

// CompileNamed is Compile for callers whose lists have other names (the exporter's allowList and denyList):
// the names only prefix the paths of errors.
func CompileNamed(allowName string, allow []*flowpb.FlowFilter, denyName string, deny []*flowpb.FlowFilter) (Func, error) {
	allowFs, err := each(allowName, allow, compileFilter)
	if err != nil {
		return nil, err
	}
	denyFs, err := each(denyName, deny, compileFilter)
	if err != nil {
		return nil, err
	}
	return func(f *flowpb.Flow) bool {
		if f == nil {
			return false
		}
		if len(allowFs) > 0 && !anyMatch(allowFs, f) {
			return false
		}
		return !anyMatch(denyFs, f)
	}, nil
}

func anyMatch(fs []Func, f *flowpb.Flow) bool {
	for _, match := range fs {
		if match(f) {
			return true
		}
	}
	return false
}

// field compiles one field of a FlowFilter; path is the field's own path ("whitelist[0].source_ip").
type field struct {
	name    protoreflect.Name
	compile func(ff *flowpb.FlowFilter, path string) (Func, error)
}

// knownFields are the names of fieldOrder: any other field set in a FlowFilter is refused.
var knownFields = func() map[protoreflect.Name]bool {
	m := make(map[protoreflect.Name]bool)
	for _, f := range fieldOrder {
		m[f.name] = true
	}
	return m
}()

// compileFilter builds the AND of the fields set in ff. A FlowFilter with no field set matches every flow,
// as in Hubble.
func compileFilter(path string, ff *flowpb.FlowFilter) (Func, error) {
	m := ff.ProtoReflect()
	if err := refuseUnknown(path, m); err != nil {
		return nil, err
	}
	fields := m.Descriptor().Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		if m.Has(fd) && !knownFields[fd.Name()] {
			return nil, &Error{Path: path + "." + string(fd.Name()), Problem: "flatnet does not support this field",
				Fix: "leave it unset"}
		}
	}
	var preds []Func
	for _, f := range fieldOrder {
		if !m.Has(fields.ByName(f.name)) {
			continue
		}
		pred, err := f.compile(ff, path+"."+string(f.name))
		if err != nil {
			return nil, err
		}
		if pred != nil {
			preds = append(preds, pred)
		}
	}
	switch len(preds) {
	case 0:
		return func(*flowpb.Flow) bool { return true }, nil
	case 1:
		return preds[0], nil
	}
	return func(f *flowpb.Flow) bool {
		for _, pred := range preds {
			if !pred(f) {
				return false
			}
		}
		return true
	}, nil
}

// refuseUnknown fails on fields this API version does not define: a newer client's filter that flatnet
// would otherwise apply only in part.
func refuseUnknown(path string, m protoreflect.Message) error {
	if len(m.GetUnknown()) == 0 {
		return nil
	}
	return &Error{Path: path, Problem: "carries fields unknown to Hubble's API v1.19.4, which flatnet serves",
		Fix: "use filters that Hubble v1.19.4 defines"}
}

// each validates and converts every value of a repeated field, naming the element in errors.
func each[T, U any](path string, values []T, convert func(path string, v T) (U, error)) ([]U, error) {
	out := make([]U, 0, len(values))
	for i, v := range values {
		u, err := convert(fmt.Sprintf("%s[%d]", path, i), v)
		if err != nil {
			return nil, err
		}
		out = append(out, u)
	}
	return out, nil
}
