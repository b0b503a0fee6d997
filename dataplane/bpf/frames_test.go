package bpf

import (
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
)

// Raw frames of the kinds a pod may try to send besides plain IPv4.

var (
	podMAC  = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x10}
	hostMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x01}
)

func ethHeader(dst, src net.HardwareAddr, ethertype uint16) []byte {
	b := make([]byte, 14)
	copy(b[0:], dst)
	copy(b[6:], src)
	binary.BigEndian.PutUint16(b[12:], ethertype)
	return b
}

// arpFrame is an Ethernet/IPv4 ARP packet (op 1 request, 2 reply) from src.
func arpFrame(op uint16, src net.HardwareAddr, sha net.HardwareAddr, spa, tpa netip.Addr) []byte {
	b := ethHeader(net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, src, 0x0806)
	a := make([]byte, 28)
	binary.BigEndian.PutUint16(a[0:], 1)      // Ethernet
	binary.BigEndian.PutUint16(a[2:], 0x0800) // IPv4
	a[4], a[5] = 6, 4
	binary.BigEndian.PutUint16(a[6:], op)
	copy(a[8:], sha)
	s, t := spa.As4(), tpa.As4()
	copy(a[14:], s[:])
	copy(a[24:], t[:])
	return pad(append(b, a...))
}

// ipv6Frame is an IPv6 UDP packet (link-local source) to dst.
func ipv6Frame(src, dst net.HardwareAddr) []byte {
	b := ethHeader(dst, src, 0x86dd)
	ip := make([]byte, 40+8)
	ip[0] = 0x60
	binary.BigEndian.PutUint16(ip[4:], 8)
	ip[6] = 17
	ip[7] = 64
	copy(ip[8:], netip.MustParseAddr("fe80::10").AsSlice())
	copy(ip[24:], netip.MustParseAddr("fd00::1").AsSlice())
	binary.BigEndian.PutUint16(ip[40:], 5000)
	binary.BigEndian.PutUint16(ip[42:], 53)
	binary.BigEndian.PutUint16(ip[44:], 8)
	return pad(append(b, ip...))
}

// ipv4Packet is an IPv4 UDP packet with a valid header checksum (no UDP checksum).
func ipv4Packet(src, dst netip.Addr, sport, dport uint16, payload []byte) []byte {
	ip := make([]byte, 20+8, 28+len(payload))
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(28+len(payload)))
	ip[8] = 64
	ip[9] = 17
	s, d := src.As4(), dst.As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	binary.BigEndian.PutUint16(ip[10:], ipChecksum(ip[:20]))
	binary.BigEndian.PutUint16(ip[20:], sport)
	binary.BigEndian.PutUint16(ip[22:], dport)
	binary.BigEndian.PutUint16(ip[24:], uint16(8+len(payload)))
	return append(ip, payload...)
}

