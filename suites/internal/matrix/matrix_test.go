package matrix

import (
	"context"
	"io"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flatnet/flatnet/fixtures/oracle"
	"github.com/flatnet/flatnet/probes/batch"
	"github.com/flatnet/flatnet/probes/podexec"
	"github.com/flatnet/flatnet/suites/internal/workload"
	"github.com/flatnet/flatnet/suites/reachability"
)

// localExec runs the real `probe batch` command in this process, as if
// every pod were the test itself: the probes go to loopback addresses.
type localExec struct {
	mu    sync.Mutex
	execs int
}

func (l *localExec) Exec(ctx context.Context, pod podexec.Pod, cmd []string, stdin io.Reader, stdout, stderr io.Writer) error {
	l.mu.Lock()
	l.execs++
	l.mu.Unlock()
	c := batch.NewCommand()
	c.SetArgs(cmd[2:]) // after "/probe batch"
	c.SetIn(stdin)
	c.SetOut(stdout)
	c.SetErr(stderr)
	return c.ExecuteContext(ctx)
}

// world is two "pods" on loopback addresses, each with a "Service"
// address; TCP and UDP servers answer on the listed addresses only.
type world struct {
	port int
	snap workload.Snapshot
	plan Plan
}

const (
	ipA, ipB, svcA, svcB = "127.0.0.11", "127.0.0.12", "127.0.0.21", "127.0.0.22"
)

func newWorld(t *testing.T) *world {
	t.Helper()
	// A port free on every address used.
	l, err := net.Listen("tcp", ipA+":0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	w := &world{port: port, snap: workload.Snapshot{
		PodIPs:         map[string]netip.Addr{"n/a": netip.MustParseAddr(ipA), "n/b": netip.MustParseAddr(ipB)},
		ClusterIPs:     map[string]netip.Addr{"n/s-a": netip.MustParseAddr(svcA), "n/s-b": netip.MustParseAddr(svcB)},
		ExecContainers: map[string]string{"n/a": "c", "n/b": "c"},
	}}
	pods := []reachability.Endpoint{{Label: "n/a", Peer: oracle.PodPeer("n", "a")}, {Label: "n/b", Peer: oracle.PodPeer("n", "b")}}
	svcs := []reachability.Endpoint{
		{Label: "svc:n/a", Peer: oracle.PodPeer("n", "a"), Service: &reachability.ServiceRef{Namespace: "n", Name: "s-a"}},
		{Label: "svc:n/b", Peer: oracle.PodPeer("n", "b"), Service: &reachability.ServiceRef{Namespace: "n", Name: "s-b"}},
	}
	w.plan = Plan{Title: "loopback", From: pods, Views: []View{{Name: "pod IP", To: pods}, {Name: "Service", To: svcs}},
		Ports: []reachability.PortProtocol{{Port: port, Protocol: oracle.TCP}, {Port: port, Protocol: oracle.UDP}}}
	return w
}

// serve answers TCP and UDP on addr:port until the test ends.
func (w *world) serve(t *testing.T, addrs ...string) {
	t.Helper()
	for _, a := range addrs {
		hp := net.JoinHostPort(a, strconv.Itoa(w.port))
		l, err := net.Listen("tcp", hp)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
		u, err := net.ListenPacket("udp", hp)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { u.Close() })
		go func() {
			buf := make([]byte, 512)
			for {
				n, from, err := u.ReadFrom(buf)
				if err != nil {
					return
				}
				_ = n
				u.WriteTo([]byte("host"), from)
			}
		}()
	}
}

// expect builds the expected tables by hand: reachable[label] for every
// source and port.
func (w *world) expect(t *testing.T, reachable map[string]bool) []*reachability.Table {
	t.Helper()
	var out []*reachability.Table
	for i, v := range w.plan.Views {
		tb, err := reachability.NewTable(w.plan.TableTitle(i), labels(w.plan.From), labels(v.To), w.plan.Ports)
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range tb.Keys() {
			if err := tb.Set(k, reachability.Cell{Reachable: reachable[k.To]}); err != nil {
				t.Fatal(err)
			}
		}
		out = append(out, tb)
	}
	return out
}

