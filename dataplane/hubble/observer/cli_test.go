package observer_test

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flatnet/flatnet/dataplane/flows"
	"github.com/flatnet/flatnet/dataplane/hubble/observer"
	"github.com/flatnet/flatnet/dataplane/hubble/observer/observertest"
)

// hubbleCLI is the upstream hubble CLI `make tools` builds (bin/hubble), or
// $FLATNET_HUBBLE_CLI. Without it the test skips, unless
// FLATNET_REQUIRE_HUBBLE_CLI=1.
func hubbleCLI(t *testing.T) string {
	cli := os.Getenv("FLATNET_HUBBLE_CLI")
	if cli == "" {
		cli, _ = filepath.Abs("../../../bin/hubble")
	}
	if _, err := os.Stat(cli); err != nil {
		if os.Getenv("FLATNET_REQUIRE_HUBBLE_CLI") == "1" {
			t.Fatalf("no hubble CLI at %s: run make tools, or set FLATNET_HUBBLE_CLI", cli)
		}
		t.Skipf("no hubble CLI at %s (make tools builds it; FLATNET_HUBBLE_CLI names another)", cli)
	}
	return cli
}

// observed is a line of `hubble observe -o jsonpb`.
type observed struct {
	Flow struct {
		IP struct {
			Source string `json:"source"`
		} `json:"IP"`
		Verdict string `json:"verdict"`
	} `json:"flow"`
	NodeName string `json:"node_name"`
}

// TestUpstreamHubbleCLI: the upstream CLI, unchanged, reads the observer:
// observe with --last, a filter, --since/--until and --follow, status, and the
// node and namespace lists; a since after until comes back as the server's
// InvalidArgument. (The CLI checks field masks itself before sending.)
func TestUpstreamHubbleCLI(t *testing.T) {
	cli := hubbleCLI(t)
	store := flows.NewStore(100)
	now := time.Now()
	for i := range 30 {
		r := newFlow(i, now.Add(time.Duration(i-30)*time.Second))
		if i%3 == 0 {
			r.Flow.Verdict = flows.VerdictDropped
		}
		store.Add(r)
	}
	o := observer.New(store, observer.Config{NodeName: node, Version: "flatnet v0.0.0-test"})
	for i := range 30 {
		o.Observe(newFlow(i, now))
	}
	srv := observertest.Serve(t, o)
	run := func(args ...string) (string, error) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, cli, append(args, "--server", srv.Addr)...).CombinedOutput()
		return string(out), err
	}
	indexes := func(out string) (got []int) {
		t.Helper()
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			var o observed
			if err := json.Unmarshal([]byte(line), &o); err != nil {
				t.Fatalf("line %q of hubble observe: %v", line, err)
			}
			got = append(got, ipIndex(t, o.Flow.IP.Source))
		}
		return got
	}

	out, err := run("observe", "-o", "jsonpb", "--last", "3")
	if got := indexes(out); err != nil || !slices.Equal(got, seq(27, 29)) {
		t.Fatalf("hubble observe --last 3: %v\n%s", err, out)
	}
	out, err = run("observe", "-o", "jsonpb", "--verdict", "DROPPED", "--last", "2")
	if got := indexes(out); err != nil || !slices.Equal(got, []int{24, 27}) {
		t.Fatalf("hubble observe --verdict DROPPED --last 2: %v\n%s", err, out)
	}
	out, err = run("observe", "-o", "jsonpb", "--since", now.Add(-5500*time.Millisecond).Format(time.RFC3339Nano),
		"--until", now.Add(-2500*time.Millisecond).Format(time.RFC3339Nano))
	if got := indexes(out); err != nil || !slices.Equal(got, seq(25, 27)) {
		t.Fatalf("hubble observe --since --until: %v\n%s", err, out)
	}
	out, err = run("observe", "--since", "1m", "--until", "2m")
	if err == nil || !strings.Contains(out, "InvalidArgument") || !strings.Contains(out, "since") {
		t.Fatalf("hubble observe with since after until: %v\n%s", err, out)
	}
	t.Logf("hubble observe --since 1m --until 2m:\n%s", out)

	out, err = run("status")
	if err != nil || !strings.Contains(out, "Current/Max Flows: 30/100") || !strings.Contains(out, "Healthcheck (via") {
		t.Fatalf("hubble status: %v\n%s", err, out)
	}
	t.Logf("hubble status:\n%s", out)
	out, err = run("list", "nodes")
	if err != nil || !strings.Contains(out, node) || !strings.Contains(out, "Connected") {
		t.Fatalf("hubble list nodes: %v\n%s", err, out)
	}
	t.Logf("hubble list nodes:\n%s", out)
	out, err = run("list", "namespaces")
	if err != nil || !strings.Contains(out, "client") || !strings.Contains(out, "server") {
		t.Fatalf("hubble list namespaces: %v\n%s", err, out)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	follow := exec.CommandContext(ctx, cli, "observe", "-o", "jsonpb", "--follow", "--server", srv.Addr)
	stdout, err := follow.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := follow.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = follow.Process.Kill(); _ = follow.Wait() }()
	for deadline := time.Now().Add(10 * time.Second); o.Following() != 1; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("hubble observe --follow never reached the server")
		}
	}
	lines := bufio.NewScanner(stdout)
	for i := 30; i < 33; i++ {
		added := time.Now()
		store.Add(newFlow(i, added))
		if !lines.Scan() {
			t.Fatalf("hubble observe --follow ended: %v", lines.Err())
		}
		if got := indexes(lines.Text()); len(got) != 1 || got[0] != i {
			t.Fatalf("hubble observe --follow printed %s, want flow %d", lines.Text(), i)
		}
		t.Logf("hubble observe --follow printed flow %d %v after Add", i, time.Since(added))
	}
}
