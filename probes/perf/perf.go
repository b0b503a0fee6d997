// Package perf measures a network path with netperf's tests between a `probe perf
// serve` server and a `probe perf` client:
//
//   - TCP_RR: one connection per worker; a transaction is a request of
//     RequestSize bytes answered by ResponseSize bytes, the next request sent
//     only after the whole response arrived (netperf's default is 1 byte each way).
//   - TCP_CRR: a transaction is connect, request, response, close: netperf's
//     model of an HTTP/1.0 exchange, so it also measures connection set-up.
//   - TCP_STREAM: bulk data from client to server in writes of RequestSize
//     bytes; the result is the throughput the server confirms it received.
//   - UDP_RR: TCP_RR over UDP datagrams. netperf stalls on a lost datagram; here a
//     transaction with no answer within LossTimeout is counted as lost, and a late
//     answer (an earlier sequence number) is discarded.
//
// Latency is timed per transaction (netperf's omni MIN/P50/P90/P99_LATENCY), and
// transactions/s counts only those started after the warm-up.
//
// On the wire each new TCP connection starts with a 16-byte header (magic, test,
// request and response sizes) written in the same segment as its first request,
// so a transaction sends as many packets as netperf's; a UDP request carries a
// 12-byte header (magic, sequence, response size) and is never shorter than that,
// an answer its 4-byte sequence number. The server needs no configuration.
package perf

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"
)

// Test is one of netperf's test names.
type Test string

const (
	TCPRR     Test = "TCP_RR"
	TCPCRR    Test = "TCP_CRR"
	TCPStream Test = "TCP_STREAM"
	UDPRR     Test = "UDP_RR"
)

// Tests lists every test, in the order tables show them.
var Tests = []Test{TCPRR, TCPCRR, TCPStream, UDPRR}

// ParseTest accepts a test name in any case ("tcp_rr" is TCP_RR).
func ParseTest(s string) (Test, error) {
	for _, t := range Tests {
		if strings.EqualFold(s, string(t)) {
			return t, nil
		}
	}
	return "", fmt.Errorf("unknown test %q: use one of %s", s, joinTests())
}

func joinTests() string {
	names := make([]string, len(Tests))
	for i, t := range Tests {
		names[i] = string(t)
	}
	return strings.Join(names, ", ")
}

// DefaultPort is netperf's netserver port.
const DefaultPort = 12865

// Size limits: a UDP request or answer must fit one datagram.
const (
	maxTCPSize = 16 << 20
	maxUDPSize = 65000
)

// Options configure one client run.
type Options struct {
	Test Test
	// Target is the server's host:port.
	Target string
	// Duration is the measured time, after Warmup.
	Duration, Warmup time.Duration
	// RequestSize and ResponseSize are bytes per transaction; for TCP_STREAM
	// RequestSize is the size of each write and ResponseSize is unused.
	RequestSize, ResponseSize int
	// Parallel is the number of concurrent workers, each with its own
	// connection or socket.
	Parallel int
	// LossTimeout is how long a UDP_RR request waits for its answer.
	LossTimeout time.Duration
	// DialTimeout bounds each TCP connect.
	DialTimeout time.Duration
}

// DefaultOptions are netperf's defaults where it has them (1-byte transactions,
// 10 s), a 1 s warm-up and a 128 KiB stream write.
func DefaultOptions() Options {
	return Options{
		Test:         TCPRR,
		Duration:     10 * time.Second,
		Warmup:       time.Second,
		RequestSize:  1,
		ResponseSize: 1,
		Parallel:     1,
		LossTimeout:  200 * time.Millisecond,
		DialTimeout:  3 * time.Second,
	}
}

// DefaultStreamSize is TCP_STREAM's write size when none is given.
const DefaultStreamSize = 128 << 10