func runner(ex podexec.Executor) *podexec.Runner {
	o := batch.DefaultOptions()
	o.Timeout = 500 * time.Millisecond
	return &podexec.Runner{Exec: ex, Options: o}
}

func TestObserveOneExecPerSource(t *testing.T) {
	w := newWorld(t)
	w.serve(t, ipA, svcA)
	ex := &localExec{}
	tables, err := Observe(context.Background(), runner(ex), w.plan, w.snap)
	if err != nil {
		t.Fatal(err)
	}
	if ex.execs != len(w.plan.From) {
		t.Errorf("%d execs for %d sources; want one each", ex.execs, len(w.plan.From))
	}
	want := map[string]bool{"n/a": true, "svc:n/a": true}
	for i, tb := range tables {
		for _, k := range tb.Keys() {
			c, ok := tb.Get(k)
			if !ok {
				t.Errorf("%s: %s not filled", tb.Title, k)
				continue
			}
			if c.Reachable != want[k.To] {
				t.Errorf("%s: %s reachable=%v (%s), want %v", tb.Title, k, c.Reachable, c.Detail, want[k.To])
			}
			if !c.Reachable && !strings.HasPrefix(c.Detail, "REFUSED ") {
				t.Errorf("%s: %s detail %q, want the probe's REFUSED and the address", tb.Title, k, c.Detail)
			}
		}
		if i == 1 && !strings.Contains(tb.Title, "Service") {
			t.Errorf("view 1 title %q", tb.Title)
		}
	}
}

func TestConvergeWaitsForTheClusterToAgree(t *testing.T) {
	w := newWorld(t)
	w.serve(t, ipA, svcA)
	want := w.expect(t, map[string]bool{"n/a": true, "svc:n/a": true, "n/b": true, "svc:n/b": true})
	go func() {
		time.Sleep(700 * time.Millisecond)
		w.serve(t, ipB, svcB)
	}()
	var polls []Poll
	out, err := Converge(context.Background(), runner(&localExec{}), w.plan, w.snap, want,
		Options{Timeout: 10 * time.Second, Pause: 100 * time.Millisecond, Progress: func(p Poll) { polls = append(polls, p) }})
	if err != nil {
		t.Fatal(err)
	}
	if !out.OK() || out.Polls < 2 || out.Converged < 700*time.Millisecond {
		t.Fatalf("outcome OK=%v after %d polls, converged in %s: want agreement only after b started serving", out.OK(), out.Polls, out.Converged)
	}
	if len(polls) != out.Polls || polls[0].Matched >= polls[0].Total || polls[len(polls)-1].Matched != polls[len(polls)-1].Total {
		t.Errorf("progress %v", polls)
	}
}

