package observer_test

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/flatnet/flatnet/dataplane/flows"
	"github.com/flatnet/flatnet/dataplane/hubble/observer"
)

// cpuTime is the process's user+system CPU time so far.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkFollowerUnderFlood: one client follows (upstream client, real gRPC
// on loopback) while b.N flows are added, at full speed or paced; every flow
// is either delivered or reported lost. delivered/s is what the client got;
// cpu-ns/op the process's CPU per added flow (the client's decoding included),
// which a loaded machine skews less than wall time.
func BenchmarkFollowerUnderFlood(b *testing.B) {
	for _, rate := range []int{0, 100000, 10000} {
		name := "rate=max"
		if rate > 0 {
			name = fmt.Sprintf("rate=%d/s", rate)
		}
		b.Run(name, func(b *testing.B) {
			store := flows.NewStore(flows.DefaultCapacity)
			o, c := serve(b, store, observer.Config{LostEventSendInterval: 10 * time.Millisecond})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			t0 := time.Now()
			stream, err := c.GetFlows(ctx, &observerpb.GetFlowsRequest{Follow: true, Since: timestamppb.New(t0)})
			if err != nil {
				b.Fatal(err)
			}
			for o.Following() != 1 {
				time.Sleep(time.Millisecond)
			}
			tmpl := newFlow(1, t0).Flow
			b.ResetTimer()
			start, cpu0 := time.Now(), cpuTime(b)
			go func() {
				const batch = 100
				tick := time.Duration(0)
				if rate > 0 {
					tick = time.Second * batch / time.Duration(rate)
				}
				next := time.Now()
				for i := 0; i < b.N; i++ {
					store.Add(&flows.Response{Flow: tmpl, NodeName: node, Time: t0})
					if tick > 0 && i%batch == batch-1 {
						next = next.Add(tick)
						time.Sleep(time.Until(next))
					}
				}
			}()
			// The flood adds one flow many times over (a new Response each, so
			// each is converted once, as in the agent): no order to check.
			received, lost, err := account(stream, b.N, false)
			if err != nil {
				b.Fatal(err)
			}
			elapsed := time.Since(start)
			b.ReportMetric(float64(received)/elapsed.Seconds(), "delivered/s")
			b.ReportMetric(100*float64(lost)/float64(b.N), "lost-%")
			b.ReportMetric(float64(cpuTime(b)-cpu0)/float64(b.N), "cpu-ns/op")
		})
	}
}

// BenchmarkGetFlowsLast10000With3Filters: one request for the newest 10,000
// flows through a 3-filter whitelist, read to its end by the upstream client;
// about half the flows match. The flows' protos are built by the first run
// and cached, as in the agent once anything has read them.
func BenchmarkGetFlowsLast10000With3Filters(b *testing.B) {
	store := flows.NewStore(flows.DefaultCapacity)
	t0 := time.Now()
	for i := range flows.DefaultCapacity {
		r := newFlow(i, t0.Add(time.Duration(i)*time.Millisecond))
		if i%3 == 0 {
			r.Flow.Verdict, r.Flow.L4.TCP.DestinationPort = flows.VerdictDropped, 443
		}
		if i%5 == 0 {
			r.Flow.Destination.Labels = []string{"k8s:app=db"}
		}
		store.Add(r)
	}
	_, c := serve(b, store, observer.Config{})
	req := &observerpb.GetFlowsRequest{Number: 10000, Whitelist: []*flowpb.FlowFilter{
		{SourcePod: []string{"client/client-1"}},
		{Verdict: []flowpb.Verdict{flowpb.Verdict_DROPPED}, DestinationPort: []string{"443"}},
		{DestinationLabel: []string{"k8s:app=db"}},
	}}
	var got int
	cpu0 := cpuTime(b)
	for b.Loop() {
		flows, _, err := getFlows(b, c, req)
		if err != nil {
			b.Fatal(err)
		}
		got = len(flows)
	}
	b.ReportMetric(float64(got), "flows/op")
	b.ReportMetric(float64(cpuTime(b)-cpu0)/float64(b.N), "cpu-ns/op")
}

// BenchmarkAddWithFollowers is the agent's cost per flow (Observe, then Add,
// as flows.Run calls them) with 0 or 5 clients following everything over
// gRPC. ns/op is Add's wall time; cpu-ns/op is the whole process's CPU per
// flow, the followers' serving (and, in-process here, their clients'
// decoding) included.
func BenchmarkAddWithFollowers(b *testing.B) {
	for _, followers := range []int{0, 5} {
		b.Run(fmt.Sprintf("followers=%d", followers), func(b *testing.B) {
			store := flows.NewStore(flows.DefaultCapacity)
			o, c := serve(b, store, observer.Config{})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			for range followers {
				stream, err := c.GetFlows(ctx, &observerpb.GetFlowsRequest{Follow: true})
				if err != nil {
					b.Fatal(err)
				}
				go func() {
					for {
						if _, err := stream.Recv(); err != nil {
							return
						}
					}
				}()
			}
			for o.Following() != followers {
				time.Sleep(time.Millisecond)
			}
			tmpl := newFlow(1, time.Now()).Flow
			cpu0 := cpuTime(b)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				r := &flows.Response{Flow: tmpl, NodeName: node, Time: tmpl.Time}
				o.Observe(r)
				store.Add(r)
			}
			b.StopTimer()
			b.ReportMetric(float64(cpuTime(b)-cpu0)/float64(b.N), "cpu-ns/op")
		})
	}
}
