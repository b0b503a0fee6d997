package agent

import (
	"context"
	"errors"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flatnet/flatnet/dataplane/endpointapi"
)

// recordingDatapath remembers attach/detach calls and can refuse attaches.
type recordingDatapath struct {
	mu       sync.Mutex
	attached map[string]endpointapi.Endpoint
	detached []string
	refuse   error
}

func (d *recordingDatapath) Attach(_ context.Context, ep endpointapi.Endpoint) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.refuse != nil {
		return d.refuse
	}
	d.attached[ep.ContainerID] = ep
	return nil
}

func (d *recordingDatapath) Detach(_ context.Context, ep endpointapi.Endpoint) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.attached, ep.ContainerID)
	d.detached = append(d.detached, ep.ContainerID)
	return nil
}

// ep is an endpoint of its own address (two endpoints with one address
// replace each other: see TestReusedAddressReplacesTheStaleEndpoint).
func ep(id string) endpointapi.Endpoint {
	h := byte(0)
	for _, c := range id {
		h = h*31 + byte(c)
	}
	return endpointapi.Endpoint{ContainerID: id, PodNamespace: "ns", PodName: "p-" + id, HostIfName: "fn" + id, HostIfIndex: 7, PodIfName: "eth0", IP: netip.AddrFrom4([4]byte{10, 224, 1, h})}
}

// serveEndpoints serves e on a real unix socket with the agent's socket
// handler and returns a client of the real endpoint API.
func serveEndpoints(t *testing.T, e *Endpoints) *endpointapi.Client {
	a := &Agent{endpoints: e, metrics: e.metrics}
	path := filepath.Join(t.TempDir(), "agent.sock")
	l, err := endpointapi.ListenUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: a.SocketHandler(), ReadHeaderTimeout: time.Second}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return endpointapi.NewClient(path, 0)
}

func TestEndpointsSurviveRestartAndReattach(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	dp := &recordingDatapath{attached: map[string]endpointapi.Endpoint{}}
	e, err := NewEndpoints(dir, dp, NewMetrics())
	if err != nil {
		t.Fatal(err)
	}
	c := serveEndpoints(t, e)
	for _, id := range []string{"a1", "b2"} {
		if err := c.PutEndpoint(ctx, ep(id)); err != nil {
			t.Fatalf("PUT %s: %v", id, err)
		}
	}
	if len(dp.attached) != 2 {
		t.Fatalf("datapath attached %v", dp.attached)
	}
	// A refusing datapath refuses the pod and records nothing.
	dp.refuse = errors.New("maps full")
	err = c.PutEndpoint(ctx, ep("c3"))
	var apiErr *endpointapi.APIError
	if !errors.As(err, &apiErr) || apiErr.Status != 500 || !strings.Contains(apiErr.Message, "maps full") {
		t.Fatalf("PUT with a refusing datapath: %v", err)
	}
	if _, ok := e.Get("c3"); ok {
		t.Fatal("refused endpoint was recorded")
	}
	dp.refuse = nil

	// New agent process: records come back; only endpoints whose veth exists are re-attached.
	dp2 := &recordingDatapath{attached: map[string]endpointapi.Endpoint{}}
	e2, err := NewEndpoints(dir, dp2, NewMetrics())
	if err != nil {
		t.Fatal(err)
	}
	if r, ok := e2.Get("a1"); !ok || r.PodName != "p-a1" || r.Created.IsZero() {
		t.Fatalf("record a1 after restart: %+v %v", r, ok)
	}
	if err := e2.Resync(ctx, func(name string) bool { return name == "fna1" }); err != nil {
		t.Fatal(err)
	}
	if _, ok := dp2.attached["a1"]; !ok || len(dp2.attached) != 1 {
		t.Fatalf("re-attached %v, want only a1", dp2.attached)
	}
	if _, ok := e2.Get("b2"); ok {
		t.Fatal("b2's record survived although its veth is gone")
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Fatalf("%d record files, want 1", len(entries))
	}

	// DELETE through the API: detached, forgotten; unknown IDs are fine; bad IDs are 400.
	c2 := serveEndpoints(t, e2)
	if err := c2.DeleteEndpoint(ctx, "a1"); err != nil {
		t.Fatal(err)
	}
	if err := c2.DeleteEndpoint(ctx, "never"); err != nil {
		t.Fatalf("DELETE of an unknown endpoint: %v", err)
	}
	if err := c2.DeleteEndpoint(ctx, "..%2Fetc"); err == nil || !strings.Contains(err.Error(), "400") {
		t.Fatalf("DELETE with a path-like ID: %v, want 400", err)
	}
	if len(e2.List()) != 0 || !slices.Contains(dp2.detached, "a1") || !slices.Contains(dp2.detached, "b2") {
		t.Fatalf("after DELETE: %v, detached %v", e2.List(), dp2.detached)
	}
}

func TestInstallConflistOnlyRewritesChanges(t *testing.T) {
	dir := t.TempDir()
	changed, err := InstallConflist(dir, []byte("one\n"))
	if err != nil || !changed {
		t.Fatalf("first install: %v %v", changed, err)
	}
	fi1, _ := os.Stat(filepath.Join(dir, "05-flatnet.conflist"))
	changed, err = InstallConflist(dir, []byte("one\n"))
	if err != nil || changed {
		t.Fatalf("same content: changed=%v %v", changed, err)
	}
	fi2, _ := os.Stat(filepath.Join(dir, "05-flatnet.conflist"))
	if !os.SameFile(fi1, fi2) {
		t.Fatal("unchanged conflist was replaced")
	}
	if changed, err = InstallConflist(dir, []byte("two\n")); err != nil || !changed {
		t.Fatalf("new content: %v %v", changed, err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Fatalf("conf dir holds %d files (temp files left?)", len(entries))
	}
}

// TestPutAnnouncesOnlyRegisteredEndpoints: every endpoint registered is handed to
// the announcer with its address; a refused one is not, and neither is any
// before an announcer is set.
func TestPutAnnouncesOnlyRegisteredEndpoints(t *testing.T) {
	ctx := context.Background()
	dp := &recordingDatapath{attached: map[string]endpointapi.Endpoint{}}
	e, err := NewEndpoints(t.TempDir(), dp, NewMetrics())
	if err != nil {
		t.Fatal(err)
	}
	c := serveEndpoints(t, e)
	if err := c.PutEndpoint(ctx, ep("a0")); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var got []netip.Addr
	e.SetAnnounce(func(a netip.Addr) { mu.Lock(); got = append(got, a); mu.Unlock() })
	if err := c.PutEndpoint(ctx, ep("a1")); err != nil {
		t.Fatal(err)
	}
	dp.refuse = errors.New("maps full")
	_ = c.PutEndpoint(ctx, ep("b2"))
	mu.Lock()
	defer mu.Unlock()
	if want := []netip.Addr{ep("a1").IP}; !slices.Equal(got, want) {
		t.Errorf("announced %v, want %v", got, want)
	}
}
