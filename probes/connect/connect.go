// Package connect makes one connection attempt the way `agnhost connect` does and
// classifies the outcome into agnhost's verdicts (TIMEOUT, REFUSED, DNS, OTHER,
// UNKNOWN), so a probe can be swapped in for agnhost without changing what tests see.
package connect

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
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
)

// ParseProtocol accepts what agnhost's --protocol accepts ("" means tcp).
func ParseProtocol(s string) (Protocol, error) {
	switch s {
	case "", "tcp":
		return TCP, nil
	case "udp":
		return UDP, nil
	case "sctp":
		return SCTP, nil
	}
	return "", fmt.Errorf("unsupported protocol %q: want tcp, udp or sctp", s)
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
	// Timeout bounds the whole attempt. Non-positive values keep agnhost's per-protocol
	// meaning (see probe); batch callers always give a positive one.
	Timeout time.Duration
	// Payload is sent over UDP and SCTP, newline-terminated as agnhost does.
	Payload string
}

// Outcome is the classified result of one probe.
type Outcome struct {
	Verdict Verdict
	// Detail explains a failure; empty for Connected.
	Detail string
	// Reply holds what a UDP or SCTP server answered (serve-hostname: its hostname).
	Reply   string
	Latency time.Duration
}

// AgnhostMessage is the stderr line agnhost prints for o, without the newline: the
// verdict word, then the detail. Empty when connected (agnhost prints nothing).
func (o Outcome) AgnhostMessage() string {
	if o.Verdict == Connected {
		return ""
	}
	if o.Detail == "" {
		return o.Verdict.Word()
	}
	return o.Verdict.Word() + ": " + o.Detail
}

// Probe makes one attempt described by req. It never blocks past req.Timeout (when
// positive) or past ctx.
func Probe(ctx context.Context, req Request) Outcome {
	start := time.Now()
	out := probe(ctx, req)
	out.Latency = time.Since(start)
	return out
}

// udpNoDeadlineWait bounds a UDP probe given no positive timeout. agnhost would wait
// forever for a reply that a drop rule swallowed; we give up after this long.
const udpNoDeadlineWait = 10 * time.Second

func probe(ctx context.Context, req Request) Outcome {
	proto := req.Protocol
	if proto == "" {
		proto = TCP
	}
	// A non-positive timeout means different things per protocol in agnhost; keep
	// each meaning so the verdicts match:
	//   tcp:  0 = no deadline (the kernel's SYN retries end it), < 0 = already expired;
	//   udp:  <= 0 = no read deadline (bounded here by udpNoDeadlineWait);
	//   sctp: <= 0 = its timer fires at once, so TIMEOUT.
	switch {
	case req.Timeout > 0:
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, req.Timeout)
		defer cancel()
	case proto == UDP:
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, udpNoDeadlineWait)
		defer cancel()
	case proto == SCTP || req.Timeout < 0:
		if _, err := ParseProtocol(string(proto)); err != nil {
			break
		}
		return Outcome{Verdict: Timeout, Detail: fmt.Sprintf("timeout %v is not positive, so the deadline passed before dialing %s/%s", req.Timeout, req.Dest, proto)}
	}
	switch proto {
	case TCP:
		return probeTCP(ctx, req)
	case UDP:
		return probeUDP(ctx, req)
	case SCTP:
		return probeSCTP(ctx, req)
	}
	return Outcome{Verdict: Unknown, Detail: fmt.Sprintf("unsupported protocol %q: want tcp, udp or sctp", req.Protocol)}
}

func probeTCP(ctx context.Context, req Request) Outcome {
	// Like agnhost: a target that is not host:port is UNKNOWN, one that does not
	// resolve (bad name, bad port) is DNS, and only then do we dial.
	if _, _, err := net.SplitHostPort(req.Dest); err != nil {
		return Outcome{Verdict: Unknown, Detail: fmt.Sprintf("%v (the target must be host:port)", err)}
	}
	addr, err := resolve(ctx, "tcp", req.Dest)
	if err != nil {
		return Outcome{Verdict: DNS, Detail: err.Error()}
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr.String())
	if err == nil {
		conn.Close()
		return Outcome{Verdict: Connected}
	}
	return classifyDial(err, req)
}

