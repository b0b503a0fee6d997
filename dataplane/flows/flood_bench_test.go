package flows_test

import (
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/flatnet/flatnet/dataplane/bpf"
	"github.com/flatnet/flatnet/dataplane/enforce"
	"github.com/flatnet/flatnet/dataplane/flows"
	"github.com/flatnet/flatnet/dataplane/hubble/observer"
)

// BenchmarkFlowEventFlood measures how many flow events per second one agent takes in
// (issue #6): a client pod under egress default deny floods SYNs, each to a new source
// port, out of its veth (AF_PACKET, one sender per CPU); every SYN is dropped by the
// client's from_pod program, which emits a drop event or counts it lost (token bucket
// or full ring). The agent's real pipeline (bpf.FlowReader -> Enricher -> Store, as
// flows.Run) drains the ring meanwhile. Variants: rate=default (2000 events/s per
// CPU) and rate=raised (10^7 per CPU: only the ring and the reader limit). Metrics:
// events/s received by the agent over the flood and its drain, lost/s counted by the
// datapath, sent/s the flood's packet rate; nothing is asserted about them.
func BenchmarkFlowEventFlood(b *testing.B) {
	f := newFloodNode(b)
	ctx := context.Background()
	for _, v := range []struct {
		name string
		rate uint32
	}{{"default", 0}, {"raised", 10_000_000}} {
		b.Run("rate="+v.name, func(b *testing.B) {
			must(b, f.enf.Datapath().SetEventRate(ctx, v.rate))
			time.Sleep(100 * time.Millisecond) // the reader drains what came before
			got0, lost0 := f.events.Load(), f.lost(b)
			start := time.Now()
			b.ResetTimer()
			f.flood(b, b.N)
			b.StopTimer()
			sent := time.Since(start)
			// Drain: until every SYN is accounted for, or nothing moved for 300 ms.
			last, lastMove := uint64(0), time.Now()
			for time.Since(lastMove) < 300*time.Millisecond {
				n := f.events.Load() - got0 + f.lost(b) - lost0
				if n >= uint64(b.N) {
					break
				}
				if n != last {
					last, lastMove = n, time.Now()
				}
				time.Sleep(10 * time.Millisecond)
			}
			elapsed := time.Duration(f.lastEvent.Load()) - time.Duration(start.UnixNano())
			if elapsed < sent {
				elapsed = sent
			}
			got, lost := f.events.Load()-got0, f.lost(b)-lost0
			b.ReportMetric(float64(got)/elapsed.Seconds(), "events/s")
			b.ReportMetric(float64(lost)/elapsed.Seconds(), "lost/s")
			b.ReportMetric(float64(b.N)/sent.Seconds(), "sent/s")
			b.ReportMetric(100*float64(got+lost)/float64(b.N), "accounted-%")
		})
	}
}

type floodNode struct {
	enf       *enforce.Enforcer
	obs       *observer.Observer // Hubble's Observer over the agent's store, as the agent serves it
	events    atomic.Uint64      // read by the agent's pipeline
	lastEvent atomic.Int64       // unix ns of the last one
	fd        int                // AF_PACKET socket on the client's eth0
	frame     []byte             // a SYN from the client to the server
}

func (f *floodNode) lost(b *testing.B) uint64 {
	n, err := f.enf.Datapath().EventsLost(context.Background())
	must(b, err)
	return n
}

