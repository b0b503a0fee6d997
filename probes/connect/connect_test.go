package connect_test

import (
	"context"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flatnet/flatnet/probes/connect"
	"github.com/flatnet/flatnet/probes/internal/netnstest"
	"github.com/flatnet/flatnet/probes/serve"
)

// closedPort returns a loopback port nothing listens on: one just released.
func closedPort(t *testing.T, network string) string {
	t.Helper()
	var addr string
	if network == "udp" {
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr = c.LocalAddr().String()
		c.Close()
	} else {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr = l.Addr().String()
		l.Close()
	}
	return addr
}

// probe runs one probe on the calling goroutine (so on the calling thread's
// network namespace) and fails the test if it outlived its timeout by seconds: a
// hang, not a slow probe.
func probe(t *testing.T, req connect.Request) connect.Outcome {
	t.Helper()
	limit := req.Timeout
	if limit <= 0 {
		limit = connect.UDPNoDeadlineWait
	}
	start := time.Now()
	out := connect.Probe(context.Background(), req)
	if took := time.Since(start); took > limit+5*time.Second {
		t.Errorf("probe %+v took %v, far past its %v timeout", req, took, limit)
	}
	return out
}

func TestLoopbackOutcomes(t *testing.T) {
	srv, err := serve.Start(serve.Config{TCP: true, UDP: true, Port: 0, Hostname: "probe-test-host"})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	tcpOpen := srv.TCPAddr().String()
	udpOpen := srv.UDPAddr().String()

	cases := []struct {
		name    string
		req     connect.Request
		verdict connect.Verdict
		message string // exact agnhost stderr line; "" to skip
		reply   string
		hint    string // substring the hint must contain
	}{
		{name: "tcp open", req: connect.Request{Dest: tcpOpen, Timeout: 2 * time.Second}, verdict: connect.Connected},
		{name: "tcp open, no timeout", req: connect.Request{Dest: tcpOpen}, verdict: connect.Connected},
		{name: "tcp closed", req: connect.Request{Dest: closedPort(t, "tcp"), Timeout: 2 * time.Second}, verdict: connect.Refused, message: "REFUSED"},
		{name: "udp open", req: connect.Request{Dest: udpOpen, Protocol: connect.UDP, Timeout: 2 * time.Second, Payload: "hostname"},
			verdict: connect.Connected, reply: "probe-test-host"},
		{name: "udp closed", req: connect.Request{Dest: closedPort(t, "udp"), Protocol: connect.UDP, Timeout: 2 * time.Second},
			verdict: connect.Refused},
		{name: "tcp negative timeout on an open port", req: connect.Request{Dest: tcpOpen, Timeout: -time.Second},
			verdict: connect.Timeout, message: "TIMEOUT", hint: "--timeout=-1s"},
		{name: "sctp zero timeout", req: connect.Request{Dest: tcpOpen, Protocol: connect.SCTP},
			verdict: connect.Timeout, message: "TIMEOUT", hint: "--timeout=0s"},
		{name: "tcp malformed target", req: connect.Request{Dest: "127.0.0.1", Timeout: time.Second},
			verdict: connect.Unknown, message: "UNKNOWN: address 127.0.0.1: missing port in address", hint: "host:port"},
		{name: "udp malformed target", req: connect.Request{Dest: "127.0.0.1", Protocol: connect.UDP, Timeout: time.Second},
			verdict: connect.DNS, message: "DNS: address 127.0.0.1: missing port in address", hint: "host:port"},
		{name: "tcp port out of range", req: connect.Request{Dest: "127.0.0.1:70000", Timeout: time.Second},
			verdict: connect.DNS, message: "DNS: address 70000: invalid port", hint: "1 to 65535"},
		{name: "unknown protocol", req: connect.Request{Dest: tcpOpen, Protocol: "quic", Timeout: time.Second},
			verdict: connect.Unknown, hint: "--protocol"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out := probe(t, c.req)
			if out.Verdict != c.verdict {
				t.Fatalf("verdict %q (%s), want %q", out.Verdict, out.Line(), c.verdict)
			}
			if c.message != "" && out.Message != c.message {
				t.Errorf("message %q, want %q", out.Message, c.message)
			}
			if c.verdict == connect.Connected && (out.Message != "" || out.Line() != "") {
				t.Errorf("a connection must print nothing, got %q", out.Line())
			}
			if c.verdict != connect.Connected && !strings.HasPrefix(out.Line(), c.verdict.Word()) {
				t.Errorf("line %q does not start with %s", out.Line(), c.verdict.Word())
			}
			if c.reply != "" && out.Reply != c.reply {
				t.Errorf("reply %q, want %q", out.Reply, c.reply)
			}
			if !strings.Contains(out.Hint, c.hint) {
				t.Errorf("hint %q does not name %q", out.Hint, c.hint)
			}
			if c.hint == "" && out.Hint != "" {
				t.Errorf("unexpected hint %q for well-formed input", out.Hint)
			}
		})
	}
}