func classifyDial(err error, req Request) Outcome {
	switch {
	case isTimeout(err):
		return Outcome{Verdict: Timeout, Detail: timeoutDetail(req)}
	case errors.Is(err, syscall.ECONNREFUSED):
		return Outcome{Verdict: Refused, Detail: fmt.Sprintf("%s/%s refused the connection", req.Dest, protoName(req.Protocol))}
	}
	return Outcome{Verdict: Other, Detail: err.Error()}
}

func timeoutDetail(req Request) string {
	switch {
	case req.Timeout <= 0 && req.Protocol == UDP:
		return fmt.Sprintf("no answer from %s/udp within %v (timeout %v sets no deadline; this probe stops waiting after %v)", req.Dest, udpNoDeadlineWait, req.Timeout, udpNoDeadlineWait)
	case req.Timeout == 0:
		return fmt.Sprintf("no answer from %s/%s (timeout 0 sets no deadline; the kernel gave up)", req.Dest, protoName(req.Protocol))
	}
	return fmt.Sprintf("no answer from %s/%s within %v", req.Dest, protoName(req.Protocol), req.Timeout)
}

func protoName(p Protocol) string {
	if p == "" {
		return string(TCP)
	}
	return string(p)
}

func isTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func probeUDP(ctx context.Context, req Request) Outcome {
	addr, err := resolve(ctx, "udp", req.Dest)
	if err != nil {
		return Outcome{Verdict: DNS, Detail: err.Error()}
	}
	conn, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(addr))
	if err != nil {
		return Outcome{Verdict: Other, Detail: err.Error()}
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	// Unblock the read when ctx is cancelled for another reason (batch aborted).
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	if _, err := conn.Write([]byte(req.Payload + "\n")); err != nil {
		return classifyUDP(err, req)
	}
	buf := make([]byte, 1024)
	n, err := conn.Read(buf)
	if err != nil {
		return classifyUDP(err, req)
	}
	if n == 0 {
		return Outcome{Verdict: Other, Detail: "No data received from the server. Cannot guarantee the server received the request."}
	}
	return Outcome{Verdict: Connected, Reply: string(buf[:n])}
}

// classifyUDP follows agnhost: a deadline is TIMEOUT, an ICMP port unreachable
// (seen as ECONNREFUSED on the connected socket) is REFUSED, anything else UNKNOWN.
func classifyUDP(err error, req Request) Outcome {
	switch {
	case isTimeout(err):
		return Outcome{Verdict: Timeout, Detail: fmt.Sprintf("%s: %v", timeoutDetail(req), err)}
	case errors.Is(err, syscall.ECONNREFUSED):
		return Outcome{Verdict: Refused, Detail: err.Error()}
	}
	return Outcome{Verdict: Unknown, Detail: err.Error()}
}

// resolve turns host:port into one address the way net.ResolveTCPAddr does (IPv4
// preferred, service names allowed), but bounded by ctx.
func resolve(ctx context.Context, network, dest string) (netip.AddrPort, error) {
	host, portStr, err := net.SplitHostPort(dest)
	if err != nil {
		return netip.AddrPort{}, err
	}
	port, err := lookupPort(ctx, network, portStr)
	if err != nil {
		return netip.AddrPort{}, err
	}
	if host == "" {
		// As net.Dial: an empty host means this machine.
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), port), nil
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		return netip.AddrPortFrom(ip.Unmap(), port), nil
	}
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return netip.AddrPort{}, err
	}
	if len(ips) == 0 {
		return netip.AddrPort{}, fmt.Errorf("lookup %s: no addresses", host)
	}
	pick := ips[0]
	for _, ip := range ips {
		if ip.Unmap().Is4() {
			pick = ip
			break
		}
	}
	return netip.AddrPortFrom(pick.Unmap(), port), nil
}

func lookupPort(ctx context.Context, network, s string) (uint16, error) {
	if n, err := strconv.Atoi(s); err == nil {
		if n < 0 || n > 65535 {
			return 0, fmt.Errorf("address %s: invalid port (want 0-65535)", s)
		}
		return uint16(n), nil
	}
	n, err := net.DefaultResolver.LookupPort(ctx, network, s)
	if err != nil {
		return 0, err
	}
	return uint16(n), nil
}
