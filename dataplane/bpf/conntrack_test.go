package bpf

import (
	"context"
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"

	"github.com/flatnet/flatnet/dataplane/compile"
	"github.com/flatnet/flatnet/internal/testenv"
)

// ctTestEntries is the shared table's size in the conntrack tests (the agent's
// --ct-entries): small, so a flood overflows it many times.
const ctTestEntries = 256

// floodUDP sends two datagrams to each of count destination ports of to, from one
// socket: count new flows, each used more than once (the kernel's LRU protects an
// entry used once since its last pass over it; flows of real traffic are used more).
func (p *testPod) floodUDP(t testing.TB, to netip.Addr, count int) {
	t.Helper()
	must(t, p.netns.Do(func(ns.NetNS) error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		for i := 0; i < count; i++ {
			port := 10000 + i%50000
			// Errors are expected: ICMP port unreachable and drops come back as errors.
			for j := 0; j < 2; j++ {
				_ = unix.Sendto(fd, []byte("x"), 0, &unix.SockaddrInet4{Port: port, Addr: to.As4()})
			}
		}
		return nil
	}))
}

// TestNetnsCTFloodKeepsOtherPodsConnections: a pod under ingress default deny holds
// an idle connection it opened to another pod; a third pod floods new UDP flows at
// that peer, eighty times what the shared table holds. The peer must still reach the
// pod on the connection afterwards (its packets into the pod pass only as replies,
// through conntrack). Fails on main (one LRU table for every connection: the flood
// evicts the idle one, and the peer's next packet is dropped as default deny).
func TestNetnsCTFloodKeepsOtherPodsConnections(t *testing.T) {
	n := newTestNodeWith(t, Options{CTEntries: ctTestEntries, CTEstablishedPerEndpoint: 64})
	b := n.addPod("default", "b", "10.224.1.10", map[string]string{"app": "b"})
	c := n.addPod("default", "c", "10.224.1.20", map[string]string{"app": "c"})
	a := n.addPod("default", "a", "10.224.1.30", map[string]string{"app": "a"})
	push := b.heldConn(t, c, 80)
	n.cnp("b-ingress-deny", `
  endpointSelector: {matchLabels: {app: b}}
  ingress: [{}]
`)
	wantWorks(t, "the peer writes on b's connection before the flood", push("before"))
	wantBlocked(t, "a new connection into b under default deny", c.tcpQuick(b.ip, 81))

	// Rounds from fresh sockets (new source ports): the kernel's LRU gives an entry
	// used recently a second chance, so one pass may miss it; an idle connection
	// meets many.
	for round := 0; round < 8; round++ {
		a.floodUDP(t, c.ip, 10*ctTestEntries)
	}

	wantWorks(t, "the peer writes on b's idle connection after a's flood", push("after"))
	n.serveTCP(t, 10250)
	wantWorks(t, "b opens a new connection after a's flood", b.tcpWorks(n.nodeIP, 10250))

	// The flood went through the shared table, many times over.
	if flood := countsOf(t, n.d, a.ifindex, dirEgress)[ForwardPolicy]; flood < 8*ctTestEntries {
		t.Errorf("%d new flows of the flooder allowed, want the flood's %d", flood, 80*ctTestEntries)
	}
	fill, err := n.d.MapFill(context.Background())
	must(t, err)
	for _, f := range fill {
		if f.Map == "ct" && (f.Entries > ctTestEntries || f.Capacity != ctTestEntries) {
			t.Errorf("shared connection table %+v, want at most %d entries", f, ctTestEntries)
		}
	}
}

