package bpf

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/flatnet/flatnet/dataplane/compile"
	"github.com/flatnet/flatnet/dataplane/identity"
	"github.com/flatnet/flatnet/internal/testenv"
)

// loadTest mounts a private bpffs and loads the datapath into it.
func loadTest(t testing.TB) *Datapath {
	t.Helper()
	testenv.RequireRoot(t)
	mnt := testenv.BPFFS(t)
	d, err := Load(context.Background(), filepath.Join(mnt, "flatnet"))
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// pinForeignMap pins in a new pin directory, under spec's name, a map of spec's
// layout (another version's) holding what fill puts in it, as that version would
// have left it; it returns the directory.
func pinForeignMap(t *testing.T, spec *ebpf.MapSpec, fill func(*ebpf.Map)) string {
	t.Helper()
	pinDir := filepath.Join(testenv.BPFFS(t), "flatnet")
	must(t, os.MkdirAll(pinDir, 0o700))
	m, err := ebpf.NewMap(spec)
	must(t, err)
	defer m.Close()
	fill(m)
	must(t, m.Pin(filepath.Join(pinDir, spec.Name)))
	return pinDir
}

// pkt describes a crafted IPv4 packet.
type pkt struct {
	src, dst     netip.Addr
	proto        uint8
	sport, dport uint16
	tcpFlags     uint8
}

const (
	tcpSYN = 0x02
	tcpACK = 0x10
	tcpFIN = 0x01
)

func (p pkt) bytes() []byte {
	b := make([]byte, 14, 64)
	binary.BigEndian.PutUint16(b[12:], 0x0800)
	ip := make([]byte, 20)
	ip[0] = 0x45
	ip[8] = 64
	ip[9] = p.proto
	s, d := p.src.As4(), p.dst.As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	var l4 []byte
	switch p.proto {
	case 6:
		l4 = make([]byte, 20)
		l4[12] = 5 << 4
		l4[13] = p.tcpFlags
	case 17, 132:
		l4 = make([]byte, 8)
	case 1:
		l4 = make([]byte, 8)
		l4[0] = 8 // echo request
		if p.tcpFlags == icmpEchoReplyFlag {
			l4[0] = 0
		}
		binary.BigEndian.PutUint16(l4[4:], p.sport)
	}
	if p.proto != 1 {
		binary.BigEndian.PutUint16(l4[0:], p.sport)
		binary.BigEndian.PutUint16(l4[2:], p.dport)
	}
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(l4)))
	b = append(b, ip...)
	b = append(b, l4...)
	for len(b) < 64 { // BPF_PROG_TEST_RUN wants at least an Ethernet minimum
		b = append(b, 0)
	}
	return b
}

// icmpEchoReplyFlag in pkt.tcpFlags makes an ICMP packet an echo reply.
const icmpEchoReplyFlag = 0xff

func icmpReply(p pkt) pkt {
	p.tcpFlags = icmpEchoReplyFlag
	return p
}

// reply is the packet coming back on the same connection.
func (p pkt) reply(flags uint8) pkt {
	return pkt{src: p.dst, dst: p.src, proto: p.proto, sport: p.dport, dport: p.sport, tcpFlags: flags}
}

// skbCtx is the head of struct __sk_buff up to ifindex: test runs take the ifindex
// from it (1 = loopback, the default device of BPF_PROG_TEST_RUN).
type skbCtx struct {
	Len, PktType, Mark, QueueMapping, Protocol, VlanPresent, VlanTCI, VlanProto, Priority, IngressIfindex, Ifindex uint32
}

const testIfindex = 1

// verdicts returned by the programs
const (
	tcxNext = 0xffffffff // -1
	tcxDrop = 2
)

// run sends p through the program for direction dir of the test endpoint.
func run(t testing.TB, d *Datapath, dir int, p pkt) uint32 {
	t.Helper()
	prog := d.objs.ToPod
	if dir == dirEgress {
		prog = d.objs.FromPod
	}
	ret, err := prog.Run(&ebpf.RunOptions{Data: p.bytes(), Context: skbCtx{Ifindex: testIfindex}})
	if err != nil {
		t.Fatalf("BPF_PROG_TEST_RUN: %v", err)
	}
	return ret
}

// setEndpoint writes the test endpoint's identity and policy (no link: test runs call
// the programs directly).
func setEndpoint(t testing.TB, d *Datapath, ip netip.Addr, id uint32, pol *compile.EndpointPolicy) {
	t.Helper()
	if err := d.SyncEndpointPolicy(context.Background(), testIfindex, pol); err != nil {
		t.Fatal(err)
	}
	if err := d.ensureEstTable(testIfindex); err != nil {
		t.Fatal(err)
	}
	info := datapathEndpointInfo{Addr: addrBE(ip), Identity: id}
	if err := d.objs.FnEndpoints.Put(uint32(testIfindex), &info); err != nil {
		t.Fatal(err)
	}
}

