package podexec_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/flatnet/flatnet/probes/batch"
	"github.com/flatnet/flatnet/probes/internal/netnstest"
	"github.com/flatnet/flatnet/probes/internal/probetest"
	"github.com/flatnet/flatnet/probes/podexec"
)

var bins probetest.Binaries

func TestMain(m *testing.M) { bins.Main(m) }

func TestCombine(t *testing.T) {
	r := func(vs ...batch.Verdict) []batch.Result {
		var out []batch.Result
		for _, v := range vs {
			out = append(out, batch.Result{Verdict: v})
		}
		return out
	}
	for _, c := range []struct {
		attempts []batch.Result
		want     batch.Verdict
	}{
		{r(batch.Connected), batch.Connected},
		{r(batch.Timeout, batch.Timeout), batch.Timeout},
		{r(batch.Timeout, batch.Connected), batch.Flaky},
		{r(batch.Connected, batch.Timeout), batch.Flaky},
		{r(batch.Timeout, batch.Timeout, batch.Refused), batch.Flaky},
		{nil, batch.Unknown},
	} {
		if got := podexec.Combine(c.attempts); got != c.want {
			t.Errorf("Combine(%v) = %q, want %q", c.attempts, got, c.want)
		}
	}
	for v, want := range map[batch.Verdict]bool{batch.Timeout: true, batch.Other: true, batch.DNS: true,
		batch.Connected: false, batch.Refused: false, batch.Unknown: false, batch.Flaky: false} {
		if podexec.Ambiguous(v) != want {
			t.Errorf("Ambiguous(%q) = %v, want %v", v, !want, want)
		}
	}
}

// netnsExec stands in for the API server's exec: it runs the real command (the
// probe binary) as a process in the test's client namespace, streaming stdin to it
// as the API server does, and records how many lines of input each call carried
// (targets for a batch, requests for a session).
type netnsExec struct {
	t         testing.TB
	n         *netnstest.Net
	mu        sync.Mutex
	calls     []int
	procs     []*exec.Cmd
	afterCall func(call int)
}

func (e *netnsExec) Exec(ctx context.Context, pod podexec.Pod, cmd []string, stdin io.Reader, stdout, stderr io.Writer) error {
	in := &lineCounter{r: stdin}
	// stdin through an OS pipe this fake feeds on its own, as the API server's
	// exec, which ends when the process does, not when the caller next writes to a
	// stdin nobody reads (os/exec waits for its own stdin copier).
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	go func() { io.Copy(pw, in); pw.Close() }()
	c := exec.CommandContext(ctx, cmd[0], cmd[1:]...)
	c.Stdin, c.Stdout, c.Stderr = pr, stdout, stderr
	e.n.Start(e.t, c)
	pr.Close()
	e.mu.Lock()
	e.procs = append(e.procs, c)
	e.mu.Unlock()
	err = c.Wait()
	pw.Close()
	e.mu.Lock()
	e.calls = append(e.calls, in.lines())
	call := len(e.calls)
	e.mu.Unlock()
	if e.afterCall != nil {
		e.afterCall(call)
	}
	return err
}

func (e *netnsExec) started() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.procs)
}

type lineCounter struct {
	mu sync.Mutex
	r  io.Reader
	n  int
}

func (l *lineCounter) Read(p []byte) (int, error) {
	n, err := l.r.Read(p)
	l.mu.Lock()
	l.n += bytes.Count(p[:n], []byte("\n"))
	l.mu.Unlock()
	return n, err
}

func (l *lineCounter) lines() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.n
}

// setup returns targets open, refused and dropped (a listener sits behind the drop
// program, so removing it turns the dropped target into a connection).
func setup(t *testing.T) (*netnstest.Net, []batch.Target) {
	n := netnstest.New(t)
	n.Listen(t, "tcp", "192.0.2.2:8080")
	n.Listen(t, "tcp", "198.51.100.2:8080")
	return n, []batch.Target{
		{Target: netip.AddrPortFrom(netnstest.ServerIP, 8080).String()},
		{Target: netip.AddrPortFrom(netnstest.ServerIP, 9).String()},
		{Target: netip.AddrPortFrom(netnstest.DropIP, 8080).String()},
	}
}

