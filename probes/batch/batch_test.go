package batch_test

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flatnet/flatnet/probes/batch"
	"github.com/flatnet/flatnet/probes/connect"
	"github.com/flatnet/flatnet/probes/internal/probetest"
	"github.com/flatnet/flatnet/probes/serve"
)

var bins probetest.Binaries

func TestMain(m *testing.M) { bins.Main(m) }

func TestRunLoopback(t *testing.T) {
	srv, err := serve.Start(serve.Config{TCP: true, UDP: true, Port: 0, Hostname: "batch-host"})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close()

	targets := []batch.Target{
		{Target: srv.TCPAddr().String()},
		{Target: closed},
		{Target: srv.UDPAddr().String(), Protocol: connect.UDP},
		{Target: closed, Protocol: connect.UDP},
		{Target: srv.TCPAddr().String(), Protocol: connect.TCP},
	}
	want := []batch.Verdict{batch.Connected, batch.Refused, batch.Connected, batch.Refused, batch.Connected}
	var got []batch.Result
	opts := batch.DefaultOptions()
	opts.Timeout = 2 * time.Second
	if err := batch.Run(context.Background(), targets, opts, func(r batch.Result) error { got = append(got, r); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(targets) {
		t.Fatalf("%d results for %d targets", len(got), len(targets))
	}
	for i, r := range got {
		host, port, _ := net.SplitHostPort(targets[i].Target)
		wantProto := string(targets[i].Protocol)
		if wantProto == "" {
			wantProto = "tcp"
		}
		if r.Target != targets[i].Target || r.Host != host || strconv.Itoa(r.Port) != port || r.Protocol != wantProto {
			t.Errorf("result %d describes %s %s:%d/%s, want %s/%s (results must come in input order)", i, r.Target, r.Host, r.Port, r.Protocol, targets[i].Target, wantProto)
		}
		if r.Verdict != want[i] {
			t.Errorf("result %d (%s/%s): verdict %q (%s), want %q", i, r.Target, r.Protocol, r.Verdict, r.Detail, want[i])
		}
		if r.LatencyMS <= 0 {
			t.Errorf("result %d: latency %v ms, want a measured positive value", i, r.LatencyMS)
		}
		if (r.Verdict == batch.Connected) != (r.Detail == "") {
			t.Errorf("result %d: verdict %q with detail %q: failures need a detail, connections none", i, r.Verdict, r.Detail)
		}
	}
	if got[2].Reply != "batch-host" {
		t.Errorf("udp reply %q, want the server's hostname", got[2].Reply)
	}
}

// TestRunStopsOnWriteError: when the reader goes away the batch stops, and no
// attempt outlives Run.
func TestRunStopsOnWriteError(t *testing.T) {
	srv, err := serve.Start(serve.Config{TCP: true, Port: 0, Hostname: "h"})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	targets := make([]batch.Target, 50)
	for i := range targets {
		targets[i] = batch.Target{Target: srv.TCPAddr().String()}
	}
	opts := batch.DefaultOptions()
	opts.Parallel = 2
	n := 0
	err = batch.Run(context.Background(), targets, opts, func(batch.Result) error {
		n++
		if n == 3 {
			return fmt.Errorf("broken pipe")
		}
		return nil
	})
	if err == nil || !strings.Contains(err.Error(), "broken pipe") || n != 3 {
		t.Fatalf("Run after a failing write: err %v after %d results, want the write error after 3", err, n)
	}
}

func TestParseTargets(t *testing.T) {
	in := `# a comment, then a blank line

10.0.0.7:80
10.0.0.7:53 udp
  [fd00::7]:8080   sctp
svc.ns.svc.cluster.local:443
10.0.0.9:0 icmp
{"target":"10.0.0.8:81","protocol":"udp","payload":"echo x"}
`
	got, err := batch.ParseTargets(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []batch.Target{
		{Target: "10.0.0.7:80"},
		{Target: "10.0.0.7:53", Protocol: connect.UDP},
		{Target: "[fd00::7]:8080", Protocol: connect.SCTP},
		{Target: "svc.ns.svc.cluster.local:443"},
		{Target: "10.0.0.9:0", Protocol: connect.ICMP},
		{Target: "10.0.0.8:81", Protocol: connect.UDP, Payload: "echo x"},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("parsed %+v\nwant %+v", got, want)
	}

	var buf strings.Builder
	if err := batch.EncodeTargets(&buf, want); err != nil {
		t.Fatal(err)
	}
	back, err := batch.ParseTargets(strings.NewReader(buf.String()))
	if err != nil || fmt.Sprint(back) != fmt.Sprint(want) {
		t.Fatalf("EncodeTargets then ParseTargets: %+v, %v; want %+v", back, err, want)
	}
}

func TestParseTargetsRejectsBadLines(t *testing.T) {
	for _, c := range []struct{ line, names string }{
		{"10.0.0.7", "host:port"},
		{":80", "empty host"},
		{"10.0.0.7:0", "port"},
		{"10.0.0.7:65536", "port"},
		{"10.0.0.7:http", "port"},
		{"10.0.0.7:80 quic", "protocol"},
		{"10.0.0.7:80 icmp", "ICMP has no ports"},
		{"10.0.0.7:80 tcp extra", "too many fields"},
		{`{"target":"10.0.0.7:80","proto":"udp"}`, "proto"},
		{`{"target":"10.0.0.7:80"`, "JSON"},
	} {
		in := "10.0.0.1:80\n" + c.line + "\n10.0.0.2:80\n"
		got, err := batch.ParseTargets(strings.NewReader(in))
		if err == nil {
			t.Errorf("%q: accepted as %+v", c.line, got)
			continue
		}
		if got != nil {
			t.Errorf("%q: returned %d targets along with the error; a bad request must yield none", c.line, len(got))
		}
		if !strings.Contains(err.Error(), "line 2") || !strings.Contains(err.Error(), c.names) {
			t.Errorf("%q: error %q does not name line 2 and %q", c.line, err, c.names)
		}
	}
}

func TestOptionsValidate(t *testing.T) {
	for _, c := range []struct {
		edit  func(*batch.Options)
		names string
	}{
		{func(o *batch.Options) { o.Timeout = 0 }, "--timeout"},
		{func(o *batch.Options) { o.Timeout = -time.Second }, "--timeout"},
		{func(o *batch.Options) { o.Parallel = 0 }, "--parallel"},
		{func(o *batch.Options) { o.Protocol = "quic" }, "--protocol"},
	} {
		o := batch.DefaultOptions()
		c.edit(&o)
		err := o.Validate()
		if err == nil || !strings.Contains(err.Error(), c.names) {
			t.Errorf("%+v: error %v, want one naming %s", o, err, c.names)
		}
		ran := false
		if err := batch.Run(context.Background(), []batch.Target{{Target: "127.0.0.1:1"}}, o, func(batch.Result) error { ran = true; return nil }); err == nil || ran {
			t.Errorf("%+v: Run probed (%v) or returned no error (%v)", o, ran, err)
		}
	}
	if err := batch.DefaultOptions().Validate(); err != nil {
		t.Errorf("default options: %v", err)
	}
}
