package nodealloc

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/flatnet/flatnet/dataplane/ipam"
)

// BenchmarkBurstAllocate is a node's share of issue 20's 30-pod burst: 15
// allocations at once on one store (each its own Store, as each ADD is its own
// plugin process), on a block already holding 15 pods. Reported: each
// allocation's wall time (p50/p99), which is mostly the wait for the lock.
func BenchmarkBurstAllocate(b *testing.B) {
	const burst = 15
	ctx := context.Background()
	blk := ipam.Block{Index: -1, First: netip.MustParseAddr("10.224.1.0"), Size: 30}
	var all []time.Duration
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		dir := b.TempDir()
		for j := range 15 {
			if _, _, err := New(dir).Allocate(ctx, "n1", blk, Attachment{ContainerID: fmt.Sprintf("old%03d", j), IfName: "eth0"}); err != nil {
				b.Fatal(err)
			}
		}
		b.StartTimer()
		took := make([]time.Duration, burst)
		var wg sync.WaitGroup
		for j := range burst {
			wg.Go(func() {
				t0 := time.Now()
				if _, _, err := New(dir).Allocate(ctx, "n1", blk, Attachment{ContainerID: fmt.Sprintf("c%d-%03d", i, j), IfName: "eth0"}); err != nil {
					b.Error(err)
				}
				took[j] = time.Since(t0)
			})
		}
		wg.Wait()
		all = append(all, took...)
	}
	slices.Sort(all)
	b.ReportMetric(float64(all[len(all)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(all[len(all)*99/100].Microseconds())/1000, "p99-ms")
}
