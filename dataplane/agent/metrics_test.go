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

// TestADDPhasesObservedFromItsPut: the phases an answered ADD's PUT carries are
// observed by name, with the agent's own share; unknown names, a malformed header
// and a failed PUT's phases are not.
func TestADDPhasesObservedFromItsPut(t *testing.T) {
	m := NewMetrics()
	status := http.StatusOK
	h := m.observeAdds(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		time.Sleep(2 * time.Millisecond)
		w.WriteHeader(status)
	}))
	put := func(phases string) {
		r := httptest.NewRequest(http.MethodPut, "/v1/endpoints/c1", nil)
		r.Header.Set(endpointapi.AddStartedHeader, time.Now().Format(time.RFC3339Nano))
		r.Header.Set(endpointapi.AddPhasesHeader, phases)
		h.ServeHTTP(httptest.NewRecorder(), r)
	}
	put(endpointapi.FormatAddPhases([]endpointapi.AddPhase{{Name: "prepare", Took: time.Millisecond},
		{Name: "ipam", Took: 3 * time.Millisecond}, {Name: "setup", Took: 5 * time.Millisecond}, {Name: "nosuch", Took: time.Second}}))
	put("ipam=x")
	status = http.StatusInternalServerError
	put("ipam=0.5")

	samples := func(phase string) (uint64, float64) {
		var hist dto.Metric
		if err := m.addPhase.WithLabelValues(phase).(prometheus.Histogram).Write(&hist); err != nil {
			t.Fatal(err)
		}
		return hist.GetHistogram().GetSampleCount(), hist.GetHistogram().GetSampleSum()
	}
	for phase, want := range map[string]float64{"prepare": 0.001, "ipam": 0.003, "setup": 0.005} {
		if n, sum := samples(phase); n != 1 || sum < want*0.99 || sum > want*1.01 {
			t.Errorf("phase %s: %d samples summing %.4fs; want one of %.3fs", phase, n, sum, want)
		}
	}
	if n, sum := samples("agent"); n != 1 || sum < 0.002 {
		t.Errorf("phase agent: %d samples summing %.4fs; want one of at least 2ms", n, sum)
	}
	if n, _ := samples("nosuch"); n != 0 {
		t.Errorf("an unknown phase was published (%d samples)", n)
	}
}

// TestADDSchedObservedFromItsPut: the scheduler states an answered ADD's PUT
// carries are observed by name; unknown names and a failed PUT's are not.
func TestADDSchedObservedFromItsPut(t *testing.T) {
	m := NewMetrics()
	status := http.StatusOK
	h := m.observeAdds(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(status) }))
	put := func(sched string) {
		r := httptest.NewRequest(http.MethodPut, "/v1/endpoints/c1", nil)
		r.Header.Set(endpointapi.AddStartedHeader, time.Now().Format(time.RFC3339Nano))
		r.Header.Set(endpointapi.AddSchedHeader, sched)
		h.ServeHTTP(httptest.NewRecorder(), r)
	}
	put("oncpu=0.004,runqueue=0.25,nosuch=1")
	status = http.StatusInternalServerError
	put("oncpu=0.5,runqueue=0.5")
	for state, want := range map[string]float64{"oncpu": 0.004, "runqueue": 0.25, "nosuch": 0} {
		var hist dto.Metric
		if err := m.addSched.WithLabelValues(state).(prometheus.Histogram).Write(&hist); err != nil {
			t.Fatal(err)
		}
		n, sum := hist.GetHistogram().GetSampleCount(), hist.GetHistogram().GetSampleSum()
		if want == 0 && n != 0 {
			t.Errorf("state %s: %d samples, want none published", state, n)
		} else if want > 0 && (n != 1 || sum < want*0.99 || sum > want*1.01) {
			t.Errorf("state %s: %d samples summing %.4fs; want one of %.3fs", state, n, sum, want)
		}
	}
}