func runner(t *testing.T, ex podexec.Executor, retries int) *podexec.Runner {
	opts := batch.DefaultOptions()
	opts.Timeout = 3 * time.Second // a connect on a loaded 2-core machine can take over 1 s (every verdict came back timeout at load 20)
	return &podexec.Runner{Exec: ex, Command: []string{bins.Probe(t), "batch"}, Options: opts, Retries: retries}
}

var pod = podexec.Pod{Namespace: "default", Name: "client"}

func TestRetriesOnlyAmbiguousTargets(t *testing.T) {
	n, targets := setup(t)
	ex := &netnsExec{t: t, n: n}
	cells, err := runner(t, ex, 2).Probe(context.Background(), pod, targets)
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		v        batch.Verdict
		attempts int
	}{{batch.Connected, 1}, {batch.Refused, 1}, {batch.Timeout, 3}}
	for i, c := range cells {
		if c.Target != targets[i] || c.Verdict != want[i].v || len(c.Attempts) != want[i].attempts {
			t.Errorf("cell %d %s: %q after %d attempts, want %q after %d", i, c.Target.Target, c.Verdict, len(c.Attempts), want[i].v, want[i].attempts)
		}
	}
	if fmt.Sprint(ex.calls) != "[3 1 1]" {
		t.Errorf("execs got %v targets, want [3 1 1]: one exec for all, then only the ambiguous one", ex.calls)
	}
}

// TestFlakyIsNotConnected: a target that timed out, then connected once the drop
// rule was gone, is flaky, with both attempts kept.
func TestFlakyIsNotConnected(t *testing.T) {
	n, targets := setup(t)
	ex := &netnsExec{t: t, n: n, afterCall: func(call int) {
		if call == 1 {
			if err := n.SetDrop(false); err != nil {
				t.Error(err)
			}
		}
	}}
	cells, err := runner(t, ex, 3).Probe(context.Background(), pod, targets)
	if err != nil {
		t.Fatal(err)
	}
	c := cells[2]
	if c.Verdict != batch.Flaky || len(c.Attempts) != 2 || c.Attempts[0].Verdict != batch.Timeout || c.Attempts[1].Verdict != batch.Connected {
		t.Fatalf("%s: %q with attempts %+v, want flaky after timeout then connected", c.Target.Target, c.Verdict, c.Attempts)
	}
	if cells[0].Verdict != batch.Connected || cells[1].Verdict != batch.Refused {
		t.Errorf("other cells changed: %q %q", cells[0].Verdict, cells[1].Verdict)
	}
}