// Validate names the flag of the first bad option and what to give instead.
func (o Options) Validate() error {
	if _, err := ParseTest(string(o.Test)); err != nil {
		return fmt.Errorf("--test: %w", err)
	}
	if o.Target == "" {
		return fmt.Errorf("--target: missing: give the server as host:port")
	}
	if _, err := SplitTarget(o.Target); err != nil {
		return fmt.Errorf("--target=%s: %w", o.Target, err)
	}
	switch {
	case o.Duration <= 0:
		return fmt.Errorf("--duration=%s: must be positive", o.Duration)
	case o.Warmup < 0:
		return fmt.Errorf("--warmup=%s: must be zero or positive", o.Warmup)
	case o.Parallel < 1 || o.Parallel > 1024:
		return fmt.Errorf("--parallel=%d: must be between 1 and 1024", o.Parallel)
	case o.LossTimeout <= 0:
		return fmt.Errorf("--loss-timeout=%s: must be positive", o.LossTimeout)
	case o.DialTimeout <= 0:
		return fmt.Errorf("--connect-timeout=%s: must be positive", o.DialTimeout)
	}
	limit := maxTCPSize
	if o.Test == UDPRR {
		limit = maxUDPSize
	}
	if o.RequestSize < 1 || o.RequestSize > limit {
		return fmt.Errorf("--request-size=%d: must be between 1 and %d bytes for %s", o.RequestSize, limit, o.Test)
	}
	if o.Test != TCPStream && (o.ResponseSize < 1 || o.ResponseSize > limit) {
		return fmt.Errorf("--response-size=%d: must be between 1 and %d bytes for %s", o.ResponseSize, limit, o.Test)
	}
	return nil
}

// SplitTarget checks host:port and returns the port.
func SplitTarget(target string) (int, error) {
	host, p, err := net.SplitHostPort(target)
	if err != nil {
		return 0, fmt.Errorf("not host:port: %w", err)
	}
	if host == "" {
		return 0, fmt.Errorf("the host is empty: give the server's address")
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 1 || port > 65535 {
		return 0, fmt.Errorf("port %q: must be a number from 1 to 65535", p)
	}
	return port, nil
}

// Latency summarises per-transaction latencies, in microseconds.
type Latency struct {
	Min  float64 `json:"min"`
	Mean float64 `json:"mean"`
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	Max  float64 `json:"max"`
}

// Result is what `probe perf -o json` prints: one JSON object per run.
type Result struct {
	Test         Test   `json:"test"`
	Target       string `json:"target"`
	Parallel     int    `json:"parallel"`
	RequestSize  int    `json:"request_size"`
	ResponseSize int    `json:"response_size,omitempty"`
	// Seconds is the measured time (after the warm-up).
	Seconds float64 `json:"seconds"`
	// Transactions completed in the measured time (RR tests).
	Transactions     int64   `json:"transactions"`
	TransactionsPerS float64 `json:"transactions_per_s"`
	// LatencyUS is per transaction; absent for TCP_STREAM.
	LatencyUS *Latency `json:"latency_us,omitempty"`
	// Bytes the server confirmed it received in the measured time (TCP_STREAM).
	Bytes      int64   `json:"bytes,omitempty"`
	GbitPerS   float64 `json:"gbit_per_s"`
	Lost       int64   `json:"lost,omitempty"`
	Errors     int64   `json:"errors,omitempty"`
	FirstError string  `json:"first_error,omitempty"`
	// TimeWaitWaitedS is how long TCP_CRR waited, before its warm-up, for the
	// TIME_WAIT sockets of earlier runs to expire (drainTimeWait).
	TimeWaitWaitedS float64 `json:"time_wait_waited_s,omitempty"`
}

// TextHeader and Text print a result as one aligned line of a table; "-"
// stands for a figure the test does not measure.
func TextHeader() string {
	return fmt.Sprintf("%-10s %-22s %3s %11s %9s %9s %9s %9s %9s %7s %6s",
		"TEST", "TARGET", "P", "TRANS/S", "MIN_US", "P50_US", "P90_US", "P99_US", "GBIT/S", "LOST", "ERRORS")
}

func (r Result) Text() string {
	num := func(v float64, prec int) string { return strconv.FormatFloat(v, 'f', prec, 64) }
	rate, gbit := num(r.TransactionsPerS, 1), "-"
	lat := []string{"-", "-", "-", "-"}
	if r.LatencyUS != nil {
		l := r.LatencyUS
		lat = []string{num(l.Min, 1), num(l.P50, 1), num(l.P90, 1), num(l.P99, 1)}
	}
	if r.Test == TCPStream {
		rate, gbit = "-", num(r.GbitPerS, 3)
	}
	return fmt.Sprintf("%-10s %-22s %3d %11s %9s %9s %9s %9s %9s %7d %6d",
		r.Test, r.Target, r.Parallel, rate, lat[0], lat[1], lat[2], lat[3], gbit, r.Lost, r.Errors)
}
