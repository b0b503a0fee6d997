// Package connect makes one connection attempt the way `agnhost connect` does and
// classifies the outcome into agnhost's verdicts (TIMEOUT, REFUSED, DNS, OTHER,
// UNKNOWN), so a probe can be swapped in for agnhost without changing what tests see.
//
// Every outcome carries two texts: Message, the exact line agnhost prints on stderr
// (so `probe connect` is byte-compatible), and Detail, the underlying error, which
// batch results report even where agnhost prints a bare word.
package connect

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"time"
)

// Protocol is the transport a probe uses.
type Protocol string

const (
	TCP  Protocol = "tcp"
	UDP  Protocol = "udp"
	SCTP Protocol = "sctp"
	// ICMP is one echo request answered by an echo reply (icmp.go). agnhost
	// connect has no such protocol; cilium-cli's connectivity tests ping.
	ICMP Protocol = "icmp"
)

// ParseProtocol accepts what agnhost's --protocol accepts ("" means tcp), and icmp.
func ParseProtocol(s string) (Protocol, error) {
	switch s {
	case "", "tcp":
		return TCP, nil
	case "udp":
		return UDP, nil
	case "sctp":
		return SCTP, nil
	case "icmp":
		return ICMP, nil
	}
	return "", fmt.Errorf("unsupported protocol %q: want tcp, udp, sctp or icmp", s)
}

// Verdict is the outcome class of one probe.
type Verdict string

const (
	Connected Verdict = "connected"
	Refused   Verdict = "refused"
	Timeout   Verdict = "timeout"
	DNS       Verdict = "dns"
	Other     Verdict = "other"
	// Unknown is agnhost's class for non-network errors such as a malformed target.
	Unknown Verdict = "unknown"
)

// Word is the fixed prefix agnhost prints on stderr for v ("" for Connected).
func (v Verdict) Word() string {
	if v == Connected {
		return ""
	}
	return strings.ToUpper(string(v))
}

// DefaultPayload is what agnhost sends over UDP and SCTP unless told otherwise;
// serve-hostname and netexec both answer it with the hostname.
const DefaultPayload = "hostname"

// Request describes one probe.
type Request struct {
	// Dest is host:port, exactly as given to agnhost connect.
	Dest     string
	Protocol Protocol
	// Timeout bounds the attempt. Non-positive values keep agnhost's per-protocol
	// meaning (see Probe); batch callers always give a positive one.
	Timeout time.Duration
	// Payload is sent over UDP and SCTP, newline-terminated as agnhost does.
	Payload string
}

// Outcome is the classified result of one probe.
type Outcome struct {
	Verdict Verdict
	// Message is what agnhost prints on stderr for this outcome, without the final
	// newline ("TIMEOUT", "DNS: lookup ...", ...); empty when connected.
	Message string
	// Detail is the underlying error text; empty when connected.
	Detail string
	// Hint names the flag or argument to fix when the outcome was caused by bad
	// input (a non-positive --timeout, a target that is not host:port). Empty
	// otherwise.
	Hint string
	// Reply holds what a UDP or SCTP server answered (serve-hostname: its hostname).
	Reply   string
	Latency time.Duration
}

// Line is the stderr line `probe connect` prints: agnhost's Message, followed by
// the Hint when there is one.
func (o Outcome) Line() string {
	if o.Hint == "" {
		return o.Message
	}
	if o.Message == "" {
		return o.Hint
	}
	return o.Message + " (" + o.Hint + ")"
}

// UDPNoDeadlineWait bounds a UDP probe given no positive timeout. agnhost would
// wait forever for a reply that a drop rule swallowed; this probe gives up after
// this long and says which flag to set.
const UDPNoDeadlineWait = 10 * time.Second

// Probe makes one attempt described by req, with agnhost's semantics for every
// timeout value:
//
//	tcp:  > 0 bounds the dial; 0 sets no deadline (the kernel's SYN retries end it);
//	      < 0 has already expired, so the result is TIMEOUT.
//	udp:  > 0 bounds the exchange; <= 0 sets no deadline (bounded here by
//	      UDPNoDeadlineWait).
//	sctp: > 0 bounds the exchange; <= 0 fires at once, so TIMEOUT.
//
// It never blocks past a positive req.Timeout, nor past ctx.
func Probe(ctx context.Context, req Request) Outcome {
	start := time.Now()
	var out Outcome
	switch req.Protocol {
	case "", TCP:
		out = probeTCP(ctx, req)
	case UDP:
		out = probeUDP(ctx, req)
	case SCTP:
		out = probeSCTP(ctx, req)
	case ICMP:
		out = probeICMP(ctx, req)
	default:
		out = Outcome{Verdict: Unknown, Message: fmt.Sprintf("UNKNOWN: unsupported protocol %q", req.Protocol),
			Detail: fmt.Sprintf("unsupported protocol %q", req.Protocol), Hint: "--protocol must be tcp, udp, sctp or icmp"}
	}
	if out.Verdict == Timeout && req.Timeout <= 0 && out.Hint == "" {
		out.Hint = timeoutHint(req)
	}
	out.Latency = time.Since(start)
	return out
}

func timeoutHint(req Request) string {
	switch {
	case req.Protocol == UDP && req.Timeout <= 0:
		return fmt.Sprintf("--timeout=%v sets no deadline; this probe stopped waiting after %v: give a positive duration such as --timeout=3s", req.Timeout, UDPNoDeadlineWait)
	case req.Timeout == 0 && req.Protocol != SCTP:
		return "--timeout=0s sets no deadline, so the kernel's retries decided: give a positive duration such as --timeout=3s"
	}
	return fmt.Sprintf("--timeout=%v is not positive, so the deadline passed before any answer: give a positive duration such as --timeout=3s", req.Timeout)
}

