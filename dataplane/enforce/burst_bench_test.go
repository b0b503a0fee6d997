package enforce

import (
	"fmt"
	"testing"
)

// BenchmarkPolicyBurst measures issue 19/20's policy burst in the agent: the time
// from the first of n NetworkPolicies created one by one (each selecting every
// server, admitting one /32, as `make perf --policies n` does) to all of them in
// force in the datapath's maps of the node's servers, with 48 pods (16 on this
// node). writes/op counts the datapath writes (bpf.Apply) the burst cost. n=1 is a
// single change on an idle agent. Between ops the policies are deleted (untimed).
func BenchmarkPolicyBurst(b *testing.B) {
	for _, n := range []int{1, 1000, 10000} {
		b.Run(fmt.Sprintf("policies=%d", n), func(b *testing.B) {
			bn := newBurstNode(b)
			var writes uint64
			b.ResetTimer()
			for range b.N {
				w0 := observations(b, bn.e.Metrics().Sync)
				bn.feed(b, 0, n, false)
				bn.waitInForce(b, fillerPeer(n-1), true)
				writes += observations(b, bn.e.Metrics().Sync) - w0
				b.StopTimer()
				bn.feed(b, 0, n, true)
				bn.waitInForce(b, fillerPeer(n-1), false)
				bn.waitInForce(b, fillerPeer(0), false)
				b.StartTimer()
			}
			b.ReportMetric(float64(writes)/float64(b.N), "writes/op")
		})
	}
}