// probeResult is what a probe loop saw: how many tries, how many went the wrong way.
type probeResult struct{ tries, wrong int }

// probes are the two loops of startProbes, until halted.
type probes struct {
	stop            chan struct{}
	allowed, denied <-chan probeResult
}

// startProbes connects client -> server:port (which must work) and
// other -> server:port (which must not) over and over until the probes are halted.
// A window while the datapath changes shows as a wrong try.
func startProbes(client, other, server *testPod, port int) *probes {
	stop := make(chan struct{})
	probe := func(try func() bool) <-chan probeResult {
		done := make(chan probeResult, 1)
		go func() {
			var r probeResult
			for {
				select {
				case <-stop:
					done <- r
					return
				default:
				}
				r.tries++
				if !try() {
					r.wrong++
				}
			}
		}()
		return done
	}
	allowed := probe(func() bool { return client.tcpWorks(server.ip, port) == nil })
	denied := probe(func() bool {
		c, err := other.dialTimeout(server.ip, port, 150*time.Millisecond)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	return &probes{stop: stop, allowed: allowed, denied: denied}
}

// halt stops the loops and returns what each saw.
func (p *probes) halt() (allowed, denied probeResult) {
	close(p.stop)
	return <-p.allowed, <-p.denied
}

// haltAndCheck halts the probes and fails t unless each loop made at least its
// minimum of tries and none went the wrong way; across names what happened meanwhile.
func (p *probes) haltAndCheck(t testing.TB, across string, minAllowed, minDenied int) {
	t.Helper()
	a, d := p.halt()
	t.Logf("%d allowed and %d denied connection attempts across %s", a.tries, d.tries, across)
	if a.tries < minAllowed || d.tries < minDenied {
		t.Fatalf("too few attempts across %s to mean anything: allowed %+v denied %+v", across, a, d)
	}
	if a.wrong != 0 || d.wrong != 0 {
		t.Errorf("window across %s: %d allowed connections failed, %d denied ones passed", across, a.wrong, d.wrong)
	}
}

// restartAgent makes d the node's datapath as the agent does when it starts over
// pinned maps: the identities d stored seed a fresh compiler, which is given the
// namespaces, the node and every pod again. The caller replays its policies and
// re-attaches the endpoints (reattach). It returns the fresh compiler's allocator.
func (n *testNode) restartAgent(t testing.TB, d *Datapath) *identity.Allocator {
	t.Helper()
	stored, err := d.Identities(context.Background())
	must(t, err)
	alloc := identity.NewAllocator()
	for s, id := range stored {
		alloc.Remember(s, id)
	}
	n.d.Close()
	n.d, n.attach = d, nil
	n.newCompiler(alloc)
	return alloc
}

// reattach attaches p's endpoint again with the compiler's current policy for it.
func (n *testNode) reattach(t testing.TB, p *testPod) {
	t.Helper()
	id, _ := n.c.IdentityOf(p.namespace, p.name)
	must(t, n.node.Do(func(ns.NetNS) error {
		return n.d.AttachEndpoint(context.Background(), Endpoint{IfIndex: p.ifindex, IP: p.ip, Identity: id, MAC: p.mac},
			n.c.EndpointPolicy(p.namespace, p.name))
	}))
}

// serveUDPEcho echoes datagrams of up to size bytes on port in the pod until the
// test ends.
func (p *testPod) serveUDPEcho(t testing.TB, port, size int) {
	var pc net.PacketConn
	must(t, p.netns.Do(func(ns.NetNS) error {
		var err error
		pc, err = net.ListenPacket("udp4", netip.AddrPortFrom(p.ip, uint16(port)).String())
		return err
	}))
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, size)
		for {
			n, addr, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(buf[:n], addr)
		}
	}()
}

// dnatTCP has the node DNAT TCP to dst:port onto backend ("ip:port"), as kube-proxy
// does for a Service.
func (n *testNode) dnatTCP(dst netip.Addr, port int, backend string) {
	n.t.Helper()
	n.iptables("-t", "nat", "-A", "PREROUTING", "-d", dst.String(), "-p", "tcp", "--dport", strconv.Itoa(port), "-j", "DNAT", "--to-destination", backend)
}

// deleteWhere deletes the keys of m that match (tests: emptying maps).
func deleteWhere[K any](m *ebpf.Map, match func(*K) bool) error {
	var victims []K
	var cur, next K
	var prev any // nil: start from the first key
	for {
		err := m.NextKey(prev, &next)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			break
		}
		if err != nil {
			return err
		}
		if match(&next) {
			victims = append(victims, next)
		}
		cur = next
		prev = &cur
	}
	for i := range victims {
		if err := m.Delete(&victims[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return err
		}
	}
	return nil
}
