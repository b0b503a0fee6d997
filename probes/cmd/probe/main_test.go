package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/flatnet/flatnet/probes/internal/netnstest"
	"github.com/flatnet/flatnet/probes/internal/probetest"
	"github.com/flatnet/flatnet/probes/serve"
)

var bins probetest.Binaries

func TestMain(m *testing.M) { bins.Main(m) }

type result struct {
	stdout, stderr string
	code           int
}

// run runs bin with args in the client namespace and waits at most limit.
func run(t *testing.T, n *netnstest.Net, limit time.Duration, bin string, args ...string) result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	n.Start(t, cmd)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(limit):
		cmd.Process.Kill()
		<-done
		t.Fatalf("%s %q still running after %v", bin, args, limit)
	}
	return result{stdout.String(), stderr.String(), probetest.ExitCode(t, err)}
}

// ephemeral hides the client's ephemeral port, the one thing that differs
// between two runs of the same UDP probe.
var ephemeral = regexp.MustCompile(`(192\.0\.2\.1|198\.51\.100\.1):\d+->`)

func normalize(s string) string { return ephemeral.ReplaceAllString(s, "$1:PORT->") }

func firstWord(s string) string {
	f := strings.FieldsFunc(s, func(r rune) bool { return r == ' ' || r == ':' || r == '\n' })
	if len(f) == 0 {
		return ""
	}
	return f[0]
}

// TestConnectMatchesAgnhost runs upstream agnhost and the probe (invoked as
// agnhost) with the same command lines against the same targets, in a test
// network namespace with a drop filter, and compares what a test would see.
func TestConnectMatchesAgnhost(t *testing.T) {
	n := netnstest.New(t)
	agnhost, probe := bins.Agnhost(t), bins.ProbeAsAgnhost(t)
	n.InServer(t, func() {
		for _, cfg := range []serve.Config{{TCP: true, Port: 8080, Hostname: "srv"}, {UDP: true, Port: 8081, Hostname: "srv"}} {
			s, err := serve.Start(cfg)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
		}
	})
	const (
		open    = "192.0.2.2:8080"
		closed  = "192.0.2.2:9"
		dropped = "198.51.100.2:8080"
		udpOpen = "192.0.2.2:8081"
		udpDrop = "198.51.100.2:8081"
	)
	// exact: stdout, stderr and exit code identical. Otherwise (bad input, where
	// the probe adds which flag to fix): same exit code and first word of stderr,
	// and the probe's stderr must name the flag or argument.
	cases := []struct {
		name  string
		args  []string
		exact bool
		names string
	}{
		{name: "seed line, open", args: []string{"connect", open, "--timeout=3s", "--protocol=tcp"}, exact: true},
		{name: "tcp refused", args: []string{"connect", closed, "--timeout=3s", "--protocol=tcp"}, exact: true},
		{name: "tcp refused without --timeout", args: []string{"connect", closed}, exact: true},
		{name: "tcp dropped", args: []string{"connect", dropped, "--timeout=1s", "--protocol=tcp"}, exact: true},
		{name: "udp open", args: []string{"connect", udpOpen, "--timeout=3s", "--protocol=udp"}, exact: true},
		{name: "udp open, custom payload", args: []string{"connect", udpOpen, "--timeout=3s", "--protocol=udp", "--udp-data=echo hi"}, exact: true},
		{name: "udp refused", args: []string{"connect", closed, "--timeout=3s", "--protocol=udp"}, exact: true},
		{name: "udp dropped", args: []string{"connect", udpDrop, "--timeout=1s", "--protocol=udp"}, exact: true},
		{name: "sctp", args: []string{"connect", open, "--timeout=1s", "--protocol=sctp"}, exact: true},
		{name: "underscore flag names", args: []string{"connect", closed, "--timeout=1s", "--udp_data=x"}, exact: true},
		{name: "klog flags accepted", args: []string{"connect", closed, "-v=4", "--vmodule=a=1", "--log-flush-frequency=1s"}, exact: true},
		{name: "bad duration", args: []string{"connect", open, "--timeout=3"}, exact: true},
		{name: "unknown flag", args: []string{"connect", open, "--verbose"}, exact: true},
		{name: "no target", args: []string{"connect"}, exact: true},
		{name: "help", args: []string{"connect", "--help"}, exact: true},
		{name: "typographic dash from the article", args: []string{"connect", open, "--timeout=3s", "--protocol=tcp", "\u2013verbose"}, names: "two ASCII hyphens"},
		{name: "malformed target", args: []string{"connect", "192.0.2.2", "--timeout=1s"}, names: "host:port"},
		{name: "malformed udp target", args: []string{"connect", "192.0.2.2", "--timeout=1s", "--protocol=udp"}, names: "host:port"},
		{name: "bad port", args: []string{"connect", "192.0.2.2:99999", "--timeout=1s"}, names: "port"},
		{name: "unknown protocol", args: []string{"connect", open, "--protocol=quic"}, names: "--protocol"},
		{name: "negative timeout", args: []string{"connect", open, "--timeout=-1s"}, names: "--timeout"},
		{name: "zero timeout, sctp", args: []string{"connect", open, "--timeout=0s", "--protocol=sctp"}, names: "--timeout"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			want := run(t, n, 20*time.Second, agnhost, c.args...)
			got := run(t, n, 20*time.Second, probe, c.args...)
			if got.code != want.code {
				t.Errorf("exit code %d, agnhost %d\nprobe stderr: %s\nagnhost stderr: %s", got.code, want.code, got.stderr, want.stderr)
			}
			if c.exact {
				if normalize(got.stderr) != normalize(want.stderr) {
					t.Errorf("stderr differs\nprobe:   %q\nagnhost: %q", got.stderr, want.stderr)
				}
				if got.stdout != want.stdout {
					t.Errorf("stdout differs\nprobe:   %q\nagnhost: %q", got.stdout, want.stdout)
				}
				return
			}
			if firstWord(got.stderr) != firstWord(want.stderr) {
				t.Errorf("first word %q, agnhost %q\nprobe:   %q\nagnhost: %q", firstWord(got.stderr), firstWord(want.stderr), got.stderr, want.stderr)
			}
			if !strings.Contains(got.stderr, c.names) {
				t.Errorf("probe stderr %q does not name %q", got.stderr, c.names)
			}
		})
	}
}

