package observer

import (
	"fmt"
	"slices"
	"strings"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
)

// fieldMask is a normalized field mask as a tree: each key a field of the
// message at its level, nil for a field copied whole.
type fieldMask map[string]fieldMask

// legacyFieldMaskNumber is experimental.field_mask's field number: Hubble moved
// the mask to field_mask (10) and reserved 1, so v1.19.4's API keeps what old
// clients send there as unknown bytes.
const legacyFieldMaskNumber = 1

// requestFieldMask is field_mask or, when that is unset, the
// experimental.field_mask older hubble CLIs send.
func requestFieldMask(req *observerpb.GetFlowsRequest) (fieldMask, error) {
	if fm := req.GetFieldMask(); fm != nil {
		return newFieldMask("field_mask", fm)
	}
	fm, err := legacyFieldMask(req.GetExperimental())
	if err != nil || fm == nil {
		return nil, err
	}
	return newFieldMask("experimental.field_mask", fm)
}

func legacyFieldMask(exp *observerpb.GetFlowsRequest_Experimental) (*fieldmaskpb.FieldMask, error) {
	b := exp.ProtoReflect().GetUnknown()
	var fm *fieldmaskpb.FieldMask
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, invalid("experimental", "malformed unknown fields: "+protowire.ParseError(n).Error(), "")
		}
		b = b[n:]
		if num != legacyFieldMaskNumber || typ != protowire.BytesType {
			if n = protowire.ConsumeFieldValue(num, typ, b); n < 0 {
				return nil, invalid("experimental", "malformed unknown fields: "+protowire.ParseError(n).Error(), "")
			}
			b = b[n:]
			continue
		}
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return nil, invalid("experimental.field_mask", "malformed: "+protowire.ParseError(n).Error(), "")
		}
		b = b[n:]
		if fm == nil {
			fm = &fieldmaskpb.FieldMask{}
		}
		// Repeated occurrences of a message field merge, as protobuf decodes them.
		if err := (proto.UnmarshalOptions{Merge: true}).Unmarshal(v, fm); err != nil {
			return nil, invalid("experimental.field_mask", "malformed: "+err.Error(), "")
		}
	}
	return fm, nil
}

// newFieldMask validates every path against flow.Flow, naming the first that is
// not one of its fields. An empty mask selects whole flows, as in Hubble.
func newFieldMask(field string, fm *fieldmaskpb.FieldMask) (fieldMask, error) {
	for i, p := range fm.GetPaths() {
		if _, err := fieldmaskpb.New(&flowpb.Flow{}, p); err != nil {
			return nil, invalid(fmt.Sprintf("%s.paths[%d]", field, i), fmt.Sprintf("%q is not a field path of flow.Flow", p),
				"use flow.Flow's proto field names joined by dots, through singular messages only, "+
					"such as time, verdict, source.namespace, l4.TCP.destination_port")
		}
	}
	norm := &fieldmaskpb.FieldMask{Paths: slices.Clone(fm.GetPaths())}
	norm.Normalize()
	if len(norm.GetPaths()) == 0 {
		return nil, nil
	}
	m := fieldMask{}
	for _, p := range norm.GetPaths() {
		m.add(p)
	}
	return m, nil
}

func (m fieldMask) add(path string) {
	head, rest, nested := strings.Cut(path, ".")
	if !nested {
		m[head] = nil // Normalize dropped any path below it
		return
	}
	if m[head] == nil {
		m[head] = fieldMask{}
	}
	m[head].add(rest)
}

// apply returns a new flow with only the masked fields of f, as Hubble's
// observer builds it: a masked message on the way is present (empty when f has
// none) unless it is a oneof's variant f does not use. Values are shared with f,
// which stays untouched: both are only read from here on.
func (m fieldMask) apply(f *flowpb.Flow) *flowpb.Flow {
	out := &flowpb.Flow{}
	m.copy(out.ProtoReflect(), f.ProtoReflect())
	return out
}

func (m fieldMask) copy(dst, src protoreflect.Message) {
	fields := dst.Descriptor().Fields()
	for name, sub := range m {
		fd := fields.ByName(protoreflect.Name(name))
		if sub == nil {
			if src.Has(fd) {
				dst.Set(fd, src.Get(fd))
			}
			continue
		}
		if oneof := fd.ContainingOneof(); oneof != nil {
			if which := src.WhichOneof(oneof); which == nil || which.Name() != fd.Name() {
				continue
			}
		}
		sub.copy(dst.Mutable(fd).Message(), src.Get(fd).Message())
	}
}
