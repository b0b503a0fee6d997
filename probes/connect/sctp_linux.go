package connect

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/ishidawataru/sctp"
	"golang.org/x/sys/unix"
)

// probeSCTP opens an SCTP association, sends the payload and waits for a reply, as
// agnhost does: the deadline is TIMEOUT and every other failure is OTHER.
func probeSCTP(ctx context.Context, req Request) Outcome {
	addr, err := sctp.ResolveSCTPAddr("sctp", req.Dest)
	if err != nil {
		return dnsFailure(err)
	}
	if req.Timeout <= 0 {
		// agnhost's timer fires at once for a non-positive timeout.
		return Outcome{Verdict: Timeout, Message: "TIMEOUT", Detail: fmt.Sprintf("--timeout=%v expired before dialing", req.Timeout)}
	}
	if len(addr.IPAddrs) == 0 {
		addr.IPAddrs = []net.IPAddr{{IP: net.IPv4(127, 0, 0, 1)}}
	}
	ip, ok := netip.AddrFromSlice(addr.IPAddrs[0].IP)
	if !ok {
		return fail(Other, fmt.Errorf("bad address %v", addr.IPAddrs[0].IP))
	}
	ctx, cancel := context.WithTimeout(ctx, req.Timeout)
	defer cancel()
	f, err := dialSCTP(ctx, netip.AddrPortFrom(ip.Unmap(), uint16(addr.Port)))
	if err != nil {
		return classifySCTP(err, "connect")
	}
	defer f.Close()
	if _, err := f.Write([]byte(req.Payload + "\n")); err != nil {
		return classifySCTP(err, "write")
	}
	buf := make([]byte, 1024)
	n, err := f.Read(buf)
	if err != nil {
		return classifySCTP(err, "read")
	}
	return Outcome{Verdict: Connected, Reply: string(buf[:n])}
}

func classifySCTP(err error, op string) Outcome {
	if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) {
		return Outcome{Verdict: Timeout, Message: "TIMEOUT", Detail: fmt.Sprintf("sctp %s: %v", op, err)}
	}
	o := Outcome{Verdict: Other, Message: "OTHER: " + err.Error(), Detail: fmt.Sprintf("sctp %s: %v", op, err)}
	if errors.Is(err, unix.EPROTONOSUPPORT) {
		o.Detail += " (this kernel has no SCTP support)"
	}
	return o
}

// dialSCTP connects a one-to-one SCTP socket to addr, bounded by ctx. The socket is
// wrapped in an *os.File so the runtime poller gives us deadlines.
func dialSCTP(ctx context.Context, addr netip.AddrPort) (*os.File, error) {
	family, sa := unix.AF_INET, unix.Sockaddr(nil)
	if addr.Addr().Is4() {
		sa = &unix.SockaddrInet4{Port: int(addr.Port()), Addr: addr.Addr().As4()}
	} else {
		family = unix.AF_INET6
		sa = &unix.SockaddrInet6{Port: int(addr.Port()), Addr: addr.Addr().As16()}
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_SCTP)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "sctp:"+addr.String())
	if dl, ok := ctx.Deadline(); ok {
		f.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { f.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	err = unix.Connect(fd, sa)
	if err != nil && !errors.Is(err, unix.EINPROGRESS) {
		f.Close()
		return nil, err
	}
	if err != nil {
		rc, rerr := f.SyscallConn()
		if rerr != nil {
			f.Close()
			return nil, rerr
		}
		var connErr error
		werr := rc.Write(func(fd uintptr) bool {
			soErr, gerr := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR)
			switch {
			case gerr != nil:
				connErr = gerr
			case soErr != 0:
				connErr = unix.Errno(soErr)
			default:
				// Writable readiness can be reported before the handshake ends;
				// keep waiting until the socket has a peer.
				if _, perr := unix.Getpeername(int(fd)); errors.Is(perr, unix.ENOTCONN) {
					return false
				}
			}
			return true
		})
		if werr == nil {
			werr = connErr
		}
		if werr != nil {
			f.Close()
			return nil, werr
		}
	}
	return f, nil
}

// HaveSCTP reports whether this kernel can open SCTP sockets.
func HaveSCTP() bool {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_SCTP)
	if err != nil {
		return false
	}
	unix.Close(fd)
	return true
}
