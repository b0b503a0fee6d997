package connect

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// probeSCTP opens an SCTP association, sends the payload and waits for a reply, as
// agnhost does. Any failure other than the deadline is OTHER (agnhost's mapping).
func probeSCTP(ctx context.Context, req Request) Outcome {
	addr, err := resolve(ctx, "tcp", req.Dest) // agnhost resolves SCTP targets as TCP ones
	if err != nil {
		return Outcome{Verdict: DNS, Detail: err.Error()}
	}
	f, err := dialSCTP(ctx, addr)
	if err != nil {
		if isTimeout(err) {
			return Outcome{Verdict: Timeout, Detail: timeoutDetail(req)}
		}
		return Outcome{Verdict: Other, Detail: err.Error()}
	}
	defer f.Close()
	if _, err := f.Write([]byte(req.Payload + "\n")); err != nil {
		return classifySCTPIO(err, req)
	}
	buf := make([]byte, 1024)
	n, err := f.Read(buf)
	if err != nil {
		return classifySCTPIO(err, req)
	}
	return Outcome{Verdict: Connected, Reply: string(buf[:n])}
}

func classifySCTPIO(err error, req Request) Outcome {
	if isTimeout(err) {
		return Outcome{Verdict: Timeout, Detail: timeoutDetail(req)}
	}
	return Outcome{Verdict: Other, Detail: err.Error()}
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
		if errors.Is(err, unix.EPROTONOSUPPORT) {
			return nil, fmt.Errorf("open sctp socket: %w (this kernel has no SCTP support)", err)
		}
		return nil, fmt.Errorf("open sctp socket: %w", err)
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
		return nil, fmt.Errorf("connect sctp %s: %w", addr, err)
	}
	if err != nil {
		rc, rerr := f.SyscallConn()
		if rerr != nil {
			f.Close()
			return nil, fmt.Errorf("connect sctp %s: %w", addr, rerr)
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
			if errors.Is(werr, os.ErrDeadlineExceeded) {
				return nil, werr
			}
			return nil, fmt.Errorf("connect sctp %s: %w", addr, werr)
		}
	}
	return f, nil
}
