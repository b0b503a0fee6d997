package flows_test

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	observerpb "github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/flatnet/flatnet/dataplane/hubble/observer/observertest"
)

// BenchmarkFollowersUnderFlood measures what Hubble clients following an agent get
// while its datapath floods denied SYNs (issue 17): the flood of
// BenchmarkFlowEventFlood at the raised event rate, with 0, 1 or 5 `hubble observe
// --follow` clients on the agent's Observer over real gRPC, each reading as fast as
// it can. Metrics: events/s the agent took in, served/s flows each follower
// received, lost-reported/s what the Observer told them it had to skip
// (LostEvent), heap-MiB the agent's heap growth over the flood; nothing is
// asserted about them.
func BenchmarkFollowersUnderFlood(b *testing.B) {
	f := newFloodNode(b)
	ctx := context.Background()
	must(b, f.enf.Datapath().SetEventRate(ctx, 10_000_000))
	srv := observertest.Serve(b, f.obs)
	for _, followers := range []int{0, 1, 5} {
		b.Run(fmt.Sprintf("followers=%d", followers), func(b *testing.B) {
			time.Sleep(100 * time.Millisecond) // the reader drains what came before
			fctx, cancel := context.WithCancel(ctx)
			var served, lost atomic.Uint64
			var wg sync.WaitGroup
			for range followers {
				stream, err := srv.Client.GetFlows(fctx, &observerpb.GetFlowsRequest{Follow: true, Since: timestamppb.Now()})
				must(b, err)
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						resp, err := stream.Recv()
						if err != nil {
							return
						}
						if l := resp.GetLostEvents(); l != nil {
							lost.Add(l.GetNumEventsLost())
						} else if resp.GetFlow() != nil {
							served.Add(1)
						}
					}
				}()
			}
			// The streams follow from their since: what comes before they start
			// is still theirs, so a pause only keeps setup out of the timing.
			time.Sleep(200 * time.Millisecond)
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			got0 := f.events.Load()
			start := time.Now()
			b.ResetTimer()
			f.flood(b, b.N)
			b.StopTimer()
			// Drain: until the followers have stopped receiving for 300 ms.
			last, lastMove := uint64(0), time.Now()
			for time.Since(lastMove) < 300*time.Millisecond {
				if n := served.Load() + lost.Load() + f.events.Load(); n != last {
					last, lastMove = n, time.Now()
				}
				time.Sleep(10 * time.Millisecond)
			}
			elapsed := time.Since(start) - 300*time.Millisecond
			runtime.ReadMemStats(&after)
			cancel()
			wg.Wait()
			b.ReportMetric(float64(f.events.Load()-got0)/elapsed.Seconds(), "events/s")
			if followers > 0 {
				b.ReportMetric(float64(served.Load())/float64(followers)/elapsed.Seconds(), "served/s")
				b.ReportMetric(float64(lost.Load())/float64(followers)/elapsed.Seconds(), "lost-reported/s")
			}
			b.ReportMetric(float64(int64(after.HeapAlloc)-int64(before.HeapAlloc))/(1<<20), "heap-MiB")
		})
	}
}
