package bpf

import (
	"context"
	"fmt"
	"testing"

	"github.com/flatnet/flatnet/dataplane/compile"
	"github.com/flatnet/flatnet/dataplane/identity"
	"github.com/flatnet/flatnet/dataplane/policy"
)

// BenchmarkPacket measures the programs per packet (BPF_PROG_TEST_RUN with repeat)
// against policies of 0, 100 and 10,000 rules: the cost must stay flat, as every
// lookup is a hash or LPM lookup with a fixed-size key.
func BenchmarkPacket(b *testing.B) {
	d := loadTest(b)
	ctx := context.Background()
	clientID := identity.ID(5000)
	must(b, d.UpsertIPIdentity(ctx, clientIP, clientID))
	for _, rules := range []int{0, 100, 10000} {
		pol := &compile.EndpointPolicy{Enforce: [2]bool{true, true}, Entries: map[compile.Key]compile.Verdict{}}
		for i := 0; i < rules; i++ {
			// Each rule: another identity, a port range of 8 ports, TCP.
			lo := uint16(1024 + (i*8)%60000)
			for _, pp := range compile.PortPrefixes(lo, lo+7) {
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
			b.Run(fmt.Sprintf("rules=%d/%s", rules, c.name), func(b *testing.B) {
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
