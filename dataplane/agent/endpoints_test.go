package agent

import (
	"context"
	"errors"
	"fmt"
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

// gatedDatapath holds every Attach (and, with gateDetach, every Detach) until
// release is closed, counting how many are under way at once, and records the
// order of attaches and detaches.
type gatedDatapath struct {
	mu         sync.Mutex
	now, most  int
	arrived    chan string
	release    chan struct{}
	log        []string
	gateDetach bool
}

func newGated() *gatedDatapath {
	return &gatedDatapath{arrived: make(chan string, 64), release: make(chan struct{})}
}

// hold counts ep's call under way, says it arrived and waits for release.
func (d *gatedDatapath) hold(ep endpointapi.Endpoint) {
	d.mu.Lock()
	d.now++
	d.most = max(d.most, d.now)
	d.mu.Unlock()
	d.arrived <- ep.ContainerID
	<-d.release
	d.mu.Lock()
	d.now--
	d.mu.Unlock()
}

func (d *gatedDatapath) Attach(_ context.Context, ep endpointapi.Endpoint) error {
	d.hold(ep)
	d.mu.Lock()
	defer d.mu.Unlock()
	d.log = append(d.log, "attach "+ep.ContainerID)
	return nil
}

func (d *gatedDatapath) Detach(_ context.Context, ep endpointapi.Endpoint) error {
	if d.gateDetach {
		d.hold(ep)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.log = append(d.log, "detach "+ep.ContainerID)
	return nil
}

// A burst of DELs reaches the datapath together, where enforce's group commit
// detaches them with one write and one batch of map deletions; a Put of an
// address being detached waits for the detach.
func TestConcurrentDeletesDetachTogether(t *testing.T) {
	e, err := NewEndpoints(t.TempDir(), NoPolicy{}, NewMetrics())
	if err != nil {
		t.Fatal(err)
	}
	const n = 8
	ctx := context.Background()
	for i := range n {
		if err := e.PutEndpoint(ctx, ep(fmt.Sprintf("c%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	dp := newGated()
	dp.gateDetach = true
	e.hook = dp
	errs := make(chan error, n)
	for i := range n {
		go func() { errs <- e.DeleteEndpoint(ctx, fmt.Sprintf("c%d", i)) }()
	}
	for i := range n {
		select {
		case <-dp.arrived:
		case <-time.After(5 * time.Second):
			t.Fatalf("%d of %d detaches reached the datapath while the first was under way: the agent runs them one at a time", i, n)
		}
	}
	// c3's address, handed to a new pod while c3's detach is under way.
	next := ep("new")
	next.IP = ep("c3").IP
	put := make(chan error, 1)
	go func() { put <- e.PutEndpoint(ctx, next) }()
	select {
	case err := <-put:
		t.Fatalf("a Put of c3's address finished (%v) while c3's detach was under way", err)
	case <-time.After(300 * time.Millisecond):
	}
	close(dp.release)
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if err := <-put; err != nil {
		t.Fatal(err)
	}
	dp.mu.Lock()
	defer dp.mu.Unlock()
	if dp.most != n {
		t.Fatalf("%d detaches at once, want %d", dp.most, n)
	}
	if i := slices.Index(dp.log, "attach new"); i < 0 || !slices.Contains(dp.log[:i], "detach c3") {
		t.Fatalf("datapath calls %v: want c3 detached before its address is attached again", dp.log)
	}
	if l := e.List(); len(l) != 1 || l[0].ContainerID != "new" {
		t.Fatalf("endpoints %v, want the new one alone", l)
	}
}

// A burst of ADDs reaches the datapath together, where enforce's group commit
// attaches them with one write: the agent does not run them one at a time.
func TestConcurrentPutsAttachTogether(t *testing.T) {
	dp := newGated()
	e, err := NewEndpoints(t.TempDir(), dp, NewMetrics())
	if err != nil {
		t.Fatal(err)
	}
	const n = 8
	errs := make(chan error, n)
	for i := range n {
		go func() { errs <- e.PutEndpoint(context.Background(), ep(fmt.Sprintf("c%d", i))) }()
	}
	for i := range n {
		select {
		case <-dp.arrived:
		case <-time.After(5 * time.Second):
			t.Fatalf("%d of %d attaches reached the datapath while the first was under way: the agent runs them one at a time", i, n)
		}
	}
	close(dp.release)
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if dp.most != n || len(e.List()) != n {
		t.Fatalf("%d attaches at once (want %d), %d endpoints recorded", dp.most, n, len(e.List()))
	}
}

// No change touches an endpoint or an address whose attach is under way: a
// Delete of the container and a Put of another container given the same
// address (its first endpoint then stale) wait for it, and then see it.
func TestChangesWaitForAnAttachOfTheirEndpointOrAddress(t *testing.T) {
	dp := newGated()
	e, err := NewEndpoints(t.TempDir(), dp, NewMetrics())
	if err != nil {
		t.Fatal(err)
	}
	first := ep("a")
	again := ep("b")
	again.IP = first.IP
	type result struct {
		what string
		err  error
	}
	done := make(chan result, 3)
	ctx := context.Background()
	go func() { done <- result{"put a", e.PutEndpoint(ctx, first)} }()
	<-dp.arrived
	go func() { done <- result{"delete a", e.DeleteEndpoint(ctx, "a")} }()
	go func() { done <- result{"put b", e.PutEndpoint(ctx, again)} }()
	select {
	case r := <-done:
		t.Fatalf("%s finished (%v) while a's attach was under way", r.what, r.err)
	case <-time.After(300 * time.Millisecond):
	}
	close(dp.release)
	for range 3 {
		if r := <-done; r.err != nil {
			t.Fatalf("%s: %v", r.what, r.err)
		}
	}
	dp.mu.Lock()
	defer dp.mu.Unlock()
	if dp.log[0] != "attach a" || !slices.Contains(dp.log, "detach a") || !slices.Contains(dp.log, "attach b") {
		t.Fatalf("datapath calls %v: want a attached first, then a detached and b attached", dp.log)
	}
	if l := e.List(); len(l) != 1 || l[0].ContainerID != "b" {
		t.Fatalf("endpoints %v, want b alone", l)
	}
}
