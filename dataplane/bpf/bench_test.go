package bpf

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

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
