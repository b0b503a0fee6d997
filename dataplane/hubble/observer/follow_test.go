package observer_test

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	observerpb "github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/flatnet/flatnet/dataplane/flows"
	"github.com/flatnet/flatnet/dataplane/hubble/observer"
)

// TestFollowSendsHistoryThenEveryNewFlow: follow with number sends that many
// of the newest flows, then each flow as it is added, in order, none twice.
func TestFollowSendsHistoryThenEveryNewFlow(t *testing.T) {
	store := flows.NewStore(100)
	for i := range 3 {
		store.Add(newFlow(i, time.Now()))
	}
	o, c := serve(t, store, observer.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	stream, err := c.GetFlows(ctx, &observerpb.GetFlowsRequest{Number: 2, Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	next := func() int {
		t.Helper()
		resp, err := stream.Recv()
		if err != nil {
			t.Fatalf("follow stream: %v", err)
		}
		return index(resp.GetFlow())
	}
	if a, b := next(), next(); a != 1 || b != 2 {
		t.Fatalf("history %d, %d: want the newest 2, flows 1 and 2", a, b)
	}
	for i := 3; i < 6; i++ {
		added := time.Now()
		store.Add(newFlow(i, added))
		if got := next(); got != i {
			t.Fatalf("followed flow %d: want %d", got, i)
		}
		t.Logf("flow %d followed %v after Add", i, time.Since(added))
	}
	cancel()
	if _, err := stream.Recv(); status.Code(err) != codes.Canceled {
		t.Fatalf("Recv after cancel: %v, want Canceled", err)
	}
	if !o.WaitSenders(10 * time.Second) {
		t.Fatal("the stream's sender goroutine outlived the cancelled stream")
	}
}

// TestFollowWithoutNumberSendsOnlyNewFlows: follow alone sends no history.
// When the call reaches the server is unknown to the client, so flows are added
// until one arrives; every flow after it must follow in order.
func TestFollowWithoutNumberSendsOnlyNewFlows(t *testing.T) {
	store := flows.NewStore(100)
	store.Add(newFlow(0, time.Now()))
	_, c := serve(t, store, observer.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	stream, err := c.GetFlows(ctx, &observerpb.GetFlowsRequest{Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan int, 100)
	go func() {
		defer close(got)
		for {
			resp, err := stream.Recv()
			if err != nil {
				return
			}
			got <- index(resp.GetFlow())
		}
	}()
	i := 1
	var first int
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
wait:
	for {
		select {
		case first = <-got:
			break wait
		case <-tick.C:
			store.Add(newFlow(i, time.Now()))
			i++
		case <-ctx.Done():
			t.Fatal("no flow followed")
		}
	}
	if first == 0 {
		t.Fatal("follow without number sent flow 0, added before the call")
	}
	store.Add(newFlow(i, time.Now()))
	for want := first + 1; want <= i; want++ {
		if g := <-got; g != want {
			t.Fatalf("followed flow %d after %d: want %d", g, want-1, want)
		}
	}
}

// TestFollowUntil: a following stream ends cleanly at until, or at the first
// flow after it (as Hubble's does); with until already past, after the history.
func TestFollowUntil(t *testing.T) {
	store := flows.NewStore(100)
	now := time.Now()
	for i := range 3 {
		store.Add(newFlow(i, now.Add(time.Duration(i-3)*time.Second)))
	}
	_, c := serve(t, store, observer.Config{})

	until := time.Now().Add(300 * time.Millisecond)
	got, _, err := getFlows(t, c, &observerpb.GetFlowsRequest{Follow: true, Until: timestamppb.New(until)})
	if err != nil || len(got) != 0 || time.Now().Before(until) {
		t.Fatalf("follow until in 300ms: flows %v, err %v, ended %v before until", got, err, until.Sub(time.Now()))
	}

	got, _, err = getFlows(t, c, &observerpb.GetFlowsRequest{Follow: true, Number: 10, Until: timestamppb.New(now.Add(-1500 * time.Millisecond))})
	if want := seq(0, 1); err != nil || len(got) != 2 || got[1] != want[1] {
		t.Fatalf("follow until in the past: flows %v, err %v; want %v and the end", got, err, want)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	until = time.Now().Add(time.Hour)
	stream, err := c.GetFlows(ctx, &observerpb.GetFlowsRequest{Follow: true, Number: 1, Until: timestamppb.New(until)})
	if err != nil {
		t.Fatal(err)
	}
	if resp, err := stream.Recv(); err != nil || index(resp.GetFlow()) != 2 {
		t.Fatalf("history: %v, %v", resp, err)
	}
	store.Add(newFlow(3, until.Add(-time.Second)))
	store.Add(newFlow(4, until.Add(time.Second)))
	if resp, err := stream.Recv(); err != nil || index(resp.GetFlow()) != 3 {
		t.Fatalf("flow before until: %v, %v", resp, err)
	}
	if resp, err := stream.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("after a flow past until: %v, %v; want the end of the stream", resp, err)
	}
}

// TestFollowersAreCapped: each follower holds a goroutine pair and a buffer;
// past the limit a follow request is refused, a plain one still served.
func TestFollowersAreCapped(t *testing.T) {
	store, _ := history(3)
	o, c := serve(t, store, observer.Config{MaxFollowers: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	first, err := c.GetFlows(ctx, &observerpb.GetFlowsRequest{Follow: true, Number: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := first.Recv(); err != nil {
		t.Fatal(err)
	}
	_, _, err = getFlows(t, c, &observerpb.GetFlowsRequest{Follow: true})
	if st, _ := status.FromError(err); st.Code() != codes.ResourceExhausted {
		t.Fatalf("second follower: %v, want ResourceExhausted", err)
	}
	if got, _, err := getFlows(t, c, &observerpb.GetFlowsRequest{Number: 1}); err != nil || len(got) != 1 {
		t.Fatalf("plain request beside a full set of followers: %v, %v", got, err)
	}
	cancel()
	for deadline := time.Now().Add(10 * time.Second); o.Following() != 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the cancelled follower's slot was never released")
		}
	}
}
