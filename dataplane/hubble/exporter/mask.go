package exporter

import (
	"fmt"
	"strings"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
)

// mask is a field mask over flow.Flow as a tree of field names ("source.pod_name"
// → source → pod_name), as Hubble's exporter applies its fieldMask: a field
// left out is absent from the line. A nil mask keeps the whole flow.
type mask map[protoreflect.Name]mask

// newMask checks the paths against flow.Flow (proto field names, through
// messages only) and builds the tree.
func newMask(paths []string) (mask, error) {
	if len(paths) == 0 {
		return nil, nil
	}
	fm, err := fieldmaskpb.New(&flowpb.Flow{}, paths...)
	if err != nil {
		return nil, fmt.Errorf("%w: paths are flow.Flow's proto field names, e.g. source.pod_name, verdict", err)
	}
	fm.Normalize() // "source" with "source.pod_name" keeps all of source
	m := mask{}
	for _, p := range fm.GetPaths() {
		node := m
		parts := strings.Split(p, ".")
		for i, part := range parts {
			name := protoreflect.Name(part)
			if i == len(parts)-1 {
				node[name] = nil
				break
			}
			if node[name] == nil {
				node[name] = mask{}
			}
			node = node[name]
		}
	}
	return m, nil
}

// apply returns f cut down to the mask: a new flow sharing f's leaf values (f is
// read-only and stays whole), or f itself when the mask is nil.
func (m mask) apply(f *flowpb.Flow) *flowpb.Flow {
	if m == nil {
		return f
	}
	out := new(flowpb.Flow)
	m.copy(out.ProtoReflect(), f.ProtoReflect())
	return out
}

// copy sets in dst the masked fields src has; a message field src lacks stays
// absent in dst rather than becoming an empty one.
func (m mask) copy(dst, src protoreflect.Message) {
	fields := src.Descriptor().Fields()
	for name, sub := range m {
		fd := fields.ByName(name)
		if !src.Has(fd) {
			continue
		}
		if sub == nil {
			dst.Set(fd, src.Get(fd))
			continue
		}
		sub.copy(dst.Mutable(fd).Message(), src.Get(fd).Message())
	}
}
