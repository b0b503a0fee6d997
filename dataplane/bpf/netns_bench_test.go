package bpf

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"

	"github.com/flatnet/flatnet/dataplane/compile"
	"github.com/flatnet/flatnet/dataplane/identity"
	"github.com/flatnet/flatnet/dataplane/policy"
)

// BenchmarkNetnsTCP measures what the datapath costs real TCP traffic between two netns
// "pods" over veths (issue #5): TCP_CRR (one connection per op: connect, 1-byte
// request, 1-byte response, close) and TCP_RR (1-byte ping-pong on one connection).
// Every variant runs in the same process, one after the other, on the same pods:
//
//	dp=none             no program on the veths (the baseline)
//	dp=prog             programs attached, no policy (0 rules), flow events at the default rate
//	dp=prog+1000rules   the server's ingress allows the client among 1,000 other rules
//	dp=prog+1000rules+filters  the same with the programs on the clsact filters they are
//	                    attached with, not yet moved to tcx links (MoveToTCX) as in
//	                    every other variant
//	dp=prog+1000rules+host-routing  the same, through the host stack (SetHostRouting):
//	                    what the policy costs without direct local delivery's saving
//	dp=prog+events-off  0 rules, flow events switched off (SetFlowEvents)
//	dp=prog+events-all  0 rules, event rate raised so every new connection is an event
//
// A reader drains the ring buffer throughout, as the agent does; events/op and
// lost/op say how many events the variant produced and lost to the rate limit;
// cpu-ns/op is the process's CPU time per op (client, server, reader and the
// programs in the sockets' softirqs), steadier than ns/op on a shared machine;
// prog-ns/op is the time spent in the programs themselves (BPF run time stats) and
// ns/prog-run the time of one run: the datapath's own cost, whatever else runs.
// FLATNET_BENCH_KUBE_PROXY=1 adds kube-proxy-like NAT rules to the node netns, as on
// every Kubernetes node: netfilter then tracks every forwarded packet (dp=none and
// host routing pay for it; direct local delivery skips it).
// scripts/bench-datapath.sh runs it with several counts, each a new process, so the
// variants interleave, and prints the ratios against dp=none. Nothing is asserted
// about times: a loaded machine only makes the figures noisy.
func BenchmarkNetnsTCP(b *testing.B) {
	n, server, client := newBenchNode(b)
	ctx := context.Background()
	// One connection per op leaves the client's side in TIME_WAIT: reuse those ports
	// (timestamps make it safe) and use the whole port range.
	must(b, client.netns.Do(func(ns.NetNS) error {
		if err := os.WriteFile("/proc/sys/net/ipv4/tcp_tw_reuse", []byte("1"), 0o644); err != nil {
			return err
		}
		return os.WriteFile("/proc/sys/net/ipv4/ip_local_port_range", []byte("1024 65535"), 0o644)
	}))

	if os.Getenv("FLATNET_BENCH_KUBE_PROXY") != "" {
		// A node as Kubernetes runs it: kube-proxy's NAT rules make netfilter's
		// connection tracking and NAT hooks see every forwarded packet.
		n.dnatTCP(netip.MustParseAddr("10.96.0.10"), 80, server.ip.String()+":80")
		n.masqueradeMarked()
	}
	// Run time of the programs themselves, while this process holds the fd (the kernel
	// counts nothing otherwise): what the datapath costs, whatever else runs.
	enableRunTimeStats(b)

	rd, err := n.d.NewFlowReader()
	must(b, err)
	var events atomic.Uint64
	readCtx, stopReading := context.WithCancel(ctx)
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		for {
			if _, err := rd.Read(readCtx); err != nil {
				return
			}
			events.Add(1)
		}
	}()
	b.Cleanup(func() { stopReading(); <-readDone; rd.Close() })

	clientID, _ := n.c.IdentityOf("default", "client")
	rules1000 := rulesPolicy(clientID, benchPort, 1000)
	attach := func(p *testPod) {
		id, _ := n.c.IdentityOf(p.namespace, p.name)
		must(b, n.node.Do(func(ns.NetNS) error {
			return n.d.AttachEndpoint(ctx, Endpoint{IfIndex: p.ifindex, IP: p.ip, Identity: id, MAC: p.mac}, n.c.EndpointPolicy(p.namespace, p.name))
		}))
	}
	type variant struct {
		name string
		set  func()
	}
	attached := func(rate uint32, on bool, serverPol *compile.EndpointPolicy, hostRouting bool, hook hookKind) func() {
		return func() {
			for _, p := range []*testPod{server, client} {
				if hook == onFilter { // off tcx, if an earlier variant moved it there
					must(b, n.node.Do(func(ns.NetNS) error { return n.d.DetachEndpoint(ctx, p.ifindex) }))
				}
				attach(p)
				if hook == onTCX { // as the agent does once the node is quiet
					must(b, n.node.Do(func(ns.NetNS) error { _, err := n.d.MoveToTCX(ctx, p.ifindex); return err }))
				}
			}
			if serverPol != nil {
				must(b, n.d.SyncEndpointPolicy(ctx, server.ifindex, serverPol))
			}
			must(b, n.d.SetEventRate(ctx, rate))
			must(b, n.d.SetFlowEvents(ctx, on))
			must(b, n.d.SetHostRouting(ctx, hostRouting))
		}
	}
	variants := []variant{
		{"none", func() {
			for _, p := range []*testPod{server, client} {
				must(b, n.node.Do(func(ns.NetNS) error { return n.d.DetachEndpoint(ctx, p.ifindex) }))
			}
		}},
		{"prog", attached(0, true, nil, false, onTCX)},
		{"prog+1000rules", attached(0, true, rules1000, false, onTCX)},
		{"prog+1000rules+filters", attached(0, true, rules1000, false, onFilter)},
		{"prog+1000rules+host-routing", attached(0, true, rules1000, true, onTCX)},
		{"prog+events-off", attached(0, false, nil, false, onTCX)},
		{"prog+events-all", attached(10_000_000, true, nil, false, onTCX)},
	}
	// FLATNET_BENCH_ROTATE=k starts the variants at the k-th (the script passes the
	// round number) so that no variant always runs first or right after another.
	if k, err := strconv.Atoi(os.Getenv("FLATNET_BENCH_ROTATE")); err == nil && k > 0 {
		k %= len(variants)
		variants = append(variants[k:], variants[:k]...)
	}
	addr := unix.SockaddrInet4{Port: benchPort, Addr: server.ip.As4()}
	for _, test := range []struct {
		name string
		run  func(b *testing.B) error
	}{
		{"CRR", func(b *testing.B) error { return client.inNetns(func() error { return crr(b, &addr) }) }},
		{"RR", func(b *testing.B) error { return client.inNetns(func() error { return rr(b, &addr) }) }},
	} {
		for _, v := range variants {
			b.Run(fmt.Sprintf("test=%s/dp=%s", test.name, v.name), func(b *testing.B) {
				v.set()
				// Let the reader catch up with the previous variant's events.
				time.Sleep(50 * time.Millisecond)
				ev0 := events.Load()
				lost0, err := n.d.EventsLost(ctx)
				must(b, err)
				cpu0 := processCPU(b)
				progNs0, runs0 := n.progStats(b)
				b.ResetTimer()
				if err := test.run(b); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				cpu := processCPU(b) - cpu0
				progNs, runs := n.progStats(b)
				progNs, runs = progNs-progNs0, runs-runs0
				time.Sleep(50 * time.Millisecond)
				lost1, err := n.d.EventsLost(ctx)
				must(b, err)
				b.ReportMetric(float64(events.Load()-ev0)/float64(b.N), "events/op")
				b.ReportMetric(float64(lost1-lost0)/float64(b.N), "lost/op")
				b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
				b.ReportMetric(float64(progNs.Nanoseconds())/float64(b.N), "prog-ns/op")
				if runs > 0 {
					b.ReportMetric(float64(progNs.Nanoseconds())/float64(runs), "ns/prog-run")
				}
			})
		}
	}
}