// TestCTEstablishedTable: established connections move into the endpoint's own
// table (up to its size; the rest stay shared) and survive a flood of new ones
// through the shared table; a closing connection moves back out; expired ones are
// deleted by ExpireConnections and by the lookup that meets them.
func TestCTEstablishedTable(t *testing.T) {
	testenv.RequireRoot(t)
	d, err := LoadWith(context.Background(), filepath.Join(testenv.BPFFS(t), "flatnet"),
		Options{CTEntries: 64, CTEstablishedPerEndpoint: 16})
	must(t, err)
	t.Cleanup(func() { d.Close() })
	// Ingress default deny: packets into the pod pass only as replies.
	setEndpoint(t, d, serverIP, 300, &compile.EndpointPolicy{Enforce: [2]bool{true, false}})
	peer := netip.MustParseAddr("10.224.9.9")
	conn := func(i int) pkt { return tcp(serverIP, peer, uint16(1000+i), 80, tcpSYN) }
	for i := 0; i < 20; i++ {
		expect(t, d, "SYN out", dirEgress, conn(i), tcxAllowed())
		expect(t, d, "SYN-ACK in", dirIngress, conn(i).reply(tcpSYN|tcpACK), tcxAllowed())
	}
	est, err := d.estTable(testIfindex)
	must(t, err)
	defer est.Close()
	count := func() int {
		n, err := countKeys(est)
		must(t, err)
		return n
	}
	if got := count(); got != 16 {
		t.Fatalf("%d established connections in the endpoint's table, want its size 16", got)
	}
	for i := 0; i < 640; i++ {
		expect(t, d, "flood of new connections", dirEgress, tcp(serverIP, peer, uint16(20000+i), 443, tcpSYN), tcxAllowed())
	}
	for i := 0; i < 16; i++ {
		expect(t, d, "established connection after the flood", dirIngress, conn(i).reply(tcpACK), tcxAllowed())
	}

	expect(t, d, "FIN out", dirEgress, tcp(serverIP, peer, 1000, 80, tcpFIN|tcpACK), tcxAllowed())
	if got := count(); got != 15 {
		t.Errorf("%d entries after one connection closed, want 15 (the closing one back in the shared table)", got)
	}
	expect(t, d, "the FIN's answer, as a reply of the closing connection", dirIngress, conn(0).reply(tcpFIN|tcpACK), tcxAllowed())

	// Age two, as idle time would: the GC deletes one, a packet meets the other.
	k1 := datapathCtKey{Ifindex: testIfindex, PodAddr: addrBE(serverIP), PeerAddr: addrBE(peer), PodPort: 1001, PeerPort: 80, Proto: 6}
	k2 := k1
	k2.PodPort = 1002
	for _, k := range []datapathCtKey{k1, k2} {
		var v datapathCtVal
		must(t, est.Lookup(&k, &v))
		v.ExpiresNs = 1
		must(t, est.Put(&k, &v))
	}
	expect(t, d, "a packet into the pod on an expired connection", dirIngress, conn(2).reply(tcpACK), tcxDrop)
	st, err := d.ExpireConnections(context.Background())
	must(t, err)
	if st.Expired != 1 || st.Entries != 13 {
		t.Errorf("ExpireConnections: %+v, want 1 expired (the other deleted by the lookup) and 13 left", st)
	}
}

// BenchmarkNetnsCTFlood: a pod sending one UDP datagram per new flow to another pod of
// the node (each a new tracking entry on both pods), the flood of
// TestNetnsCTFloodKeepsOtherPodsConnections; ns/op is per new flow.
func BenchmarkNetnsCTFlood(b *testing.B) {
	n := newTestNode(b)
	c := n.addPod("default", "c", "10.224.1.20", map[string]string{"app": "c"})
	a := n.addPod("default", "a", "10.224.1.30", map[string]string{"app": "a"})
	must(b, a.netns.Do(func(ns.NetNS) error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer func() { unix.Close(fd) }()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			_ = unix.Sendto(fd, []byte("x"), 0, &unix.SockaddrInet4{Port: 1024 + i%64000, Addr: c.ip.As4()})
			if i%64000 == 63999 { // a fresh source port: new tuples again
				unix.Close(fd)
				if fd, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0); err != nil {
					return err
				}
			}
		}
		return nil
	}))
}