func TestConvergeReportsWhatNeverAgreed(t *testing.T) {
	w := newWorld(t)
	w.serve(t, ipA, svcA)
	want := w.expect(t, map[string]bool{"n/a": true, "svc:n/a": true, "n/b": true})
	start := time.Now()
	out, err := Converge(context.Background(), runner(&localExec{}), w.plan, w.snap, want, Options{Timeout: time.Second, Pause: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if out.OK() || out.Converged != 0 {
		t.Fatal("n/b never served, yet the outcome agrees")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %s past a 1s bound", d)
	}
	pod, svc := out.Comparisons[0], out.Comparisons[1]
	if !svc.OK() {
		t.Errorf("Service view should agree (s-b blocked as expected): %s", svc.Summary())
	}
	if len(pod.Mismatches) != 4 { // 2 sources x 2 ports to n/b
		t.Fatalf("pod view mismatches %v, want the 4 cells to n/b", pod.Mismatches)
	}
	for _, m := range pod.Mismatches {
		if m.To != "n/b" || m.Observed.Reachable || !strings.Contains(m.Observed.Detail, ipB) {
			t.Errorf("mismatch %s: %+v", m.Key, m.Observed)
		}
	}
}

func TestFillLeavesUnknownAndFlakyEmpty(t *testing.T) {
	w := newWorld(t)
	_, refs, err := w.plan.targets(w.snap)
	if err != nil {
		t.Fatal(err)
	}
	if len(refs) != 2*2*2 {
		t.Fatalf("%d targets, want 2 views x 2 destinations x 2 ports", len(refs))
	}
	row := make([]podexec.Cell, len(refs))
	for i := range row {
		row[i] = podexec.Cell{Verdict: batch.Timeout}
	}
	row[0].Verdict = batch.Flaky
	row[1].Verdict = batch.Unknown
	row[2].Verdict = batch.Connected
	tables, err := fill(w.plan, refs, [][]podexec.Cell{row, row})
	if err != nil {
		t.Fatal(err)
	}
	for _, src := range []string{"n/a", "n/b"} {
		for i, want := range []string{"empty", "empty", "reachable", "blocked"} {
			k := reachability.Key{From: src, To: refs[i].to, PortProtocol: refs[i].port}
			c, ok := tables[refs[i].view].Get(k)
			got := "empty"
			if ok && c.Reachable {
				got = "reachable"
			} else if ok {
				got = "blocked"
			}
			if got != want {
				t.Errorf("%s: %s, want %s", k, got, want)
			}
		}
	}
	if _, err := fill(w.plan, refs, [][]podexec.Cell{row}); err == nil {
		t.Error("one row for two sources was accepted")
	}
}

func TestPlanRefusesBadInput(t *testing.T) {
	w := newWorld(t)
	bad := w.plan
	bad.From = append([]reachability.Endpoint{}, w.plan.Views[1].To[0])
	if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), "sources must be pods") {
		t.Errorf("a Service as a source: %v", err)
	}
	bad = w.plan
	bad.Ports = []reachability.PortProtocol{{Port: 80, Protocol: "ICMP"}}
	if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), "protocol") {
		t.Errorf("ICMP port: %v", err)
	}
	snap := w.snap
	snap.ClusterIPs = nil
	if _, _, err := w.plan.targets(snap); err == nil || !strings.Contains(err.Error(), "ClusterIP") {
		t.Errorf("missing ClusterIP: %v", err)
	}
}

func TestWatchSeesAGapWhileTrafficFlows(t *testing.T) {
	w := newWorld(t)
	w.serve(t, ipA, svcA)
	allOpen := w.expect(t, map[string]bool{"n/a": true, "svc:n/a": true, "n/b": true, "svc:n/b": true})
	onlyA := w.expect(t, map[string]bool{"n/a": true, "svc:n/a": true})
	// n/a stays reachable throughout: no gap. n/b is reachable before and
	// after, but does not serve during the watch: every round sees it blocked.
	guardA := StillReachable(onlyA, onlyA)
	guardAll := StillReachable(allOpen, allOpen)
	wa := Watch(context.Background(), runner(&localExec{}), w.plan, w.snap, guardA)
	wb := Watch(context.Background(), runner(&localExec{}), w.plan, w.snap, guardAll)
	time.Sleep(1500 * time.Millisecond)
	gapsA, roundsA, errA := wa.Stop()
	gapsB, roundsB, errB := wb.Stop()
	if errA != nil || errB != nil {
		t.Fatal(errA, errB)
	}
	if roundsA == 0 || roundsB == 0 {
		t.Fatalf("rounds %d, %d: the watch never completed a round", roundsA, roundsB)
	}
	if len(gapsA) != 0 {
		t.Errorf("gaps on the always-served cells: %v", gapsA)
	}
	if len(gapsB) == 0 {
		t.Fatal("n/b was down for the whole watch and no gap was seen")
	}
	for _, g := range gapsB {
		if g.Key.To != "n/b" && g.Key.To != "svc:n/b" {
			t.Errorf("gap on %s, which was served", g.Key)
		}
	}
	if StillReachable(allOpen, onlyA)(0, reachability.Key{From: "n/a", To: "n/b", PortProtocol: w.plan.Ports[0]}) {
		t.Error("a cell closed by the change is guarded")
	}
}

