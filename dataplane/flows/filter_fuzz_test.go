package flows

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"
)

// FuzzFlowQuery drives GET /v1/flows with any query string: the agent answers
// 200 or a 400 naming the parameter, never fails otherwise; a filter it accepts
// means the same after flatnetctl's encoding (Values) and is safe to match.
func FuzzFlowQuery(f *testing.F) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, q := range []string{
		"", "namespace=default&verdict=DROPPED", "pod=b/server&port=80&protocol=tcp",
		"label=app%3Dclient&label=k8s:tier=web", "label=app", "since=90s", "since=" + url.QueryEscape(t0.Format(time.RFC3339Nano)),
		"since=-5m", "since=yesterday", "port=0", "port=70000", "port=http", "protocol=icmp", "protocol=QUIC",
		"verdict=lost", "last=3", "last=-1", "last=x", "follow=maybe", "pod=a/", "namespace=%zz", "a=1;b=2",
	} {
		f.Add(q)
	}
	flowsOf := []*Response{
		resp(VerdictDropped, Ingress, "a", "client", "b", "server", []string{"k8s:app=client", "k8s:tier=web"}, "TCP", 40000, 80, t0),
		resp(VerdictForwarded, Egress, "b", "server", "", "", nil, "UDP", 5353, 53, t0.Add(time.Minute)),
		{Time: t0}, // no flow at all
	}
	store := NewStore(8)
	for _, r := range flowsOf {
		store.Add(r)
	}
	h := Handler(store)
	params := map[string]bool{ParamNamespace: true, ParamPod: true, ParamLabel: true, ParamVerdict: true, ParamPort: true,
		ParamProtocol: true, ParamSince: true, ParamLast: true, ParamFollow: true}
	f.Fuzz(func(t *testing.T, raw string) {
		q, err := url.ParseQuery(raw)
		if err != nil {
			return // net/http answers such a query itself; the filter never sees it
		}
		q.Del(ParamFollow) // a follow stream would not end
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, FlowsPath+"?"+q.Encode(), nil))
		switch w.Code {
		case http.StatusOK:
		case http.StatusBadRequest:
			name, _, _ := strings.Cut(w.Body.String(), " ")
			if !params[name] {
				t.Fatalf("400 %q does not start with the parameter's name", w.Body)
			}
		default:
			t.Fatalf("status %d (%q) for query %q", w.Code, w.Body, q.Encode())
		}
		fl, err := FilterFromQuery(q, t0)
		if err != nil {
			return
		}
		back, err := FilterFromQuery(fl.Values(), t0.Add(time.Hour))
		if err != nil {
			t.Fatalf("accepted filter %+v: its own encoding %q is refused: %v", fl, fl.Values().Encode(), err)
		}
		if !back.Since.Equal(fl.Since) {
			t.Fatalf("since %v comes back as %v", fl.Since, back.Since)
		}
		back.Since, fl.Since = time.Time{}, time.Time{}
		if len(back.Labels) == 0 && len(fl.Labels) == 0 {
			back.Labels, fl.Labels = nil, nil
		}
		if !reflect.DeepEqual(back, fl) {
			t.Fatalf("filter %+v comes back from %q as %+v", fl, fl.Values().Encode(), back)
		}
		for _, r := range flowsOf {
			fl.Match(r)
		}
	})
}
