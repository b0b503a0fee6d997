package podexec_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/flatnet/flatnet/probes/batch"
	"github.com/flatnet/flatnet/probes/podexec"
)

func checkRows(t *testing.T, rows [][]podexec.Cell, pods []podexec.Pod) {
	t.Helper()
	if len(rows) != len(pods) {
		t.Fatalf("%d rows for %d pods", len(rows), len(pods))
	}
	for i, row := range rows {
		var got []batch.Verdict
		for _, c := range row {
			got = append(got, c.Verdict)
		}
		if fmt.Sprint(got) != "[connected refused timeout]" {
			t.Errorf("row %d (%s): %v, want [connected refused timeout]", i, pods[i], got)
		}
	}
}

// TestSessionsOneExecPerPodForManyMatrices: three matrix rounds over three pods
// with Sessions make three execs in all, each of which answered three requests
// and ended when the sessions were closed.
func TestSessionsOneExecPerPodForManyMatrices(t *testing.T) {
	n, targets := setup(t)
	ex := &netnsExec{t: t, n: n}
	r := runner(t, ex, 0)
	r.Sessions = podexec.NewSessions()
	pods := []podexec.Pod{{Namespace: "a", Name: "p1"}, {Namespace: "a", Name: "p2"}, {Namespace: "b", Name: "p3"}}
	for round := 0; round < 3; round++ {
		rows, err := r.Matrix(context.Background(), pods, targets, 0)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		checkRows(t, rows, pods)
	}
	if got := ex.started(); got != len(pods) {
		t.Errorf("%d execs for 3 rounds over %d pods, want one per pod", got, len(pods))
	}
	if st := r.Sessions.Stats(); st != (podexec.SessionStats{Execs: 3, Batches: 9}) {
		t.Errorf("stats %+v, want 3 execs, 9 batches, none broken", st)
	}
	r.Sessions.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ex.mu.Lock()
		calls := fmt.Sprint(ex.calls)
		ex.mu.Unlock()
		if calls == "[3 3 3]" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("execs ended with %s requests each, want [3 3 3]: every session ends on Close, having answered its three", calls)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := r.Probe(context.Background(), pods[0], targets); err == nil || !strings.Contains(err.Error(), "after Close") {
		t.Errorf("a probe after Close: %v, want an error saying the sessions are closed", err)
	}
}

// TestSessionBrokenIsReplaced: a session whose process died (its pod restarted)
// is replaced by a new exec for the next batch, which is answered in full.
func TestSessionBrokenIsReplaced(t *testing.T) {
	n, targets := setup(t)
	ex := &netnsExec{t: t, n: n}
	r := runner(t, ex, 0)
	r.Sessions = podexec.NewSessions()
	defer r.Sessions.Close()
	pods := []podexec.Pod{pod}
	rows, err := r.Matrix(context.Background(), pods, targets, 0)
	if err != nil {
		t.Fatal(err)
	}
	checkRows(t, rows, pods)
	ex.mu.Lock()
	first := ex.procs[0]
	ex.mu.Unlock()
	if err := first.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	rows, err = r.Matrix(context.Background(), pods, targets, 0)
	if err != nil {
		t.Fatalf("after the session's process was killed: %v", err)
	}
	checkRows(t, rows, pods)
	if got := ex.started(); got != 2 {
		t.Errorf("%d execs, want 2: the first session, then its replacement", got)
	}
	if st := r.Sessions.Stats(); st != (podexec.SessionStats{Execs: 2, Batches: 2, Broken: 1}) {
		t.Errorf("stats %+v, want 2 execs, 2 batches, 1 broken", st)
	}
}

// TestSessionsFallBackToAnExecPerBatch: a probe image older than --session (a
// probe that refuses the flag) is probed with an exec per batch, and the session
// is not tried again.
func TestSessionsFallBackToAnExecPerBatch(t *testing.T) {
	n, targets := setup(t)
	ex := &netnsExec{t: t, n: n}
	r := runner(t, ex, 0)
	old := `for a; do [ "$a" = --session ] && { echo "Error: unknown flag: --session" >&2; exit 1; }; done; exec ` + bins.Probe(t) + ` batch "$@"`
	r.Command = []string{"sh", "-c", old, "sh"}
	r.Sessions = podexec.NewSessions()
	defer r.Sessions.Close()
	pods := []podexec.Pod{pod}
	for round := 0; round < 2; round++ {
		rows, err := r.Matrix(context.Background(), pods, targets, 0)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		checkRows(t, rows, pods)
	}
	if got := ex.started(); got != 3 {
		t.Errorf("%d execs, want 3: the refused session, then one per batch", got)
	}
	if st := r.Sessions.Stats(); st != (podexec.SessionStats{Execs: 1, Unsupported: true}) {
		t.Errorf("stats %+v, want the one refused session exec, unsupported, no batch over a session", st)
	}
}