// benchPort is where the benchmarks' server answers.
const benchPort = 5001

// newBenchNode is a node with the two pods the netns benchmarks run between: client,
// and server answering every byte on benchPort (serveBench).
func newBenchNode(b *testing.B) (n *testNode, server, client *testPod) {
	n = newTestNode(b)
	server, client = n.addServerClient()
	server.serveBench(b, benchPort)
	return n, server, client
}

// enableRunTimeStats has the kernel count the programs' run time and runs until the
// benchmark ends.
func enableRunTimeStats(b *testing.B) {
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	must(b, err)
	b.Cleanup(func() { stats.Close() })
}

// rulesPolicy enforces ingress with rules other ingress rules (each another identity
// and port) and the one that allows client on port.
func rulesPolicy(client identity.ID, port uint16, rules int) *compile.EndpointPolicy {
	pol := &compile.EndpointPolicy{Enforce: [2]bool{true, false}, Entries: map[compile.Key]compile.Verdict{}}
	for i := 0; i < rules; i++ {
		pol.Entries[compile.Key{Direction: policy.Ingress, Identity: identity.ID(100000 + i), Protocol: policy.ProtoTCP,
			Port: uint16(1024 + i), PortPrefixLen: 16}] = compile.Verdict{RuleID: compile.RuleID(i + 2)}
	}
	pol.Entries[compile.Key{Direction: policy.Ingress, Identity: client, Protocol: policy.ProtoTCP, Port: port,
		PortPrefixLen: 16}] = compile.Verdict{RuleID: 1}
	return pol
}

