package endpointapi

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"testing"
)

// recorder is a Handler that accepts everything and remembers what it got.
type recorder struct{ puts []Endpoint }

func (r *recorder) PutEndpoint(_ context.Context, ep Endpoint) error {
	r.puts = append(r.puts, ep)
	return nil
}
func (r *recorder) DeleteEndpoint(context.Context, string) error { return nil }

const validEndpoint = `{"containerID":"c1","podNamespace":"default","podName":"server","netns":"/var/run/netns/cni-1",
"hostIfName":"fn1a2b3c4d5e6f","hostIfIndex":7,"podIfName":"eth0","ip":"10.224.0.40","mac":"02:42:0a:e0:00:28"}`

// FuzzPutEndpoint drives the agent's endpoint API with what a CNI plugin (or
// anything else on the socket) may send: every request is answered 200 or
// 400 with a JSON body; a 400 reaches the agent with nothing, a 200 with
// exactly the endpoint of the path, valid, and one that survives the agent's
// JSON record across a restart unchanged.
func FuzzPutEndpoint(f *testing.F) {
	for _, s := range []struct{ id, body string }{
		{"c1", validEndpoint},
		{"c2", validEndpoint},
		{"c1", `{}`}, {"c1", `null`}, {"c1", `[]`}, {"c1", ``},
		{"c1", `{"containerID":"c1","hostIfName":"fn","hostIfIndex":0,"podIfName":"eth0","ip":"10.0.0.1"}`},
		{"c1", `{"containerID":"c1","hostIfName":"fn","hostIfIndex":3,"podIfName":"eth0","ip":"::ffff:10.0.0.1"}`},
		{"c1", `{"containerID":"c1","hostIfName":"fn","hostIfIndex":3,"podIfName":"eth0","ip":"fe80::1%eth0"}`},
		{"c1", `{"containerID":"c1","hostIfName":"fn","hostIfIndex":3,"podIfName":"eth0","ip":"10.0.0.1","extra":1}`},
		{"../x", `{"containerID":"../x","hostIfName":"fn","hostIfIndex":3,"podIfName":"eth0","ip":"10.0.0.1"}`},
		{"c1", validEndpoint + validEndpoint},
	} {
		f.Add(s.id, []byte(s.body))
	}
	f.Fuzz(func(t *testing.T, id string, body []byte) {
		if id == "" {
			return // the route needs a segment; "" is another path
		}
		rec := &recorder{}
		h := NewHTTPHandler(rec)
		req := httptest.NewRequest(http.MethodPut, "/v1/endpoints/"+url.PathEscape(id), bytes.NewReader(body))
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		switch w.Code {
		case http.StatusOK:
			var resp Response
			if err := json.Unmarshal(w.Body.Bytes(), &resp); err != nil || resp.ContainerID != id {
				t.Fatalf("200 with body %q: want Response{ContainerID: %q}", w.Body, id)
			}
			if len(rec.puts) != 1 {
				t.Fatalf("200 after %d PutEndpoint calls, want 1", len(rec.puts))
			}
			ep := rec.puts[0]
			if ep.ContainerID != id {
				t.Fatalf("endpoint %q registered for path %q", ep.ContainerID, id)
			}
			if err := ep.Validate(); err != nil {
				t.Fatalf("accepted an invalid endpoint %+v: %v", ep, err)
			}
			js, err := json.Marshal(ep)
			if err != nil {
				t.Fatalf("accepted endpoint does not encode: %v", err)
			}
			var back Endpoint
			if err := json.Unmarshal(js, &back); err != nil || !reflect.DeepEqual(back, ep) {
				t.Fatalf("accepted endpoint %+v reloads as %+v (%v)", ep, back, err)
			}
		case http.StatusBadRequest:
			if len(rec.puts) != 0 {
				t.Fatalf("400 but the agent got %+v", rec.puts)
			}
			var e ErrorResponse
			if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || !strings.Contains(e.Error, "endpoint") && !strings.Contains(e.Error, "containerID") {
				t.Fatalf("400 with body %q: want an ErrorResponse naming the endpoint or field", w.Body)
			}
		case http.StatusNotFound, http.StatusMethodNotAllowed, http.StatusTemporaryRedirect:
			// An id that leaves the route: "." and ".." are cleaned (307), never an endpoint.
			if len(rec.puts) != 0 {
				t.Fatalf("%d but the agent got %+v", w.Code, rec.puts)
			}
		default:
			t.Fatalf("status %d (body %q): want 200 or 400", w.Code, w.Body)
		}
	})
}