func TestMatrixOneExecPerPod(t *testing.T) {
	n, targets := setup(t)
	ex := &netnsExec{t: t, n: n}
	pods := []podexec.Pod{{Namespace: "a", Name: "p1"}, {Namespace: "a", Name: "p2"}, {Namespace: "b", Name: "p3"}}
	rows, err := runner(t, ex, 0).Matrix(context.Background(), pods, targets, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != len(pods) || len(ex.calls) != len(pods) {
		t.Fatalf("%d rows from %d execs for %d pods, want one exec per pod", len(rows), len(ex.calls), len(pods))
	}
	for i, row := range rows {
		got := []batch.Verdict{row[0].Verdict, row[1].Verdict, row[2].Verdict}
		if fmt.Sprint(got) != "[connected refused timeout]" {
			t.Errorf("row %d (%s): %v", i, pods[i], got)
		}
	}
}

func TestBadInputMakesNoExec(t *testing.T) {
	ex := &netnsExec{t: t}
	good := []batch.Target{{Target: "192.0.2.2:80"}}
	for _, c := range []struct {
		name    string
		r       *podexec.Runner
		pod     podexec.Pod
		targets []batch.Target
		names   string
	}{
		{"no namespace", &podexec.Runner{Exec: ex}, podexec.Pod{Name: "x"}, good, "Namespace"},
		{"no name", &podexec.Runner{Exec: ex}, podexec.Pod{Namespace: "x"}, good, "Name"},
		{"bad target", &podexec.Runner{Exec: ex}, pod, []batch.Target{{Target: "192.0.2.2"}}, "targets[0]"},
		{"bad protocol", &podexec.Runner{Exec: ex}, pod, []batch.Target{{Target: "192.0.2.2:80", Protocol: "quic"}}, "protocol"},
		{"negative retries", &podexec.Runner{Exec: ex, Retries: -1}, pod, good, "Retries"},
		{"negative timeout", &podexec.Runner{Exec: ex, Options: batch.Options{Timeout: -time.Second}}, pod, good, "--timeout"},
		{"negative parallel", &podexec.Runner{Exec: ex, Options: batch.Options{Parallel: -1}}, pod, good, "--parallel"},
		{"no executor", &podexec.Runner{}, pod, good, "Exec"},
	} {
		_, err := c.r.Probe(context.Background(), c.pod, c.targets)
		if err == nil || !strings.Contains(err.Error(), c.names) {
			t.Errorf("%s: error %v, want one naming %s", c.name, err, c.names)
		}
	}
	if len(ex.calls) != 0 {
		t.Errorf("bad input led to %d execs", len(ex.calls))
	}
}

func TestBrokenAnswersAreErrors(t *testing.T) {
	n, targets := setup(t)
	ex := &netnsExec{t: t, n: n}
	probe := bins.Probe(t)
	for _, c := range []struct {
		name  string
		cmd   []string
		names string
	}{
		{"short output", []string{"sh", "-c", probe + ` batch "$@" | head -n 1`, "sh"}, "1 results for 3 targets"},
		{"probe refuses its flags", []string{probe, "batch", "--no-such-flag"}, "unknown flag: --no-such-flag"},
		{"not a probe", []string{"sh", "-c", "echo not json", "sh"}, "reading the output"},
	} {
		r := runner(t, ex, 0)
		r.Command = c.cmd
		_, err := r.Probe(context.Background(), pod, targets)
		if err == nil || !strings.Contains(err.Error(), c.names) || !strings.Contains(err.Error(), pod.String()) {
			t.Errorf("%s: error %v, want one naming the pod and %q", c.name, err, c.names)
		}
	}
}

// TestAPIServerExecutorUsesExecSubresource points the real executor at a local
// HTTP server standing in for an API server that refuses the upgrade, and checks
// the request went to the pod's exec subresource with the command and streams.
func TestAPIServerExecutorUsesExecSubresource(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Method+" "+r.URL.Path+"?"+r.URL.RawQuery)
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusForbidden)
		fmt.Fprint(w, `{"kind":"Status","apiVersion":"v1","status":"Failure","message":"exec refused by test","reason":"Forbidden","code":403}`)
	}))
	defer srv.Close()
	cfg := &rest.Config{Host: srv.URL}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ex, err := podexec.NewExecutor(cfg, cs)
	if err != nil {
		t.Fatal(err)
	}
	p := podexec.Pod{Namespace: "ns1", Name: "client", Container: "probe"}
	err = ex.Exec(context.Background(), p, []string{"/probe", "batch", "--timeout=3s"}, strings.NewReader(""), io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "ns1/client[probe]") {
		t.Fatalf("exec against a refusing server: %v, want an error naming the pod", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) == 0 {
		t.Fatal("no request reached the server")
	}
	for _, s := range seen {
		for _, part := range []string{"/api/v1/namespaces/ns1/pods/client/exec", "command=%2Fprobe", "command=batch", "command=--timeout%3D3s", "container=probe", "stdin=true", "stdout=true", "stderr=true"} {
			if !strings.Contains(s, part) {
				t.Errorf("request %q lacks %q", s, part)
			}
		}
	}
}
