package bpf

import (
	"encoding/binary"
	"net/netip"
	"testing"
)

// ipv4Frame is an Ethernet frame carrying an IPv4 packet of proto with the given
// identification, fragment field (flags and offset in 8-byte units) and L4 bytes.
func ipv4Frame(src, dst netip.Addr, proto uint8, id, frag uint16, l4 []byte) []byte {
	b := ethHeader(hostMAC, podMAC, 0x0800)
	ip := make([]byte, 20)
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(l4)))
	binary.BigEndian.PutUint16(ip[4:], id)
	binary.BigEndian.PutUint16(ip[6:], frag)
	ip[8] = 64
	ip[9] = proto
	s, d := src.As4(), dst.As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	binary.BigEndian.PutUint16(ip[10:], ipChecksum(ip))
	return pad(append(append(b, ip...), l4...))
}

const ipMF = 0x2000

// udpFragments is a UDP datagram in two fragments: the first with the UDP header
// and 16 bytes, the second with 16 more bytes at offset 24.
func udpFragments(src, dst netip.Addr, sport, dport, id uint16) (first, rest []byte) {
	l4 := make([]byte, 8+16)
	binary.BigEndian.PutUint16(l4[0:], sport)
	binary.BigEndian.PutUint16(l4[2:], dport)
	binary.BigEndian.PutUint16(l4[4:], 8+32)
	return ipv4Frame(src, dst, 17, id, ipMF, l4), ipv4Frame(src, dst, 17, id, 24/8, make([]byte, 16))
}

// icmpError is an ICMP error of type/code from src to dst reporting the packet p
// (its IP header and first 8 bytes, as routers quote it).
func icmpError(src, dst netip.Addr, typ, code uint8, p pkt) []byte {
	quoted := p.bytes()[14 : 14+20+8]
	msg := make([]byte, 8, 8+len(quoted))
	msg[0], msg[1] = typ, code
	if typ == 3 && code == 4 {
		binary.BigEndian.PutUint16(msg[6:], 1200) // next-hop MTU
	}
	msg = append(msg, quoted...)
	binary.BigEndian.PutUint16(msg[2:], ipChecksum(msg))
	return ipv4Frame(src, dst, 1, 1, 0, msg)
}

// TestFragmentsTakeFirstFragmentPorts: the fragments after the first carry no ports;
// they are judged with the first one's (on main they were judged as port 0, so a
// UDP datagram bigger than the MTU never got through a port rule).
func TestFragmentsTakeFirstFragmentPorts(t *testing.T) {
	d := loadTest(t)
	cl := newCluster(t, d)
	cl.cnp("dns", `
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "53", protocol: UDP}]}]
`)
	first, rest := udpFragments(clientIP, serverIP, 40000, 53, 101)
	if got := runFrame(t, d, dirIngress, first); got != tcxNext {
		t.Errorf("first fragment to an allowed port: verdict %#x, want it passed", got)
	}
	if got := runFrame(t, d, dirIngress, rest); got != tcxNext {
		t.Errorf("second fragment to an allowed port: verdict %#x, want it passed", got)
	}
	first, rest = udpFragments(clientIP, serverIP, 40001, 54, 102)
	if got := runFrame(t, d, dirIngress, first); got != tcxDrop {
		t.Errorf("first fragment to a denied port: verdict %#x, want it dropped", got)
	}
	if got := runFrame(t, d, dirIngress, rest); got != tcxDrop {
		t.Errorf("second fragment to a denied port: verdict %#x, want it dropped", got)
	}
	// The same datagram id from another endpoint's traffic names nothing here.
	_, orphan := udpFragments(clientIP, serverIP, 40002, 53, 103)
	before := countsOf(t, d, testIfindex, dirIngress)
	if got := runFrame(t, d, dirIngress, orphan); got != tcxDrop {
		t.Errorf("fragment without its first: verdict %#x, want it dropped", got)
	}
	if after := countsOf(t, d, testIfindex, dirIngress); after[DropFragNotFound] != before[DropFragNotFound]+1 {
		t.Errorf("fragment without its first: counters %v -> %v, want one more %q", before, after, DropFragNotFound)
	}
}

// TestICMPErrorsOfTrackedConnections: an ICMP error quoting a packet of a tracked
// connection passes in either direction, whoever sends it (a router on the path);
// one quoting no connection is judged by policy as before (dropped where enforced).
func TestICMPErrorsOfTrackedConnections(t *testing.T) {
	d := loadTest(t)
	cl := newCluster(t, d)
	cl.cnp("web-only", `
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
  egress: [{}]
`)
	router := netip.MustParseAddr("192.0.2.1")
	syn := tcp(clientIP, serverIP, 42000, 80, tcpSYN)
	expect(t, d, "client -> :80", dirIngress, syn, tcxNext)
	synAck := syn.reply(tcpSYN | tcpACK)
	for _, c := range []struct {
		what  string
		dir   int
		frame []byte
		want  uint32
	}{
		{"server's frag-needed about the client's segment", dirEgress, icmpError(serverIP, clientIP, 3, 4, syn), tcxNext},
		{"server's port unreachable about the client's segment", dirEgress, icmpError(serverIP, clientIP, 3, 3, syn), tcxNext},
		{"router's frag-needed about the server's reply", dirIngress, icmpError(router, serverIP, 3, 4, synAck), tcxNext},
		{"router's time exceeded about the server's reply", dirIngress, icmpError(router, serverIP, 11, 0, synAck), tcxNext},
		{"server's error about a segment of no connection", dirEgress, icmpError(serverIP, clientIP, 3, 4, tcp(clientIP, serverIP, 42001, 80, tcpACK)), tcxDrop},
		{"router's error about no connection", dirIngress, icmpError(router, serverIP, 3, 4, tcp(serverIP, clientIP, 80, 42999, tcpACK)), tcxDrop},
		{"error about the connection from a spoofed source", dirEgress, icmpError(otherIP, clientIP, 3, 4, syn), tcxDrop},
	} {
		before := countsOf(t, d, testIfindex, c.dir)
		got := runFrame(t, d, c.dir, c.frame)
		after := countsOf(t, d, testIfindex, c.dir)
		if got != c.want {
			t.Errorf("%s: verdict %#x, want %#x (counters %v -> %v)", c.what, got, c.want, before, after)
		}
		if c.want == tcxNext && after[ForwardRelated] != before[ForwardRelated]+1 {
			t.Errorf("%s: counters %v -> %v, want one more %q", c.what, before, after, ForwardRelated)
		}
	}
}