func fail(v Verdict, err error) Outcome {
	return Outcome{Verdict: v, Message: v.Word() + ": " + err.Error(), Detail: err.Error()}
}

// resolveCtx runs resolve bounded by ctx. The standard resolver functions agnhost
// calls (net.ResolveTCPAddr and friends) take no context; calling the same ones
// keeps their error texts identical, and the goroutine lets the probe give up on
// a slow DNS server at the deadline.
//
// An address literal needs no lookup, so it resolves on the calling goroutine: on a
// starved machine a goroutine may not run before a short deadline, and a probe of
// an IP must never read as a DNS failure.
func resolveCtx(ctx context.Context, dest string, resolve func() error) error {
	if host, _, err := net.SplitHostPort(dest); err == nil {
		if _, err := netip.ParseAddr(host); err == nil {
			return resolve()
		}
	}
	done := make(chan error, 1)
	go func() { done <- resolve() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		select {
		case err := <-done: // finished at the deadline: take the answer
			return err
		default:
		}
		return fmt.Errorf("name resolution did not finish: %w", ctx.Err())
	}
}

// bindDeadline gives conn ctx's deadline and unblocks its reads when ctx is
// cancelled for another reason (batch aborted); call the result when done.
func bindDeadline(ctx context.Context, conn interface{ SetDeadline(time.Time) error }) (stop func() bool) {
	dl, _ := ctx.Deadline()
	conn.SetDeadline(dl)
	return context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
}

func withDeadline(ctx context.Context, timeout time.Duration) (context.Context, context.CancelFunc) {
	if timeout > 0 {
		return context.WithTimeout(ctx, timeout)
	}
	return context.WithCancel(ctx)
}

func probeTCP(ctx context.Context, req Request) Outcome {
	// agnhost checks the shape first (UNKNOWN), then resolution (DNS), then dials.
	if _, _, err := net.SplitHostPort(req.Dest); err != nil {
		o := fail(Unknown, err)
		o.Hint = "the target must be host:port, e.g. 10.224.0.57:80"
		return o
	}
	rctx, cancel := withDeadline(ctx, req.Timeout)
	defer cancel()
	if err := resolveCtx(rctx, req.Dest, func() error { _, err := net.ResolveTCPAddr("tcp", req.Dest); return err }); err != nil {
		return dnsFailure(err)
	}
	d := net.Dialer{Timeout: req.Timeout}
	conn, err := d.DialContext(ctx, "tcp", req.Dest)
	if err == nil {
		conn.Close()
		return Outcome{Verdict: Connected}
	}
	var opErr *net.OpError
	if errors.As(err, &opErr) {
		if opErr.Timeout() {
			return Outcome{Verdict: Timeout, Message: "TIMEOUT", Detail: err.Error()}
		}
		if errors.Is(opErr.Err, syscall.ECONNREFUSED) {
			return Outcome{Verdict: Refused, Message: "REFUSED", Detail: err.Error()}
		}
	}
	return fail(Other, err)
}

// dnsFailure is DNS, with a hint when the port rather than the name was wrong.
func dnsFailure(err error) Outcome {
	o := fail(DNS, err)
	var ae *net.AddrError
	switch {
	case errors.As(err, &ae) && ae.Err == "missing port in address":
		o.Hint = "the target must be host:port, e.g. 10.224.0.57:80"
	case errors.As(err, &ae) && ae.Err == "invalid port":
		o.Hint = "the port in the target must be a number from 1 to 65535"
	case strings.Contains(err.Error(), "unknown port"):
		o.Hint = "the port in the target must be a number from 1 to 65535 or a known service name"
	}
	return o
}

func probeUDP(ctx context.Context, req Request) Outcome {
	wait := req.Timeout
	if wait <= 0 {
		wait = UDPNoDeadlineWait
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	// agnhost does not check the shape for UDP: a malformed target is DNS.
	if err := resolveCtx(ctx, req.Dest, func() error { _, err := net.ResolveUDPAddr("udp", req.Dest); return err }); err != nil {
		return dnsFailure(err)
	}
	conn, err := net.Dial("udp", req.Dest)
	if err != nil {
		return fail(Other, err)
	}
	defer conn.Close()
	defer bindDeadline(ctx, conn)()

	if _, err := conn.Write([]byte(req.Payload + "\n")); err != nil {
		return classifyUDP(err)
	}
	buf := make([]byte, 1024)
	n, err := conn.Read(buf)
	if err != nil {
		return classifyUDP(err)
	}
	if n == 0 {
		const msg = "No data received from the server. Cannot guarantee the server received the request."
		return Outcome{Verdict: Other, Message: "OTHER: " + msg, Detail: msg}
	}
	return Outcome{Verdict: Connected, Reply: string(buf[:n])}
}

// classifyUDP follows agnhost: a deadline is TIMEOUT, an ICMP port unreachable
// (ECONNREFUSED on the connected socket) is REFUSED, anything else UNKNOWN.
func classifyUDP(err error) Outcome {
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		return fail(Timeout, err)
	case strings.Contains(err.Error(), "connection refused"):
		return fail(Refused, err)
	}
	return fail(Unknown, err)
}
