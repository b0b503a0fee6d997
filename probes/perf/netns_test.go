package perf_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/flatnet/flatnet/probes/internal/netnstest"
	"github.com/flatnet/flatnet/probes/internal/probetest"
	"github.com/flatnet/flatnet/probes/perf"
)

var bins probetest.Binaries

func TestMain(m *testing.M) { bins.Main(m) }

const port = 12865

// serve starts a perf server on every address of the server namespace (so both
// ServerIP and DropIP, which sits behind the drop filter).
func serve(t *testing.T, n *netnstest.Net) *perf.Server {
	t.Helper()
	any := fmt.Sprintf("0.0.0.0:%d", port)
	ln, pc := n.Listen(t, "tcp", any), n.ListenPacket(t, "udp", any)
	srv := &perf.Server{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln, pc) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("the server failed: %v", err)
		}
	})
	return srv
}

// client runs `probe perf ... -o json` in the client namespace.
func client(t *testing.T, n *netnstest.Net, args ...string) (perf.Result, string, int) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(bins.Probe(t), append([]string{"perf", "-o", "json"}, args...)...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	n.Start(t, cmd)
	code := probetest.ExitCode(t, cmd.Wait())
	var r perf.Result
	if code == 0 {
		if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
			t.Fatalf("the output is not one JSON result: %v\n%s", err, stdout.String())
		}
	}
	return r, stderr.String(), code
}

func target(ip netip.Addr) string { return netip.AddrPortFrom(ip, port).String() }

func diff(after, before perf.Stats) perf.Stats {
	return perf.Stats{
		Connections:  after.Connections - before.Connections,
		Transactions: after.Transactions - before.Transactions,
		StreamBytes:  after.StreamBytes - before.StreamBytes,
		Refused:      after.Refused - before.Refused,
	}
}

// TestTestsOverVeth runs each test over the veth pair with two workers and checks
// it against netperf's definition through what the server counted: TCP_RR holds
// one connection per worker, TCP_CRR opens one per transaction, TCP_STREAM's bytes
// all arrived, UDP_RR opens none. No figure is judged by its size.
func TestTestsOverVeth(t *testing.T) {
	n := netnstest.New(t)
	srv := serve(t, n)
	for _, test := range perf.Tests {
		t.Run(string(test), func(t *testing.T) {
			before := srv.Stats()
			r, stderr, code := client(t, n, "--test", string(test), "--target", target(netnstest.ServerIP),
				"--duration=400ms", "--warmup=100ms", "--parallel=2", "--request-size=100", "--response-size=3000")
			if test == perf.TCPStream {
				// Validated as a write size; the default would be 128 KiB.
				r2, stderr2, code2 := client(t, n, "--test", string(test), "--target", target(netnstest.ServerIP), "--duration=200ms", "--warmup=0s")
				if code2 != 0 || r2.RequestSize != perf.DefaultStreamSize {
					t.Errorf("TCP_STREAM with the default write size: exit %d, request_size %d: %s", code2, r2.RequestSize, stderr2)
				}
			}
			s := diff(srv.Stats(), before)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			if r.Test != test || r.Parallel != 2 || r.RequestSize != 100 || r.Errors != 0 || s.Refused != 0 {
				t.Fatalf("result %+v, server %+v: want test %s, 2 workers, 100-byte requests, no errors, nothing refused", r, s, test)
			}
			switch test {
			case perf.TCPRR:
				if s.Connections != 2 {
					t.Errorf("the server saw %d connections; TCP_RR holds one per worker (2)", s.Connections)
				}
			case perf.TCPCRR:
				// Warm-up transactions are not in the result, so the server saw at least as many.
				if s.Connections != s.Transactions || s.Transactions < r.Transactions {
					t.Errorf("server: %d connections for %d transactions, client %d; TCP_CRR opens one connection per transaction", s.Connections, s.Transactions, r.Transactions)
				}
			case perf.TCPStream:
				if s.Connections != 3 || r.Bytes <= 0 || s.StreamBytes < r.Bytes || r.GbitPerS <= 0 || r.LatencyUS != nil {
					t.Errorf("result %+v, server %+v: want 3 connections (2 workers, then 1), the measured bytes received by the server, a throughput and no latency", r, s)
				}
				return
			case perf.UDPRR:
				if s.Connections != 0 {
					t.Errorf("UDP_RR made %d TCP connections", s.Connections)
				}
			}
			l := r.LatencyUS
			if r.Transactions <= 0 || s.Transactions < r.Transactions || l == nil || r.ResponseSize != 3000 {
				t.Fatalf("result %+v, server %+v: want transactions, all answered by the server, with latencies", r, s)
			}
			if !(l.Min > 0 && l.Min <= l.P50 && l.P50 <= l.P90 && l.P90 <= l.P99 && l.P99 <= l.Max) {
				t.Errorf("latencies out of order: %+v", *l)
			}
		})
	}
}

