package filter

import (
	"fmt"
	"slices"
	"strings"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// checkEnum refuses numbers the enum does not define: a client sending one means something flatnet cannot
// know, and matching it against nothing would look like "no such flows".
func checkEnum[E protoreflect.Enum](path string, values []E) error {
	for i, v := range values {
		d := v.Descriptor()
		if d.Values().ByNumber(v.Number()) != nil {
			continue
		}
		fix := "use a value of flow." + string(d.Name())
		if d.Values().Len() <= 16 {
			names := make([]string, 0, d.Values().Len())
			for j := 0; j < d.Values().Len(); j++ {
				names = append(names, string(d.Values().Get(j).Name()))
			}
			fix = "use one of " + strings.Join(names, ", ")
		}
		return &Error{Path: fmt.Sprintf("%s[%d]", path, i),
			Problem: fmt.Sprintf("%d is not a flow.%s", v.Number(), d.Name()), Fix: fix}
	}
	return nil
}

func compileVerdict(ff *flowpb.FlowFilter, path string) (Func, error) {
	verdicts := ff.GetVerdict()
	if err := checkEnum(path, verdicts); err != nil {
		return nil, err
	}
	return func(f *flowpb.Flow) bool { return slices.Contains(verdicts, f.GetVerdict()) }, nil
}

func compileTrafficDirection(ff *flowpb.FlowFilter, path string) (Func, error) {
	directions := ff.GetTrafficDirection()
	if err := checkEnum(path, directions); err != nil {
		return nil, err
	}
	return func(f *flowpb.Flow) bool { return slices.Contains(directions, f.GetTrafficDirection()) }, nil
}

// compileDropReasonDesc matches dropped flows only, as Hubble does: a forwarded flow's zero drop reason is
// not DROP_REASON_UNKNOWN.
func compileDropReasonDesc(ff *flowpb.FlowFilter, path string) (Func, error) {
	reasons := ff.GetDropReasonDesc()
	if err := checkEnum(path, reasons); err != nil {
		return nil, err
	}
	return func(f *flowpb.Flow) bool {
		return f.GetVerdict() == flowpb.Verdict_DROPPED && slices.Contains(reasons, f.GetDropReasonDesc())
	}, nil
}

func compileIPVersion(ff *flowpb.FlowFilter, path string) (Func, error) {
	versions := ff.GetIpVersion()
	if err := checkEnum(path, versions); err != nil {
		return nil, err
	}
	return func(f *flowpb.Flow) bool { return slices.Contains(versions, f.GetIP().GetIpVersion()) }, nil
}

// maxMonitorType is the largest Cilium monitor message type: the type is one byte on the wire
// (1 drop, 2 debug, 3 capture, 4 trace, 5 policy verdict, 7 trace-sock, 129 L7, 130 agent).
const maxMonitorType = 255

// compileEventType matches a flow's event type, and its sub-type (the trace observation point, the drop
// reason) when match_sub_type says so. Type 0 matches any type, as in Hubble.
func compileEventType(ff *flowpb.FlowFilter, path string) (Func, error) {
	type eventType struct {
		typ, subType int32
		matchSubType bool
	}
	types, err := each(path, ff.GetEventType(), func(path string, t *flowpb.EventTypeFilter) (eventType, error) {
		if t.GetType() < 0 || t.GetType() > maxMonitorType {
			return eventType{}, &Error{Path: path + ".type", Problem: fmt.Sprintf("%d is not a monitor message type", t.GetType()),
				Fix: "use 0 for any, 1 drop, 2 debug, 3 capture, 4 trace, 5 policy-verdict, 7 trace-sock, 129 l7, 130 agent"}
		}
		if t.GetSubType() < 0 || t.GetSubType() > maxMonitorType {
			return eventType{}, &Error{Path: path + ".sub_type", Problem: fmt.Sprintf("%d is not a monitor message sub-type", t.GetSubType()),
				Fix: "use a value from 0 to 255"}
		}
		if t.GetSubType() != 0 && !t.GetMatchSubType() {
			return eventType{}, &Error{Path: path + ".sub_type", Problem: "is set but match_sub_type is false, so it would be ignored",
				Fix: "set match_sub_type to match on it, or leave sub_type unset"}
		}
		if err := refuseUnknown(path, t.ProtoReflect()); err != nil {
			return eventType{}, err
		}
		return eventType{t.GetType(), t.GetSubType(), t.GetMatchSubType()}, nil
	})
	if err != nil {
		return nil, err
	}
	return func(f *flowpb.Flow) bool {
		ev := f.GetEventType()
		if ev == nil {
			return false
		}
		for _, t := range types {
			if (t.typ == 0 || t.typ == ev.GetType()) && (!t.matchSubType || t.subType == ev.GetSubType()) {
				return true
			}
		}
		return false
	}, nil
}
