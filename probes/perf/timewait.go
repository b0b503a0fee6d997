package perf

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// TCP_CRR leaves every connection it closes in TIME_WAIT on the client for 60 s
// (the kernel's fixed TCP_TIMEWAIT_LEN). A run that starts while the previous
// one's fill most of the ephemeral port range measures connect()'s search for a
// free port, not the path: here 4 ms per connect instead of 0.2 ms. drainTimeWait
// waits, at most max, until this network namespace holds fewer TIME_WAIT sockets
// than a tenth of its ephemeral port range, and returns how long it waited.
func drainTimeWait(ctx context.Context, max time.Duration) (time.Duration, error) {
	limit, err := ephemeralPorts()
	if err != nil {
		return 0, err
	}
	limit /= 10
	start := time.Now()
	for {
		tw, err := timeWaitSockets()
		if err != nil {
			return time.Since(start), err
		}
		if tw < limit || time.Since(start) >= max {
			return time.Since(start), nil
		}
		select {
		case <-ctx.Done():
			return time.Since(start), ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// timeWaitSockets is the "tw" count of /proc/net/sockstat's TCP line.
func timeWaitSockets() (int, error) {
	f, err := os.Open("/proc/net/sockstat")
	if err != nil {
		return 0, fmt.Errorf("counting TIME_WAIT sockets: %w", err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) == 0 || fields[0] != "TCP:" {
			continue
		}
		for i := 1; i+1 < len(fields); i += 2 {
			if fields[i] == "tw" {
				return strconv.Atoi(fields[i+1])
			}
		}
	}
	return 0, fmt.Errorf("counting TIME_WAIT sockets: no TCP tw field in /proc/net/sockstat")
}

// ephemeralPorts is the size of net.ipv4.ip_local_port_range.
func ephemeralPorts() (int, error) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0, fmt.Errorf("reading the ephemeral port range: %w", err)
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0, fmt.Errorf("ephemeral port range %q: want two ports", b)
	}
	lo, err1 := strconv.Atoi(f[0])
	hi, err2 := strconv.Atoi(f[1])
	if err1 != nil || err2 != nil || hi < lo {
		return 0, fmt.Errorf("ephemeral port range %q: want two ports, low first", b)
	}
	return hi - lo + 1, nil
}