// TestDroppedPath runs the RR tests at DropIP, where the drop filter eats every
// IPv4 packet: UDP_RR counts its requests lost and TCP fails to connect; both say
// so and exit 1 instead of printing a figure.
func TestDroppedPath(t *testing.T) {
	n := netnstest.New(t)
	serve(t, n)
	for _, c := range []struct {
		test, says string
	}{
		{"UDP_RR", "lost"},
		{"TCP_RR", "connecting to " + target(netnstest.DropIP)},
	} {
		_, stderr, code := client(t, n, "--test", c.test, "--target", target(netnstest.DropIP),
			"--duration=500ms", "--warmup=0s", "--loss-timeout=100ms", "--connect-timeout=300ms")
		if code != 1 || !strings.HasPrefix(stderr, "OTHER: ") || !strings.Contains(stderr, c.says) {
			t.Errorf("%s at a dropped path: exit %d, stderr %q; want exit 1 with OTHER saying %q", c.test, code, stderr, c.says)
		}
	}
}

// TestBadFlags: each bad flag is named, with exit 1, before any packet reaches
// the server.
func TestBadFlags(t *testing.T) {
	n := netnstest.New(t)
	srv := serve(t, n)
	good := target(netnstest.ServerIP)
	for _, c := range []struct {
		args  []string
		names string
	}{
		{[]string{"--test=TCP_MAERTS", "--target", good}, "--test"},
		{[]string{"--target", "192.0.2.2"}, "--target"},
		{[]string{}, "--target"},
		{[]string{"--target", good, "--duration=0s"}, "--duration"},
		{[]string{"--target", good, "--warmup=-1s"}, "--warmup"},
		{[]string{"--target", good, "--parallel=0"}, "--parallel"},
		{[]string{"--target", good, "--request-size=0"}, "--request-size"},
		{[]string{"--target", good, "--test=UDP_RR", "--response-size=70000"}, "--response-size"},
		{[]string{"--target", good, "--loss-timeout=0s"}, "--loss-timeout"},
		{[]string{"--target", good, "-o", "yaml"}, "--output"},
	} {
		before := srv.Stats()
		_, stderr, code := client(t, n, c.args...)
		s := diff(srv.Stats(), before)
		if code != 1 || !strings.HasPrefix(stderr, "UNKNOWN: "+c.names) || s != (perf.Stats{}) {
			t.Errorf("%q: exit %d, stderr %q, server saw %+v; want exit 1, UNKNOWN naming %s, no traffic", c.args, code, stderr, s, c.names)
		}
	}
	// Serve's own flag.
	out, err := exec.Command(bins.Probe(t), "perf", "serve", "--port=70000").CombinedOutput()
	if probetest.ExitCode(t, err) != 1 || !strings.Contains(string(out), "--port=70000") {
		t.Errorf("serve --port=70000: %v %q; want exit 1 naming --port", err, out)
	}
}
