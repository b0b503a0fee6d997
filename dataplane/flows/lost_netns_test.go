package flows_test

import (
	"context"
	"runtime"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/timestamppb"

	hubblemetrics "github.com/flatnet/flatnet/dataplane/hubble/metrics"
	"github.com/flatnet/flatnet/dataplane/hubble/observer/observertest"
)

// The flow events the datapath's rate limit holds back reach a Hubble follower
// as Hubble reports a monitor's lost perf records: LostEvents from
// PERF_EVENT_RING_BUFFER naming the CPU that lost them, carried by the next
// event of that CPU, through the real datapath, flows.Run and the Observer over
// gRPC. They sum to the datapath's own count, which
// hubble_lost_events_total{source="perf_event_ring_buffer"} exports.
func TestDatapathLossesReachHubbleWithTheirCPU(t *testing.T) {
	ctx := context.Background()
	start := time.Now()
	f := newFloodNode(t)
	dp := f.enf.Datapath()
	// One event per second per CPU: of a burst, the first is written, the
	// rest lost, and told with the next event of that CPU, a second later.
	must(t, dp.SetEventRate(ctx, 1))
	client := observertest.Serve(t, f.obs).Client
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	// Following from before the test: the stream reads every flow of the node.
	stream, err := client.GetFlows(sctx, &observerpb.GetFlowsRequest{Follow: true, Since: timestamppb.New(start.Add(-time.Minute))})
	if err != nil {
		t.Fatal(err)
	}
	lostByCPU := map[int32]uint64{}
	var inBand uint64
	received := make(chan error, 1)
	lostEvents := make(chan *flowpb.LostEvent)
	go func() {
		for {
			resp, err := stream.Recv()
			if err != nil {
				received <- err
				return
			}
			if le := resp.GetLostEvents(); le != nil {
				select {
				case lostEvents <- le:
				case <-sctx.Done():
					return
				}
			}
		}
	}()

	cpus := allowedCPUs(t)
	const burst = 20
	for _, cpu := range cpus {
		f.sendOn(t, cpu, burst)
	}
	specs, err := hubblemetrics.ParseSpecs("flow")
	must(t, err)
	m, err := hubblemetrics.New(hubblemetrics.Config{Specs: specs, Datapath: dp})
	must(t, err)
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(m.Collectors()...)
	// Every CPU's losses are told with its next event: one more SYN from each,
	// a token later, until what the stream was told is what the metric (the
	// datapath's count) says. The pods' own packets (IGMP reports, ...) are
	// judged too, and one lost after the last SYN of its CPU waits for the next.
	var metric uint64
	for attempt := 0; attempt < 5 && (attempt == 0 || inBand != metric); attempt++ {
		time.Sleep(1100 * time.Millisecond)
		for _, cpu := range cpus {
			f.sendOn(t, cpu, 1)
		}
		settle := time.After(2500 * time.Millisecond) // the reader's poll and one LostEventSendInterval
	collect:
		for metric = perfLost(t, reg); inBand != metric; metric = perfLost(t, reg) {
			select {
			case le := <-lostEvents:
				if le.GetSource() != flowpb.LostEventSource_PERF_EVENT_RING_BUFFER || le.GetCpu() == nil {
					t.Fatalf("lost event %v: want PERF_EVENT_RING_BUFFER with a CPU", le)
				}
				lostByCPU[le.GetCpu().GetValue()] += le.GetNumEventsLost()
				inBand += le.GetNumEventsLost()
			case err := <-received:
				t.Fatalf("stream ended: %v", err)
			case <-settle:
				break collect
			}
		}
	}
	if inBand != metric || metric < uint64(len(cpus))*(burst-2) {
		t.Fatalf("followers were told of %d lost events (%v by CPU); hubble_lost_events_total{source=\"perf_event_ring_buffer\"} = %d; want the same, at least %d",
			inBand, lostByCPU, metric, len(cpus)*(burst-2))
	}
	t.Logf("lost events told by CPU: %v; hubble_lost_events_total{source=\"perf_event_ring_buffer\"} = %d", lostByCPU, metric)
	// The burst sent on each CPU was lost there (but its first SYN).
	for _, cpu := range cpus {
		if n := lostByCPU[int32(cpu)]; n < burst-2 {
			t.Errorf("CPU %d: %d lost events told, want the %d of its burst but the first (all: %v)", cpu, n, burst-1, lostByCPU)
		}
	}
}

// perfLost is hubble_lost_events_total{source="perf_event_ring_buffer"}.
func perfLost(t testing.TB, reg prometheus.Gatherer) uint64 {
	t.Helper()
	mfs, err := reg.Gather()
	must(t, err)
	for _, mf := range mfs {
		if mf.GetName() != "hubble_lost_events_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "source" && l.GetValue() == hubblemetrics.LostPerfRing {
					return uint64(m.GetCounter().GetValue())
				}
			}
		}
	}
	t.Fatal("no hubble_lost_events_total{source=\"perf_event_ring_buffer\"}")
	return 0
}

// sendOn sends n SYNs from the client pod on cpu: the veth hands a frame to
// the receiving side's backlog on the sending CPU, so the datapath judges it
// there.
func (f *floodNode) sendOn(t testing.TB, cpu, n int) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with its affinity
		var set unix.CPUSet
		set.Set(cpu)
		if err := unix.SchedSetaffinity(0, &set); err != nil {
			done <- err
			return
		}
		frame := append([]byte(nil), f.frame...)
		for i := 0; i < n; i++ {
			frame[14+20+1] = byte(i) // another source port each
			if _, err := unix.Write(f.fd, frame); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	if err := <-done; err != nil {
		t.Fatalf("sending SYNs on CPU %d: %v", cpu, err)
	}
}

// allowedCPUs are the CPUs this process may run on.
func allowedCPUs(t testing.TB) []int {
	var set unix.CPUSet
	must(t, unix.SchedGetaffinity(0, &set))
	var out []int
	for cpu := 0; cpu < 1024 && len(out) < set.Count(); cpu++ {
		if set.IsSet(cpu) {
			out = append(out, cpu)
		}
	}
	return out
}
