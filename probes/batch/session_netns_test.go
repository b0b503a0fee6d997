package batch_test

import (
	"bufio"
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/flatnet/flatnet/probes/batch"
	"github.com/flatnet/flatnet/probes/internal/netnstest"
	"github.com/flatnet/flatnet/probes/internal/probetest"
)

// TestSessionInNetns runs `probe batch --session` in the client namespace and
// talks to it as a Runner does: each request is answered before the next is
// written (the process is the same), a refused request is answered with an error
// naming the field and the session goes on, and closing stdin ends it with exit 0.
func TestSessionInNetns(t *testing.T) {
	n := netnstest.New(t)
	m := newMatrix(t, n, 5, 5, 5)
	cmd := exec.Command(bins.Probe(t), "batch", "--session", "--timeout=2s")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	n.Start(t, cmd)
	out := bufio.NewScanner(stdout)
	out.Buffer(nil, 1<<20)
	ask := func(q any) batch.Response {
		t.Helper()
		line, err := json.Marshal(q)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := stdin.Write(append(line, '\n')); err != nil {
			t.Fatalf("writing a request: %v (stderr: %s)", err, stderr.String())
		}
		if !out.Scan() {
			t.Fatalf("no answer to %s: %v (stderr: %s)", line, out.Err(), stderr.String())
		}
		var r batch.Response
		if err := json.Unmarshal(out.Bytes(), &r); err != nil {
			t.Fatalf("answer %q: %v", out.Text(), err)
		}
		return r
	}
	check := func(r batch.Response, id uint64, targets []batch.Target) {
		t.Helper()
		if r.ID != id || r.Error != "" || len(r.Results) != len(targets) {
			t.Fatalf("answer %+v, want id %d with %d results", r, id, len(targets))
		}
		for i, res := range r.Results {
			if res.Target != targets[i].Target || res.Verdict != m.want[res.Target] {
				t.Errorf("request %d result %d: %s %q (%s), want %s %q", id, i, res.Target, res.Verdict, res.Detail, targets[i].Target, m.want[targets[i].Target])
			}
		}
	}
	opts := batch.DefaultOptions()
	opts.Timeout = time.Second
	check(ask(batch.NewRequest(1, m.targets, opts)), 1, m.targets)
	for _, c := range []struct {
		req   any
		names string
	}{
		{map[string]any{"id": 2, "timeout": "soon", "targets": m.targets}, `timeout "soon"`},
		{map[string]any{"id": 3, "parallel": -1, "targets": m.targets}, "--parallel"},
		{map[string]any{"id": 4, "targets": []batch.Target{{Target: "192.0.2.2"}}}, "targets[0]"},
		{"not a request", "not a JSON request"},
	} {
		if r := ask(c.req); r.Error == "" || !strings.Contains(r.Error, c.names) || len(r.Results) != 0 {
			t.Errorf("request %v: answer %+v, want an error naming %s and no results", c.req, r, c.names)
		}
	}
	// The session's defaults (--timeout=2s) hold where a request names nothing.
	last := m.targets[len(m.targets)-3:]
	r := ask(map[string]any{"id": 5, "targets": last})
	check(r, 5, last)
	for _, res := range r.Results {
		if res.Verdict == batch.Timeout && res.LatencyMS < 2000 {
			t.Errorf("%s timed out after %.0f ms: the session's --timeout=2s did not apply", res.Target, res.LatencyMS)
		}
	}
	if err := stdin.Close(); err != nil {
		t.Fatal(err)
	}
	if code := probetest.ExitCode(t, cmd.Wait()); code != 0 {
		t.Fatalf("exit %d when stdin closed, want 0 (stderr: %s)", code, stderr.String())
	}
}

func TestSessionRefusesTargetsOnTheCommandLine(t *testing.T) {
	n := netnstest.New(t)
	res, stderr, code := runBatch(t, n, nil, "--session", "192.0.2.2:80")
	if code != 1 || len(res) != 0 || !strings.Contains(stderr, "--session") {
		t.Fatalf("exit %d, stderr %q: want exit 1 naming --session", code, stderr)
	}
}
