package observer_test

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/flatnet/flatnet/dataplane/flows"
	"github.com/flatnet/flatnet/dataplane/hubble/observer"
	"github.com/flatnet/flatnet/dataplane/hubble/observer/observertest"
)

// account reads a following stream until it has accounted for n flows, each
// either received or counted in a LostEvent, checking the lost events' form
// and, with ordered, that flows come in the order of newFlow's index, none
// twice; it returns the two counts.
func account(stream grpc.ServerStreamingClient[observerpb.GetFlowsResponse], n int, ordered bool) (received, lost int, err error) {
	last := -1
	for received+lost < n {
		resp, err := stream.Recv()
		if err != nil {
			return received, lost, fmt.Errorf("after %d flows received and %d lost of %d: %w", received, lost, n, err)
		}
		switch {
		case resp.GetFlow() != nil:
			i := index(resp.GetFlow())
			if ordered && i <= last {
				return received, lost, fmt.Errorf("flow %d after flow %d: out of order or twice", i, last)
			}
			last = i
			received++
		case resp.GetLostEvents() != nil:
			le := resp.GetLostEvents()
			if le.GetSource() != flowpb.LostEventSource_HUBBLE_RING_BUFFER || le.GetNumEventsLost() == 0 ||
				le.GetFirst() == nil || le.GetLast().AsTime().Before(le.GetFirst().AsTime()) || resp.GetNodeName() != node {
				return received, lost, fmt.Errorf("lost event %v on node %q: want a count from HUBBLE_RING_BUFFER with first <= last, from %s", le, resp.GetNodeName(), node)
			}
			lost += int(le.GetNumEventsLost())
		}
	}
	if received+lost != n {
		return received, lost, fmt.Errorf("%d received + %d lost = %d, want exactly the %d flows added", received, lost, received+lost, n)
	}
	return received, lost, nil
}

// TestSlowFollowerIsToldWhatItLost: a follower reading slower than flows are
// added is lapped by the store's ring; every flow is either delivered, in
// order, or counted in a LostEvent, as Hubble reports it.
func TestSlowFollowerIsToldWhatItLost(t *testing.T) {
	const n = 50000
	store := flows.NewStore(256)
	o, c := serve(t, store, observer.Config{LostEventSendInterval: 20 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	t0 := time.Now()
	// since before any flow: the stream owns every flow from the first on, so
	// none can fall between the request and its start.
	stream, err := c.GetFlows(ctx, &observerpb.GetFlowsRequest{Follow: true, Since: timestamppb.New(t0)})
	if err != nil {
		t.Fatal(err)
	}
	waitFollowing(t, o, 1)
	for i := range n {
		store.Add(newFlow(i, t0.Add(time.Duration(i))))
	}
	received, lost, err := account(stream, n, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d flows added at full speed into a ring of 256: %d delivered, %d reported lost", n, received, lost)
	if lost == 0 {
		t.Fatal("no flow lost: the flood did not outrun the follower, so this test proves nothing")
	}
}

// TestStalledFollowerHarmsNoOne: a follower that never reads while flows flood
// neither blocks Add nor holds memory nor slows another follower; it is
// disconnected after the stall bound and told why, and its goroutines end.
func TestStalledFollowerHarmsNoOne(t *testing.T) {
	const n = 200000
	store := flows.NewStore(1024)
	o := observer.New(store, observer.Config{NodeName: node, StallTimeout: 300 * time.Millisecond, LostEventSendInterval: 20 * time.Millisecond})
	srv := observertest.Serve(t, o)
	// A fixed 64 KiB window (no BDP growth) bounds what the stalled client's
	// transport takes in, so the server's sends block within the flood.
	stalledClient := srv.Dial(t, grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	t0 := time.Now()
	req := &observerpb.GetFlowsRequest{Follow: true, Since: timestamppb.New(t0)}
	stalled, err := stalledClient.GetFlows(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	healthy, err := srv.Client.GetFlows(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	waitFollowing(t, o, 2)

	type result struct {
		received, lost int
		err            error
	}
	healthyDone := make(chan result, 1)
	go func() {
		r, l, err := account(healthy, n, true)
		healthyDone <- result{r, l, err}
	}()

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	flooded := make(chan time.Duration, 1)
	go func() {
		start := time.Now()
		for i := range n {
			store.Add(newFlow(i, t0.Add(time.Duration(i))))
		}
		flooded <- time.Since(start)
	}()
	select {
	case d := <-flooded:
		t.Logf("%d flows added in %v beside a stalled and a reading follower", n, d)
	case <-time.After(30 * time.Second):
		t.Fatal("Add blocked: the flood did not finish")
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	// Held all along, 200000 flows and their protos would take hundreds of MiB.
	if grown := int64(after.HeapAlloc) - int64(before.HeapAlloc); grown > 32<<20 {
		t.Fatalf("heap grew by %d MiB over the flood: flows are being queued for the stalled client", grown>>20)
	}
	t.Logf("heap %+d KiB after the flood", (int64(after.HeapAlloc)-int64(before.HeapAlloc))>>10)

	r := <-healthyDone
	if r.err != nil {
		t.Fatalf("reading follower: %v", r.err)
	}
	t.Logf("reading follower: %d delivered, %d reported lost", r.received, r.lost)
	go func() { // the reading follower goes on reading
		for {
			if _, err := healthy.Recv(); err != nil {
				return
			}
		}
	}()

	// Flows keep coming while the client still reads nothing. What the flood
	// left it may fit its transport's window (when the ring lapped its reader,
	// little was sent): it owes nothing yet and is an idle follower, not a
	// stalled one. Once responses wait for it, the stall bound disconnects it.
	for i, deadline := n, time.Now().Add(20*time.Second); o.Following() > 1; i++ {
		if time.Now().After(deadline) {
			t.Fatalf("%d streams still follow 20 s after the flood: the stalled one was never disconnected", o.Following())
		}
		store.Add(newFlow(i, t0.Add(time.Duration(i))))
		if i%100 == 0 {
			time.Sleep(time.Millisecond)
		}
	}
	// The stalled stream ends with ResourceExhausted once the client reads
	// again: what it had buffered, then the reason.
	for {
		_, err := stalled.Recv()
		if err == nil {
			continue
		}
		st, _ := status.FromError(err)
		if st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), "accepted no response") {
			t.Fatalf("stalled stream ended with %v, want ResourceExhausted saying it accepted nothing", err)
		}
		break
	}
	waitFollowing(t, o, 1)
	cancel()
	waitFollowing(t, o, 0)
	if !o.WaitSenders(10 * time.Second) {
		t.Fatal("sender goroutines outlived their streams")
	}
}

func waitFollowing(t *testing.T, o *observer.Observer, n int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); o.Following() != n; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d streams follow, want %d", o.Following(), n)
		}
	}
}