// processCPU is the CPU time (user + system) the test process has used: the client,
// the server, the flow reader, and the programs, which run in the softirqs of the
// sockets' system calls. Less sensitive to a busy machine than wall time (with tick
// accounting, softirq time is charged to whoever runs when the tick comes).
func processCPU(t testing.TB) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// progStats sums the run time and runs of the tcx programs (both directions).
func (n *testNode) progStats(t testing.TB) (time.Duration, uint64) {
	var total time.Duration
	var runs uint64
	for _, p := range []*ebpf.Program{n.d.objs.FromPod, n.d.objs.ToPod} {
		s, err := p.Stats()
		if err != nil {
			t.Fatal(err)
		}
		total += s.Runtime
		runs += s.RunCount
	}
	return total, runs
}

// inNetns runs fn on a thread in the pod's netns: every socket fn opens is the pod's.
func (p *testPod) inNetns(fn func() error) error {
	return p.netns.Do(func(ns.NetNS) error { return fn() })
}

// crr opens b.N connections, each a 1-byte request and response, with blocking
// syscalls (no Go netpoller hand-offs in what is timed).
func crr(b *testing.B, to *unix.SockaddrInet4) error {
	buf := []byte{'x'}
	for i := 0; i < b.N; i++ {
		fd, err := benchSocket()
		if err != nil {
			return err
		}
		if err := connect(fd, to); err != nil {
			unix.Close(fd)
			return fmt.Errorf("connection %d: connect: %w", i, err)
		}
		if err := pingPong(fd, buf); err != nil {
			unix.Close(fd)
			return fmt.Errorf("connection %d: %w", i, err)
		}
		unix.Close(fd)
	}
	return nil
}

// rr makes b.N round trips on one connection.
func rr(b *testing.B, to *unix.SockaddrInet4) error {
	fd, err := benchSocket()
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := connect(fd, to); err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	buf := []byte{'x'}
	for i := 0; i < b.N; i++ {
		if err := pingPong(fd, buf); err != nil {
			return fmt.Errorf("round trip %d: %w", i, err)
		}
	}
	return nil
}

func benchSocket() (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	tv := unix.NsecToTimeval(dialTimeout.Nanoseconds())
	for _, o := range []int{unix.SO_RCVTIMEO, unix.SO_SNDTIMEO} { // a lost packet fails the op, never hangs it
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, o, &tv); err != nil {
			unix.Close(fd)
			return -1, err
		}
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// connect connects a blocking socket. A socket with a timeout is not restarted after
// a signal (the Go runtime's preemption signals): the connection then goes on in the
// background, and this waits for it.
func connect(fd int, to *unix.SockaddrInet4) error {
	err := unix.Connect(fd, to)
	if err != unix.EINTR {
		return err
	}
	for {
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		n, err := unix.Poll(pfd, int(dialTimeout.Milliseconds()))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return unix.ETIMEDOUT
		}
		break
	}
	if soerr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR); err != nil || soerr != 0 {
		if err == nil {
			err = unix.Errno(soerr)
		}
		return err
	}
	return nil
}

func pingPong(fd int, buf []byte) error {
	if _, err := retryEINTR(func() (int, error) { return unix.Write(fd, buf) }); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	n, err := retryEINTR(func() (int, error) { return unix.Read(fd, buf) })
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if n != 1 {
		return fmt.Errorf("read %d bytes, want 1", n)
	}
	return nil
}

// retryEINTR repeats a read or write a signal interrupted (before any byte moved).
func retryEINTR(op func() (int, error)) (int, error) {
	for {
		n, err := op()
		if err != unix.EINTR {
			return n, err
		}
	}
}

// serveBench answers every byte it reads with one byte, on every connection, until
// the peer closes (so the client closes first, as in netperf's TCP_CRR).
func (p *testPod) serveBench(t testing.TB, port int) {
	p.serve(t, port, func(c net.Conn) {
		r := bufio.NewReader(c)
		buf := make([]byte, 1)
		for {
			if _, err := io.ReadFull(r, buf); err != nil {
				return
			}
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	})
}
