package bpf

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/flatnet/flatnet/dataplane/compile"
	"github.com/flatnet/flatnet/dataplane/identity"
	"github.com/flatnet/flatnet/dataplane/policy"
)

// BenchmarkPacket measures the programs per packet (BPF_PROG_TEST_RUN with repeat)
// against policies of 0, 100 and 10,000 rules besides the one the packets hit: the
// cost must stay flat, as every lookup is a hash or LPM lookup with a fixed-size key.
// The number of probes depends on how many distinct port-prefix lengths the policy
// uses, not on how many rules it has: "ranges" cases use 8-port ranges (one more
// prefix length to probe) to show that cost.
func BenchmarkPacket(b *testing.B) {
	d := loadTest(b)
	ctx := context.Background()
	clientID := identity.ID(5000)
	must(b, d.UpsertIPIdentity(ctx, clientIP, clientID))
	for _, shape := range []struct {
		rules int
		width uint16 // ports per rule
	}{{0, 1}, {100, 1}, {10000, 1}, {0, 8}, {100, 8}, {10000, 8}} {
		rules := shape.rules
		pol := &compile.EndpointPolicy{Enforce: [2]bool{true, true}, Entries: map[compile.Key]compile.Verdict{}}
		if shape.width > 1 {
			// The range shape without extra rules: one range on an unrelated identity.
			pol.Entries[compile.Key{Direction: policy.Ingress, Identity: 9999, Protocol: policy.ProtoTCP, Port: 1024, PortPrefixLen: 13}] = compile.Verdict{RuleID: 2}
		}
		for i := 0; i < rules; i++ {
			// Each rule: another identity, TCP, one port or an aligned range.
			lo := uint16(1024 + (i*int(shape.width))%60000)
			for _, pp := range compile.PortPrefixes(lo, lo+shape.width-1) {
				pol.Entries[compile.Key{Direction: policy.Ingress, Identity: identity.ID(10000 + i), Protocol: policy.ProtoTCP,
					Port: pp.Port, PortPrefixLen: pp.Len}] = compile.Verdict{RuleID: compile.RuleID(i + 1)}
			}
		}
		// The rule the benchmark's packets hit: client identity, port 80.
		pol.Entries[compile.Key{Direction: policy.Ingress, Identity: clientID, Protocol: policy.ProtoTCP, Port: 80, PortPrefixLen: 16}] = compile.Verdict{RuleID: 1}
		setEndpoint(b, d, serverIP, 300, pol)
		for _, c := range []struct {
			name string
			p    pkt
			want uint32
		}{
			{"allowed", tcp(clientIP, serverIP, 50000, 80, tcpACK), tcxNext},
			{"denied", tcp(clientIP, serverIP, 50001, 81, tcpACK), tcxDrop},
		} {
			kind := "ports"
			if shape.width > 1 {
				kind = "ranges"
			}
			b.Run(fmt.Sprintf("%s/rules=%d/%s", kind, rules, c.name), func(b *testing.B) {
				prog := d.objs.ToPod
				ret, per, err := prog.Benchmark(c.p.bytes(), b.N, b.ResetTimer)
				if err != nil {
					b.Fatal(err)
				}
				if ret != c.want {
					b.Fatalf("verdict %d, want %d", ret, c.want)
				}
				b.ReportMetric(float64(per.Nanoseconds()), "ns/pkt")
			})
		}
	}
}

// BenchmarkSyncEndpointPolicy measures replacing one endpoint's policy (a new map
// sized to it, filled, swapped in), which every policy change pays per endpoint it
// touches: with 10, 1,000 and 10,000 entries.
func BenchmarkSyncEndpointPolicy(b *testing.B) {
	d := loadTest(b)
	ctx := context.Background()
	for _, n := range []int{10, 1000, 10000} {
		pol := &compile.EndpointPolicy{Enforce: [2]bool{true, true}, Entries: map[compile.Key]compile.Verdict{}}
		for i := range n {
			pol.Entries[compile.Key{Direction: policy.Ingress, Identity: identity.ID(10000 + i), Protocol: policy.ProtoTCP,
				Port: 80, PortPrefixLen: 16}] = compile.Verdict{RuleID: 1}
		}
		b.Run(fmt.Sprintf("entries=%d", n), func(b *testing.B) {
			for range b.N {
				must(b, d.SyncEndpointPolicy(ctx, testIfindex, pol))
			}
		})
	}
}

