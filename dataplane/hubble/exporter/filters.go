package exporter

import (
	flowpb "github.com/cilium/cilium/api/v1/flow"

	"github.com/flatnet/flatnet/dataplane/hubble/filter"
)

// compileFilters is Hubble's allow/deny semantics over an entry's lists, its
// errors naming them as the config does ("includeFilters[0].source_ip[1]: ...").
func compileFilters(include, exclude []*flowpb.FlowFilter) (func(*flowpb.Flow) bool, error) {
	return filter.CompileNamed("includeFilters", include, "excludeFilters", exclude)
}