// TestTimeoutBehindDropRule probes an address behind a tc drop filter in a test
// network namespace: TCP and UDP end in TIMEOUT at the deadline, and removing the
// filter turns the same probe into a connection.
func TestTimeoutBehindDropRule(t *testing.T) {
	n := netnstest.New(t)
	dropTCP := netip.AddrPortFrom(netnstest.DropIP, 8080).String()
	dropUDP := netip.AddrPortFrom(netnstest.DropIP, 8081).String()
	n.InServer(t, func() {
		srv, err := serve.Start(serve.Config{TCP: true, Port: 8080, Hostname: "behind-drop"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { srv.Close() })
		usrv, err := serve.Start(serve.Config{UDP: true, Port: 8081, Hostname: "behind-drop"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { usrv.Close() })
	})
	const timeout = 400 * time.Millisecond
	var tcp, udp connect.Outcome
	n.InClient(t, func() {
		tcp = probe(t, connect.Request{Dest: dropTCP, Timeout: timeout})
		udp = probe(t, connect.Request{Dest: dropUDP, Protocol: connect.UDP, Timeout: timeout, Payload: "hostname"})
	})
	if tcp.Verdict != connect.Timeout || tcp.Message != "TIMEOUT" {
		t.Errorf("tcp behind drop: %q %q, want TIMEOUT", tcp.Verdict, tcp.Line())
	}
	if tcp.Latency < timeout {
		t.Errorf("tcp timed out after %v, before its %v deadline", tcp.Latency, timeout)
	}
	if udp.Verdict != connect.Timeout || !strings.HasPrefix(udp.Message, "TIMEOUT: read udp") {
		t.Errorf("udp behind drop: %q %q, want TIMEOUT: read udp ...", udp.Verdict, udp.Line())
	}

	if err := n.SetDrop(false); err != nil {
		t.Fatal(err)
	}
	n.InClient(t, func() {
		tcp = probe(t, connect.Request{Dest: dropTCP, Timeout: 2 * time.Second})
		udp = probe(t, connect.Request{Dest: dropUDP, Protocol: connect.UDP, Timeout: 2 * time.Second, Payload: "hostname"})
	})
	if tcp.Verdict != connect.Connected {
		t.Errorf("tcp without the drop filter: %q %q, want connected", tcp.Verdict, tcp.Line())
	}
	if udp.Verdict != connect.Connected || udp.Reply != "behind-drop" {
		t.Errorf("udp without the drop filter: %q %q reply %q, want connected with the hostname", udp.Verdict, udp.Line(), udp.Reply)
	}
}

// TestUDPZeroTimeoutIsBounded: agnhost would wait forever for a dropped UDP reply
// with --timeout=0; the probe stops after UDPNoDeadlineWait and names the flag.
func TestUDPZeroTimeoutIsBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("waits UDPNoDeadlineWait")
	}
	n := netnstest.New(t)
	var out connect.Outcome
	n.InClient(t, func() {
		out = probe(t, connect.Request{Dest: netip.AddrPortFrom(netnstest.DropIP, 9).String(), Protocol: connect.UDP})
	})
	if out.Verdict != connect.Timeout || !strings.Contains(out.Hint, "--timeout=0s") {
		t.Fatalf("got %q %q, want TIMEOUT naming --timeout", out.Verdict, out.Line())
	}
}

// TestSCTP connects where the kernel has SCTP, and otherwise checks the probe
// reports agnhost's OTHER with the reason.
func TestSCTP(t *testing.T) {
	srv, err := serve.Start(serve.Config{TCP: true, Port: 0, Hostname: "h"})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	port := srv.TCPAddr().(*net.TCPAddr).Port
	out := probe(t, connect.Request{Dest: "127.0.0.1:" + strconv.Itoa(port), Protocol: connect.SCTP, Timeout: time.Second})
	if !connect.HaveSCTP() {
		if out.Verdict != connect.Other || out.Message != "OTHER: protocol not supported" || !strings.Contains(out.Detail, "no SCTP") {
			t.Fatalf("without kernel SCTP: %q %q detail %q, want agnhost's OTHER: protocol not supported", out.Verdict, out.Message, out.Detail)
		}
		t.Skip("this kernel has no SCTP (CONFIG_IP_SCTP): only the error path was tested")
	}
	// Nothing listens on SCTP at that port: the association is aborted.
	if out.Verdict != connect.Other {
		t.Fatalf("sctp to a closed port: %q %q, want OTHER", out.Verdict, out.Line())
	}
}