// flood sends n SYNs, each from another source port, split over one sender per CPU.
func (f *floodNode) flood(b *testing.B, n int) {
	senders := runtime.NumCPU()
	var wg sync.WaitGroup
	var failed atomic.Value
	for s := 0; s < senders; s++ {
		count := n / senders
		if s == 0 {
			count += n % senders
		}
		wg.Add(1)
		go func(s, count int) {
			defer wg.Done()
			frame := append([]byte(nil), f.frame...)
			tcp := frame[14+20:]
			for i := 0; i < count; i++ {
				binary.BigEndian.PutUint16(tcp[0:], uint16(1024+(s*count+i)%64000))
				if _, err := unix.Write(f.fd, frame); err != nil {
					if err == unix.ENOBUFS || err == unix.EAGAIN {
						i-- // the veth's queue is full: try again
						runtime.Gosched()
						continue
					}
					failed.Store(err)
					return
				}
			}
		}(s, count)
	}
	wg.Wait()
	if err, ok := failed.Load().(error); ok {
		b.Fatalf("sending SYNs: %v", err)
	}
}

const floodDefaultDeny = `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: default-deny-all, namespace: default}
spec:
  endpointSelector: {}
  ingress:
  - {}
  egress:
  - {}
`

// newFloodNode builds a policyNode with both pods under default deny both ways, and
// the agent's flow pipeline reading its events.
func newFloodNode(b testing.TB) *floodNode {
	ctx := context.Background()
	pn := newPolicyNode(ctx, b, floodDefaultDeny)
	node, clientNS, serverIP, clientIP := pn.node, pn.clientNS, pn.serverIP, pn.clientIP
	f := &floodNode{enf: pn.enf}

	// The agent's pipeline, counting what it takes in.
	rd, err := f.enf.Datapath().NewFlowReader()
	must(b, err)
	en, err := flows.NewEnricher("self", f.enf.Snapshots())
	must(b, err)
	store := flows.NewStore(flows.DefaultCapacity)
	f.obs = observer.New(store, observer.Config{NodeName: "self"})
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- flows.Run(runCtx, &countingReader{rd: rd, f: f}, en, store, f.obs.Observe) }()
	b.Cleanup(func() { stop(); <-done; rd.Close() })

	// The flood's socket: raw frames out of the client's eth0 to the host veth's MAC.
	var hostMAC net.HardwareAddr
	must(b, node.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName("fcli")
		if err == nil {
			hostMAC = l.Attrs().HardwareAddr
		}
		return err
	}))
	must(b, clientNS.Do(func(ns.NetNS) error {
		eth, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		f.fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0) // send only
		if err != nil {
			return err
		}
		f.frame = synFrame(hostMAC, eth.Attrs().HardwareAddr, clientIP, serverIP, 80)
		return unix.Bind(f.fd, &unix.SockaddrLinklayer{Ifindex: eth.Attrs().Index, Protocol: htons(unix.ETH_P_IP)})
	}))
	b.Cleanup(func() { unix.Close(f.fd) })
	return f
}

type countingReader struct {
	rd *bpf.FlowReader
	f  *floodNode
}

func (c *countingReader) Read(ctx context.Context) (bpf.FlowEvent, error) {
	ev, err := c.rd.Read(ctx)
	if err == nil {
		c.f.events.Add(1)
		c.f.lastEvent.Store(time.Now().UnixNano())
	}
	return ev, err
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// synFrame is an Ethernet frame carrying a TCP SYN (IPv4 header checksum set; the
// TCP checksum is not: the datapath drops the frame before anyone checks it).
func synFrame(dst, src net.HardwareAddr, from, to netip.Addr, port uint16) []byte {
	fr := make([]byte, 14+20+20)
	copy(fr[0:], dst)
	copy(fr[6:], src)
	binary.BigEndian.PutUint16(fr[12:], unix.ETH_P_IP)
	ip := fr[14:34]
	ip[0], ip[8], ip[9] = 0x45, 64, unix.IPPROTO_TCP
	binary.BigEndian.PutUint16(ip[2:], 40)
	s, d := from.As4(), to.As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
	tcp := fr[34:]
	binary.BigEndian.PutUint16(tcp[2:], port)
	binary.BigEndian.PutUint32(tcp[4:], 1)
	tcp[12], tcp[13] = 5<<4, 0x02 // SYN
	binary.BigEndian.PutUint16(tcp[14:], 64240)
	return fr
}