// httpGet sends one HTTP/1.1 request over a connection dialed from the client
// namespace (http.Transport would dial from another thread, outside it).
func httpGet(t *testing.T, n *netnstest.Net, addr, path string) (int, string) {
	t.Helper()
	var conn net.Conn
	var err error
	n.InClient(t, func() { conn, err = net.DialTimeout("tcp", addr, 3*time.Second) })
	if err != nil {
		t.Fatalf("dialing %s: %v", addr, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\nX-Test: flatnet\r\nConnection: close\r\n\r\n", path, addr)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("GET %s%s: %v", addr, path, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, string(body)
}

// waitHTTP waits until addr accepts connections from the client namespace.
func waitHTTP(t *testing.T, n *netnstest.Net, addr string) {
	t.Helper()
	for range 100 {
		var err error
		n.InClient(t, func() {
			var c net.Conn
			if c, err = net.DialTimeout("tcp", addr, time.Second); err == nil {
				c.Close()
			}
		})
		if err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s never accepted a connection", addr)
}

// TestNetexecMatchesAgnhost runs agnhost netexec and the probe's side by side in
// the server namespace and compares the endpoints the network e2e tests use.
func TestNetexecMatchesAgnhost(t *testing.T) {
	n := netnstest.New(t)
	agnhost, probe := bins.Agnhost(t), bins.ProbeAsAgnhost(t)
	servers := map[string]string{"agnhost": "192.0.2.2:8090", "probe": "192.0.2.2:8092"}
	for name, bin := range map[string]string{"agnhost": agnhost, "probe": probe} {
		port := map[string]string{"agnhost": "8090", "probe": "8092"}[name]
		udp := map[string]string{"agnhost": "8091", "probe": "8093"}[name]
		cmd := exec.Command(bin, "netexec", "--http-port="+port, "--udp-port="+udp)
		n.StartInServer(t, cmd)
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		waitHTTP(t, n, servers[name])
	}
	paths := []string{
		"/hostname",
		"/hostName",
		"/echo?msg=hello",
		"/echo?msg=teapot&code=418",
		"/echo?msg=x&code=abc",
		"/healthz",
		"/readyz",
		"/header?key=X-Test",
		"/dial?host=192.0.2.2&port=8091&request=hostname&protocol=udp",
		"/dial?host=192.0.2.2&port=8093&request=echo%20Mixed&protocol=udp&tries=2",
		"/dial?host=192.0.2.2&port=8090&request=hostname&protocol=http",
		"/dial?host=192.0.2.2&port=8092&request=echo?msg=ok",
		"/dial?host=192.0.2.2&port=8091&request=hostname&protocol=udp&tries=x",
		"/dial?host=192.0.2.2&port=8091&protocol=udp",
		"/dial?host=192.0.2.2&port=8091&request=hostname&protocol=icmp",
		"/redirect?location=/echo%3Fmsg%3Dr&code=307",
	}
	for _, p := range paths {
		t.Run(p, func(t *testing.T) {
			wc, wb := httpGet(t, n, servers["agnhost"], p)
			gc, gb := httpGet(t, n, servers["probe"], p)
			if gc != wc || gb != wb {
				t.Errorf("probe %d %q, agnhost %d %q", gc, gb, wc, wb)
			}
		})
	}
	t.Run("/serverport", func(t *testing.T) {
		if _, body := httpGet(t, n, servers["probe"], "/serverport"); body != "8092" {
			t.Errorf("/serverport = %q, want 8092", body)
		}
	})
	t.Run("/clientip", func(t *testing.T) {
		_, body := httpGet(t, n, servers["probe"], "/clientip")
		if host, _, err := net.SplitHostPort(body); err != nil || host != "192.0.2.1" {
			t.Errorf("/clientip = %q, want the client's address 192.0.2.1:port", body)
		}
	})
	t.Run("/shell is refused", func(t *testing.T) {
		code, _ := httpGet(t, n, servers["probe"], "/shell?cmd=id")
		if code != http.StatusNotImplemented {
			t.Errorf("/shell answered %d, want 501", code)
		}
	})
}

// TestServeHostnameMatchesAgnhost compares serve-hostname's answers and its
// refusal of --tcp together with --http.
func TestServeHostnameMatchesAgnhost(t *testing.T) {
	n := netnstest.New(t)
	agnhost, probe := bins.Agnhost(t), bins.ProbeAsAgnhost(t)
	answers := map[string]string{}
	for name, bin := range map[string]string{"agnhost": agnhost, "probe": probe} {
		port := map[string]string{"agnhost": "81", "probe": "82"}[name]
		cmd := exec.Command(bin, "serve-hostname", "--tcp", "--http=false", "--port", port)
		n.StartInServer(t, cmd)
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		addr := "192.0.2.2:" + port
		waitHTTP(t, n, addr)
		var conn net.Conn
		var err error
		n.InClient(t, func() { conn, err = net.DialTimeout("tcp", addr, 3*time.Second) })
		if err != nil {
			t.Fatal(err)
		}
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		b, _ := io.ReadAll(conn)
		conn.Close()
		answers[name] = string(b)
	}
	if answers["probe"] != answers["agnhost"] || answers["probe"] == "" {
		t.Errorf("serve-hostname --tcp answered %q, agnhost %q", answers["probe"], answers["agnhost"])
	}
	logTime := regexp.MustCompile(`(?m)^I\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ `)
	want := run(t, n, 10*time.Second, agnhost, "serve-hostname", "--tcp", "--port", "83")
	got := run(t, n, 10*time.Second, probe, "serve-hostname", "--tcp", "--port", "83")
	if got.code != want.code || logTime.ReplaceAllString(got.stderr, "") != logTime.ReplaceAllString(want.stderr, "") {
		t.Errorf("--tcp with --http: probe %d %q, agnhost %d %q", got.code, got.stderr, want.code, want.stderr)
	}
}

// TestPauseMatchesAgnhost: pause prints the same lines, exits 1 on SIGINT and 2 on
// SIGTERM, and writes the same termination message.
func TestPauseMatchesAgnhost(t *testing.T) {
	agnhost, probe := bins.Agnhost(t), bins.ProbeAsAgnhost(t)
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		got := map[string]result{}
		msgs := map[string]string{}
		for name, bin := range map[string]string{"agnhost": agnhost, "probe": probe} {
			term := filepath.Join(t.TempDir(), "termination-log")
			var stdout syncBuffer
			var stderr bytes.Buffer
			cmd := exec.Command(bin, "pause")
			cmd.Env = append(os.Environ(), "TERMINATION_MESSAGE_PATH="+term)
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			// Signal only once the handler is in place ("Signals registered").
			for i := 0; i < 200 && !strings.Contains(stdout.String(), "Signals registered"); i++ {
				time.Sleep(25 * time.Millisecond)
			}
			cmd.Process.Signal(sig)
			code := probetest.ExitCode(t, cmd.Wait())
			got[name] = result{stdout.String(), stderr.String(), code}
			b, _ := os.ReadFile(term)
			msgs[name] = string(b)
		}
		if got["probe"] != got["agnhost"] || msgs["probe"] != msgs["agnhost"] || msgs["probe"] == "" {
			t.Errorf("%v: probe %+v %q, agnhost %+v %q", sig, got["probe"], msgs["probe"], got["agnhost"], msgs["agnhost"])
		}
	}
}

// TestNetexecExitCode: /exit?code=N ends both with exit code N.
func TestNetexecExitCode(t *testing.T) {
	n := netnstest.New(t)
	agnhost, probe := bins.Agnhost(t), bins.ProbeAsAgnhost(t)
	for name, bin := range map[string]string{"agnhost": agnhost, "probe": probe} {
		cmd := exec.Command(bin, "netexec", "--http-port=8095", "--udp-port=-1")
		n.StartInServer(t, cmd)
		waitHTTP(t, n, "192.0.2.2:8095")
		code, body := httpGet(t, n, "192.0.2.2:8095", "/healthz")
		if code != http.StatusPreconditionFailed {
			t.Errorf("%s: /healthz without a UDP server answered %d %q, want 412", name, code, body)
		}
		var conn net.Conn
		var err error
		n.InClient(t, func() { conn, err = net.Dial("tcp", "192.0.2.2:8095") })
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(conn, "GET /exit?code=3&timeout=1s HTTP/1.1\r\nHost: x\r\n\r\n")
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err = <-done:
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			t.Fatalf("%s: still running 15s after /exit", name)
		}
		conn.Close()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 3 {
			t.Errorf("%s: after /exit?code=3: %v, want exit status 3", name, err)
		}
	}
}

// syncBuffer is a bytes.Buffer safe to read while a process writes into it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }
