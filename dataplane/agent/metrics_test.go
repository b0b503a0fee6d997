package agent

import (
	"slices"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestMetricsNames: Names lists the agent's own families and whatever is added with
// MustRegister, each once, sorted.
func TestMetricsNames(t *testing.T) {
	m := NewMetrics()
	m.MustRegister(prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flatnet_test_total", Help: "t"}, []string{"l"}))
	names := m.Names()
	for _, want := range []string{"flatnet_cni_operation_duration_seconds", "flatnet_endpoints", "flatnet_test_total", "go_goroutines", "process_cpu_seconds_total"} {
		if _, ok := slices.BinarySearch(names, want); !ok {
			t.Errorf("Names() lacks %s: %v", want, names)
		}
	}
	if !slices.IsSorted(names) || len(slices.Compact(slices.Clone(names))) != len(names) {
		t.Errorf("Names() not sorted and unique: %v", names)
	}
}