// flakyExec drops the first n exec streams, as a busy API server does, then
// runs the real probe.
type flakyExec struct {
	localExec
	mu   sync.Mutex
	drop int
}

func (f *flakyExec) Exec(ctx context.Context, pod podexec.Pod, cmd []string, stdin io.Reader, stdout, stderr io.Writer) error {
	f.mu.Lock()
	drop := f.drop > 0
	if drop {
		f.drop--
	}
	f.mu.Unlock()
	if drop {
		return nil // exit 0, no output: the stream was lost
	}
	return f.localExec.Exec(ctx, pod, cmd, stdin, stdout, stderr)
}

func TestConvergeRetriesALostExecStream(t *testing.T) {
	w := newWorld(t)
	w.serve(t, ipA, svcA)
	want := w.expect(t, map[string]bool{"n/a": true, "svc:n/a": true})
	var polls []Poll
	out, err := Converge(context.Background(), runner(&flakyExec{drop: 1}), w.plan, w.snap, want,
		Options{Timeout: 10 * time.Second, Pause: 50 * time.Millisecond, Progress: func(p Poll) { polls = append(polls, p) }})
	if err != nil || !out.OK() {
		t.Fatalf("one lost stream: err %v, OK %v", err, out.OK())
	}
	if len(polls) < 2 || polls[0].Err == nil || !strings.Contains(polls[0].String(), "no verdict") {
		t.Errorf("progress %v: the lost stream should be reported as a poll without verdict", polls)
	}
	_, err = Converge(context.Background(), runner(&flakyExec{drop: 1000}), w.plan, w.snap, want, Options{Timeout: 10 * time.Second})
	if err == nil || !strings.Contains(err.Error(), "0 results") {
		t.Errorf("every stream lost: %v, want the exec error after %d tries", err, maxExecFailures)
	}
}

func TestWatchStoppedAtOnceStillJudgesTheRoundInFlight(t *testing.T) {
	w := newWorld(t)
	w.serve(t, ipA, svcA)
	allOpen := w.expect(t, map[string]bool{"n/a": true, "svc:n/a": true, "n/b": true, "svc:n/b": true})
	// The round's execs wait until Stop has been called, so the round is in flight
	// when the watcher is stopped however the goroutines are scheduled.
	watcher := make(chan *Watcher, 1)
	gate := &gatedExec{release: func() { (<-watcher).waitStopped() }}
	wb := Watch(context.Background(), runner(gate), w.plan, w.snap, StillReachable(allOpen, allOpen))
	watcher <- wb
	gaps, rounds, err := wb.Stop()
	if err != nil || rounds != 1 || len(gaps) == 0 {
		t.Fatalf("stopped at once: %d rounds, %d gaps, %v; want the round in flight judged (n/b is down)", rounds, len(gaps), err)
	}
}

// gatedExec runs execs locally once release has returned (called once).
type gatedExec struct {
	once    sync.Once
	release func()
	localExec
}

func (g *gatedExec) Exec(ctx context.Context, pod podexec.Pod, cmd []string, stdin io.Reader, stdout, stderr io.Writer) error {
	g.once.Do(g.release)
	return g.localExec.Exec(ctx, pod, cmd, stdin, stdout, stderr)
}

// waitStopped returns once Stop has been called.
func (w *Watcher) waitStopped() { <-w.stop }