func ipChecksum(h []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(h); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(h[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// taggedFrame carries payload of ethertype inner behind VLAN tags (VID 0: a priority
// tag, which the kernel strips and then processes the frame as untagged), outermost
// first: tpids {0x8100} is 802.1Q, {0x88a8, 0x8100} QinQ.
func taggedFrame(src, dst net.HardwareAddr, tpids []uint16, inner uint16, payload []byte) []byte {
	b := ethHeader(dst, src, tpids[0])[:12]
	for _, tpid := range tpids {
		b = binary.BigEndian.AppendUint16(b, tpid)
		b = binary.BigEndian.AppendUint16(b, 0) // PCP 0, VID 0
	}
	b = binary.BigEndian.AppendUint16(b, inner)
	return pad(append(b, payload...))
}

func pad(b []byte) []byte {
	for len(b) < 64 {
		b = append(b, 0)
	}
	return b
}

// runFrame sends a raw frame through the program for dir of the test endpoint.
func runFrame(t testing.TB, d *Datapath, dir int, frame []byte) uint32 {
	t.Helper()
	prog := d.objs.ToPod
	if dir == dirEgress {
		prog = d.objs.FromPod
	}
	ret, err := prog.Run(&ebpf.RunOptions{Data: frame, Context: skbCtx{Ifindex: testIfindex}})
	if err != nil {
		t.Fatalf("BPF_PROG_TEST_RUN: %v", err)
	}
	return ret
}

// countsOf sums the datapath's counters of one interface and direction by code.
func countsOf(t testing.TB, d *Datapath, ifindex int, dir int) map[Code]uint64 {
	t.Helper()
	cs, err := d.Counters(context.Background())
	must(t, err)
	got := map[Code]uint64{}
	for _, c := range cs {
		if c.IfIndex == ifindex && int(c.Direction) == dir {
			got[c.Code] += c.Packets
		}
	}
	return got
}

// TestNonIPv4FramesFromPod: a pod may send IPv4 and ARP about itself, nothing else;
// the host may send it IPv4 and ARP. Every other frame is dropped under a reason.
func TestNonIPv4FramesFromPod(t *testing.T) {
	d := loadTest(t)
	newCluster(t, d) // the server endpoint, no policy selecting it: everything IPv4 passes
	udp := ipv4Packet(serverIP, clientIP, 5000, 53, []byte("x"))
	for _, c := range []struct {
		what  string
		dir   int
		frame []byte
		want  Code
	}{
		{"ARP request for the gateway", dirEgress, arpFrame(1, podMAC, podMAC, serverIP, gateway4), ForwardARP},
		{"ARP reply about itself", dirEgress, arpFrame(2, podMAC, podMAC, serverIP, gateway4), ForwardARP},
		{"ARP reply claiming another pod's address", dirEgress, arpFrame(2, podMAC, podMAC, clientIP, gateway4), DropInvalidSource},
		{"ARP request claiming the gateway's address", dirEgress, arpFrame(1, podMAC, podMAC, gateway4, serverIP), DropInvalidSource},
		{"RARP-like opcode", dirEgress, arpFrame(3, podMAC, podMAC, serverIP, gateway4), DropMalformed},
		{"IPv6", dirEgress, ipv6Frame(podMAC, hostMAC), DropUnknownL3},
		{"802.1Q-tagged IPv4", dirEgress, taggedFrame(podMAC, hostMAC, []uint16{0x8100}, 0x0800, udp), DropUnsupportedL2},
		{"QinQ-tagged IPv4", dirEgress, taggedFrame(podMAC, hostMAC, []uint16{0x88a8, 0x8100}, 0x0800, udp), DropUnsupportedL2},
		{"unknown ethertype", dirEgress, pad(ethHeader(hostMAC, podMAC, 0x88b5)), DropUnknownL3},
		{"802.3 length frame", dirEgress, pad(ethHeader(hostMAC, podMAC, 0x0040)), DropUnsupportedL2},
		{"ARP from the host to the pod", dirIngress, arpFrame(1, hostMAC, hostMAC, nodeIP, serverIP), ForwardARP},
		{"IPv6 from the host to the pod", dirIngress, ipv6Frame(hostMAC, podMAC), DropUnknownL3},
	} {
		before := countsOf(t, d, testIfindex, c.dir)
		ret := runFrame(t, d, c.dir, c.frame)
		after := countsOf(t, d, testIfindex, c.dir)
		wantRet := uint32(tcxDrop)
		if !c.want.Dropped() {
			wantRet = tcxNext
		}
		if ret != wantRet || after[c.want] != before[c.want]+1 {
			t.Errorf("%s: verdict %#x, counters %v -> %v; want verdict %#x counted as %q", c.what, ret, before, after, wantRet, c.want)
		}
	}
}

// TestARPWithForeignMACDropped: once the pod's MAC is known (the CNI plugin reports
// it), its ARP must carry it, as sender and as Ethernet source.
func TestARPWithForeignMACDropped(t *testing.T) {
	d := loadTest(t)
	newCluster(t, d)
	var le datapathLocalEp
	le.Ifindex = testIfindex
	copy(le.PodMac[:], podMAC)
	copy(le.HostMac[:], hostMAC)
	must(t, d.objs.FnLocalIps.Put(addrBE(serverIP), &le))
	other := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x99}
	for _, c := range []struct {
		what  string
		frame []byte
		want  Code
	}{
		{"own MAC", arpFrame(1, podMAC, podMAC, serverIP, gateway4), ForwardARP},
		{"foreign sender MAC", arpFrame(2, podMAC, other, serverIP, gateway4), DropInvalidSrcMAC},
		{"foreign Ethernet source", arpFrame(2, other, podMAC, serverIP, gateway4), DropInvalidSrcMAC},
	} {
		before := countsOf(t, d, testIfindex, dirEgress)
		runFrame(t, d, dirEgress, c.frame)
		after := countsOf(t, d, testIfindex, dirEgress)
		if after[c.want] != before[c.want]+1 {
			t.Errorf("%s: counters %v -> %v; want one more %q", c.what, before, after, c.want)
		}
	}
}

var gateway4 = netip.MustParseAddr("169.254.1.1")

// TestDropEventsOfFramesNameThePod: the flow event of a dropped frame names the pod
// (its address on the pod's side, its identity) and, for ARP, the claimed addresses.
func TestDropEventsOfFramesNameThePod(t *testing.T) {
	d := loadTest(t)
	cl := newCluster(t, d)
	rd, err := d.NewFlowReader()
	must(t, err)
	defer rd.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, c := range []struct {
		what     string
		dir      int
		frame    []byte
		src, dst netip.Addr
		code     Code
	}{
		{"IPv6 from the pod", dirEgress, ipv6Frame(podMAC, hostMAC), serverIP, netip.IPv4Unspecified(), DropUnknownL3},
		{"IPv6 into the pod", dirIngress, ipv6Frame(hostMAC, podMAC), netip.IPv4Unspecified(), serverIP, DropUnknownL3},
		{"spoofed ARP", dirEgress, arpFrame(2, podMAC, podMAC, clientIP, gateway4), clientIP, gateway4, DropInvalidSource},
	} {
		runFrame(t, d, c.dir, c.frame)
		ev, err := rd.Read(ctx)
		must(t, err)
		if ev.Code != c.code || ev.Src != c.src || ev.Dst != c.dst || ev.LocalIdentity != cl.id || int(ev.Direction) != c.dir {
			t.Errorf("%s: event %+v, want %q %s -> %s of identity %v", c.what, ev, c.code, c.src, c.dst, cl.id)
		}
	}
}
