package bpf

import (
	"context"
	"encoding/binary"
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/flatnet/flatnet/dataplane/compile"
	"github.com/flatnet/flatnet/internal/testenv"
)

// loadTest mounts a private bpffs and loads the datapath into it.
func loadTest(t testing.TB) *Datapath {
	t.Helper()
	testenv.RequireRoot(t)
	mnt := mountBPFFS(t)
	d, err := Load(context.Background(), filepath.Join(mnt, "flatnet"))
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func mountBPFFS(t testing.TB) string {
	t.Helper()
	mnt := t.TempDir()
	if err := unix.Mount("bpf", mnt, "bpf", 0, ""); err != nil {
		t.Fatalf("mounting bpffs on %s: %v", mnt, err)
	}
	t.Cleanup(func() { _ = unix.Unmount(mnt, unix.MNT_DETACH) })
	return mnt
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