func TestWatchAcceptingJudgesBothWays(t *testing.T) {
	w := newWorld(t)
	w.serve(t, ipA, svcA)
	none := w.expect(t, nil)
	onlyA := w.expect(t, map[string]bool{"n/a": true, "svc:n/a": true})
	allOpen := w.expect(t, map[string]bool{"n/a": true, "svc:n/a": true, "n/b": true, "svc:n/b": true})
	var mu sync.Mutex
	var rounds []Round
	watches := []struct {
		name   string
		accept Accept
		// wantTo are the destinations whose answers must be refused.
		wantTo []string
	}{
		{"as served", OneOf(onlyA), nil},
		{"before or after a change", OneOf(allOpen, none), nil},
		{"everything open", OneOf(allOpen), []string{"n/b", "svc:n/b"}},
		{"everything shut", OneOf(none), []string{"n/a", "svc:n/a"}},
	}
	var ws []*Watcher
	for i, c := range watches {
		var progress func(Round)
		if i == 0 {
			progress = func(r Round) { mu.Lock(); rounds = append(rounds, r); mu.Unlock() }
		}
		ws = append(ws, WatchAccepting(context.Background(), runner(&localExec{}), w.plan, w.snap, c.accept, progress))
	}
	for i, c := range watches {
		gaps, n, err := ws[i].Stop()
		if err != nil || n == 0 {
			t.Fatalf("%s: %d rounds, %v", c.name, n, err)
		}
		for _, g := range gaps {
			if !slices.Contains(c.wantTo, g.Key.To) {
				t.Errorf("%s: refused %s (reachable %v), which was as expected", c.name, g.Key, g.Reachable)
			}
		}
		if len(c.wantTo) > 0 && len(gaps) != n*len(w.plan.From)*len(c.wantTo)*len(w.plan.Ports) {
			t.Errorf("%s: %d gaps in %d rounds, want every answer to %v refused", c.name, len(gaps), n, c.wantTo)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(rounds) == 0 || rounds[0].N != 1 || rounds[0].Refused != 0 || rounds[0].Cells != 16 {
		t.Errorf("progress %+v: want round 1 with 16 cells judged, none refused", rounds)
	}
	if OneOf(allOpen)(5, reachability.Key{}, true) {
		t.Error("a view no expectation has was accepted")
	}
}

func TestWindowAcceptsWhatWasInForceDuringTheRound(t *testing.T) {
	w := newWorld(t)
	none := w.expect(t, nil)
	onlyA := w.expect(t, map[string]bool{"n/a": true, "svc:n/a": true})
	k := reachability.Key{From: "n/a", To: "n/a", PortProtocol: w.plan.Ports[0]}
	win := NewWindow(none)
	if win.Accept(0, k, true) || !win.Accept(0, k, false) {
		t.Fatal("before any change only the settled table is accepted")
	}
	win.Begin(onlyA)
	if !win.Accept(0, k, true) || !win.Accept(0, k, false) {
		t.Fatal("a round spanning a change accepts both sides")
	}
	win.RoundEnd(Round{})
	if !win.Accept(0, k, true) || !win.Accept(0, k, false) {
		t.Fatal("while the change is not agreed with, the next round accepts both sides")
	}
	win.Settle(onlyA)
	if !win.Accept(0, k, false) {
		t.Fatal("the round under way when the change settled still accepts the old side")
	}
	win.RoundEnd(Round{})
	if !win.Accept(0, k, true) || win.Accept(0, k, false) {
		t.Fatal("a round begun after the change settled accepts only the new side")
	}
}

// TestOpenThroughoutGuardsOnlyWhatEveryMomentOpens: a step that takes y out of
// a selected set and puts z in passes through a moment with both (or
// neither) in: only the paths every moment opens are guarded.
func TestOpenThroughoutGuardsOnlyWhatEveryMomentOpens(t *testing.T) {
	w := newWorld(t)
	allOpen := w.expect(t, map[string]bool{"n/a": true, "svc:n/a": true, "n/b": true, "svc:n/b": true})
	onlyA := w.expect(t, map[string]bool{"n/a": true, "svc:n/a": true})
	onlyB := w.expect(t, map[string]bool{"n/b": true, "svc:n/b": true})
	toA := reachability.Key{From: "n/b", To: "n/a", PortProtocol: w.plan.Ports[0]}
	toB := reachability.Key{From: "n/a", To: "n/b", PortProtocol: w.plan.Ports[0]}
	if g := OpenThroughout(allOpen, onlyA, allOpen); !g(0, toA) || g(0, toB) {
		t.Error("n/a is open in every moment and n/b closed in one: only n/a is guarded")
	}
	if g := OpenThroughout(onlyA, onlyB); g(0, toA) || g(0, toB) {
		t.Error("before and after open different paths: nothing is guarded")
	}
	if OpenThroughout()(0, toA) {
		t.Error("no moment guards nothing")
	}
	if OpenThroughout(allOpen, allOpen)(2, toA) {
		t.Error("a view no moment has is not guarded")
	}
	missing := w.expect(t, map[string]bool{"n/a": true})
	if OpenThroughout(allOpen, missing)(0, reachability.Key{From: "n/q", To: "n/a", PortProtocol: w.plan.Ports[0]}) {
		t.Error("a cell a moment lacks (a pod that comes or goes) is guarded")
	}
}

// Verify sees each agreeing poll with its window; a cell it finds unproven
// fails the poll, so Converge keeps probing and ends not OK at the deadline,
// calling Verify on that last poll too.
func TestConvergeKeepsPollingWhileVerifyFindsAWrongReason(t *testing.T) {
	w := newWorld(t)
	w.serve(t, ipA, svcA, ipB, svcB)
	want := w.expect(t, map[string]bool{"n/a": true, "svc:n/a": true, "n/b": true, "svc:n/b": true})
	var windows []PollWindow
	verify := func(wrong bool) func(context.Context, PollWindow) error {
		return func(_ context.Context, pw PollWindow) error {
			windows = append(windows, pw)
			if !pw.End.After(pw.Start) || len(pw.Comparisons) != len(w.plan.Views) || pw.Plan.Title != w.plan.Title {
				t.Errorf("window %s..%s with %d comparisons", pw.Start, pw.End, len(pw.Comparisons))
			}
			if wrong {
				c := pw.Comparisons[0]
				k := c.Expected.Keys()[0]
				c.WrongReason = append(c.WrongReason, reachability.Mismatch{Key: k, Why: "no flow"})
			}
			return nil
		}
	}
	out, err := Converge(context.Background(), runner(&localExec{}), w.plan, w.snap, want, Options{Timeout: 10 * time.Second, Pause: 50 * time.Millisecond, Verify: verify(false)})
	if err != nil || !out.OK() || out.Polls != 1 || len(windows) != 1 {
		t.Fatalf("proven: OK=%v after %d polls, %d verified, err %v; want one poll, verified once", out.OK(), out.Polls, len(windows), err)
	}
	windows = nil
	out, err = Converge(context.Background(), runner(&localExec{}), w.plan, w.snap, want, Options{Timeout: time.Second, Pause: 50 * time.Millisecond, Verify: verify(true)})
	if err != nil {
		t.Fatal(err)
	}
	if out.OK() || out.Converged != 0 || out.Polls < 2 || len(windows) != out.Polls {
		t.Fatalf("unproven: OK=%v converged %s after %d polls, %d verified; want every poll verified and no agreement", out.OK(), out.Converged, out.Polls, len(windows))
	}
	if c := out.Comparisons[0]; len(c.WrongReason) != 1 || len(c.Mismatches) != 0 || !strings.Contains(c.Summary(), "1 for the wrong reason") {
		t.Errorf("last poll: %s", c.Summary())
	}
}
