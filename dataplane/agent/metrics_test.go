package agent

import (
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/flatnet/flatnet/dataplane/endpointapi"
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

// TestADDObservedFromItsPut: a PUT carrying the ADD's start is counted as that
// ADD once answered, ok or not; a PUT without it (or another request) is not.
func TestADDObservedFromItsPut(t *testing.T) {
	m := NewMetrics()
	status := http.StatusOK
	h := m.observeAdds(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(status) }))
	put := func(started string) {
		r := httptest.NewRequest(http.MethodPut, "/v1/endpoints/c1", nil)
		if started != "" {
			r.Header.Set(endpointapi.AddStartedHeader, started)
		}
		h.ServeHTTP(httptest.NewRecorder(), r)
	}
	put(time.Now().Add(-30 * time.Millisecond).Format(time.RFC3339Nano))
	status = http.StatusInternalServerError
	put(time.Now().Format(time.RFC3339Nano))
	put("")
	put("yesterday")
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodDelete, "/v1/endpoints/c1", nil))

	if ok, failed := testutil.ToFloat64(m.cniOps.WithLabelValues("ADD", "ok")), testutil.ToFloat64(m.cniOps.WithLabelValues("ADD", "error")); ok != 1 || failed != 1 {
		t.Errorf("ADDs counted ok %v, error %v; want 1 and 1", ok, failed)
	}
	var hist dto.Metric
	if err := m.cniDuration.WithLabelValues("ADD").(prometheus.Histogram).Write(&hist); err != nil {
		t.Fatal(err)
	}
	if n, sum := hist.GetHistogram().GetSampleCount(), hist.GetHistogram().GetSampleSum(); n != 1 || sum < 0.03 {
		t.Errorf("ADD durations: %d samples summing %.3fs; want the one ok ADD, at least 30ms", n, sum)
	}
}