// BenchmarkConntrackReply measures the packet of a tracked connection that only
// conntrack lets through: a reply into a pod under ingress default deny, its
// connection established (a reply seen).
func BenchmarkConntrackReply(b *testing.B) {
	d := loadTest(b)
	setEndpoint(b, d, serverIP, 300, &compile.EndpointPolicy{Enforce: [2]bool{true, false}})
	peer := netip.MustParseAddr("10.224.9.9")
	syn := tcp(serverIP, peer, 40000, 80, tcpSYN)
	if run(b, d, dirEgress, syn) != tcxNext || run(b, d, dirIngress, syn.reply(tcpSYN|tcpACK)) != tcxNext {
		b.Fatal("connection not opened")
	}
	ret, per, err := d.objs.ToPod.Benchmark(syn.reply(tcpACK).bytes(), b.N, b.ResetTimer)
	if err != nil {
		b.Fatal(err)
	}
	if ret != tcxNext {
		b.Fatalf("verdict %d, want the reply passed", ret)
	}
	b.ReportMetric(float64(per.Nanoseconds()), "ns/pkt")
}

// BenchmarkConnection measures what the programs cost one TCP_CRR transaction between
// two pods of a node, without the sockets and the stack around them that make
// BenchmarkNetnsTCP noisy: the 8 packets of a short connection (SYN, SYN-ACK, ACK,
// request, response, FIN, FIN, ACK), each run (BPF_PROG_TEST_RUN) through the
// sender's from_pod on its real host veth, which judges its egress and tail-calls
// deliver_to_pod for the receiver's ingress, with the server's ingress under 1,000
// rules. The client's source ports cycle through 60,000, as a busy client's do, so
// most SYNs meet the closing entry an earlier connection left on their tuple.
// prog-ns/op is the programs' own time (BPF run time stats); ns/op adds 8 system
// calls.
func BenchmarkConnection(b *testing.B) {
	n := newTestNode(b)
	server, client := n.addServerClient()
	ctx := context.Background()
	clientID, _ := n.c.IdentityOf("default", "client")
	must(b, n.d.SyncEndpointPolicy(ctx, server.ifindex, rulesPolicy(clientID, benchPort, 1000)))
	enableRunTimeStats(b)
	const tcpPSH = 0x08
	send := func(from *testPod, p pkt) error {
		ret, err := n.d.objs.FromPod.Run(&ebpf.RunOptions{Data: p.bytes(), Context: skbCtx{Ifindex: uint32(from.ifindex)}})
		if err != nil {
			return err
		}
		if ret != tcActRedirect {
			return fmt.Errorf("%+v from %s: verdict %d, want it delivered straight to the peer (%d)", p, from.name, ret, tcActRedirect)
		}
		return nil
	}
	must(b, n.node.Do(func(ns.NetNS) error { // test runs find the veths by ifindex in the node's netns
		s0, err := n.d.objs.FromPod.Stats()
		if err != nil {
			return err
		}
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			syn := tcp(clientIP, serverIP, uint16(1024+i%60000), benchPort, tcpSYN)
			for _, step := range []struct {
				from *testPod
				p    pkt
			}{
				{client, syn}, {server, syn.reply(tcpSYN | tcpACK)}, {client, syn.with(tcpACK)},
				{client, syn.with(tcpPSH | tcpACK)}, {server, syn.reply(tcpPSH | tcpACK)},
				{client, syn.with(tcpFIN | tcpACK)}, {server, syn.reply(tcpFIN | tcpACK)}, {client, syn.with(tcpACK)},
			} {
				if err := send(step.from, step.p); err != nil {
					return fmt.Errorf("connection %d: %w", i, err)
				}
			}
		}
		b.StopTimer()
		s1, err := n.d.objs.FromPod.Stats()
		if err != nil {
			return err
		}
		b.ReportMetric(float64((s1.Runtime-s0.Runtime).Nanoseconds())/float64(b.N), "prog-ns/op")
		return nil
	}))
}

// tcActRedirect is TC_ACT_REDIRECT, what a program returns after bpf_redirect_peer.
const tcActRedirect = 7

// with is the packet with other TCP flags, in the same direction.
func (p pkt) with(flags uint8) pkt {
	p.tcpFlags = flags
	return p
}
