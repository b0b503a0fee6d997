package observer_test

import (
	"context"
	"errors"
	"io"
	"net/netip"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/flatnet/flatnet/dataplane/bpf"
	"github.com/flatnet/flatnet/dataplane/compile"
	"github.com/flatnet/flatnet/dataplane/flows"
	"github.com/flatnet/flatnet/dataplane/hubble/observer"
	"github.com/flatnet/flatnet/dataplane/identity"
	"github.com/flatnet/flatnet/dataplane/policy"
)

// eventFeed is a datapath whose events the test hands over one by one; closed,
// it reports io.EOF.
type eventFeed chan bpf.FlowEvent

func (f eventFeed) Read(ctx context.Context) (bpf.FlowEvent, error) {
	select {
	case ev, ok := <-f:
		if !ok {
			return bpf.FlowEvent{}, io.EOF
		}
		return ev, nil
	case <-ctx.Done():
		return bpf.FlowEvent{}, ctx.Err()
	}
}

// synTo is a forwarded SYN to port written on cpu, whose datapath had lost
// lostBefore events on that CPU by then.
func synTo(port uint16, cpu uint32, lostBefore uint64) bpf.FlowEvent {
	return bpf.FlowEvent{
		Src: netip.MustParseAddr("10.224.0.41"), Dst: netip.MustParseAddr("10.224.0.40"),
		SrcPort: 40000, DstPort: port, Protocol: 6, TCPFlags: 0x02,
		Direction: policy.Ingress, Code: bpf.ForwardPolicy, CPU: cpu, LostBefore: lostBefore,
	}
}

// The datapath's losses reach Hubble clients as Hubble reports a monitor's lost
// perf records: LostEvents from PERF_EVENT_RING_BUFFER naming the CPU, through
// the agent's real path (flows.Run, the store, the Observer over gRPC), whatever
// the request's filter selects, summed per CPU over LostEventSendInterval.
func TestDatapathLossesReachFollowers(t *testing.T) {
	c := compile.New(identity.NewAllocator())
	c.Flush()
	en, err := flows.NewEnricher(node, c.Latest())
	if err != nil {
		t.Fatal(err)
	}
	store := flows.NewStore(100)
	// An interval longer than the test: each CPU's losses are summed into one
	// LostEvent, sent when the stream ends (at until).
	obs, client := serve(t, store, observer.Config{LostEventSendInterval: time.Hour})
	feed := make(eventFeed)
	ran := make(chan error, 1)
	go func() { ran <- flows.Run(context.Background(), feed, en, store, obs.Observe) }()

	// The stream follows from the flow already there (number 1): what comes
	// next is read as it arrives.
	feed <- synTo(80, 0, 0)
	for n, _, _ := store.Stats(); n == 0; n, _, _ = store.Stats() {
		time.Sleep(time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	port80 := []*flowpb.FlowFilter{{DestinationPort: []string{"80"}}}
	stream, err := client.GetFlows(ctx, &observerpb.GetFlowsRequest{
		Number: 1, Follow: true, Whitelist: port80, Until: timestamppb.New(time.Now().Add(3 * time.Second)),
	})
	if err != nil {
		t.Fatal(err)
	}
	if resp, err := stream.Recv(); err != nil || resp.GetFlow() == nil {
		t.Fatalf("first response %v, %v: want the flow already there", resp, err)
	}
	for _, ev := range []bpf.FlowEvent{
		synTo(443, 1, 5), // CPU 1 lost 5 before a flow the filter leaves out
		synTo(80, 0, 3),  // CPU 0: 3
		synTo(80, 1, 5),  // CPU 1: none since
		synTo(80, 0, 10), // CPU 0: 7 more
		synTo(80, 1, 2),  // CPU 1's count restarted (a reloaded datapath): 2
	} {
		feed <- ev
	}
	close(feed)
	if err := <-ran; !errors.Is(err, io.EOF) {
		t.Fatalf("flows.Run: %v, want the feed's io.EOF", err)
	}

	flowsSeen := 0
	lost := map[int32]*flowpb.LostEvent{}
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetFlow() != nil {
			flowsSeen++
			continue
		}
		le := resp.GetLostEvents()
		if le.GetSource() != flowpb.LostEventSource_PERF_EVENT_RING_BUFFER || le.GetCpu() == nil || resp.GetNodeName() != node {
			t.Fatalf("response %v: want a LostEvent from PERF_EVENT_RING_BUFFER with a CPU, on %s", resp, node)
		}
		if prev := lost[le.GetCpu().GetValue()]; prev != nil {
			t.Fatalf("CPU %d's losses told twice within one interval: %v, then %v", le.GetCpu().GetValue(), prev, le)
		}
		lost[le.GetCpu().GetValue()] = le
	}
	if flowsSeen != 4 {
		t.Errorf("%d flows after the first, want the 4 to port 80", flowsSeen)
	}
	if len(lost) != 2 || lost[0].GetNumEventsLost() != 10 || lost[1].GetNumEventsLost() != 7 {
		t.Errorf("lost events %v: want CPU 0: 10 (3+7), CPU 1: 7 (5, then 2 after its count restarted)", lost)
	}

	// A request that ends reads the same losses with the history.
	_, got, err := getFlows(t, client, &observerpb.GetFlowsRequest{First: true})
	if err != nil {
		t.Fatal(err)
	}
	var sum uint64
	for _, le := range got {
		sum += le.GetNumEventsLost()
	}
	if sum != 17 {
		t.Errorf("GetFlows first: lost events %v sum to %d, want 17", got, sum)
	}
}
