package observer_test

import (
	"context"
	"math"
	"strings"
	"testing"
	"time"

	observerpb "github.com/cilium/cilium/api/v1/observer"
	relaypb "github.com/cilium/cilium/api/v1/relay"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/flatnet/flatnet/dataplane/flows"
	"github.com/flatnet/flatnet/dataplane/hubble/observer"
)

// TestServerStatus: the store's fill, what it has seen, and Hubble's flow rate:
// flows of the last minute per second, or per second since the oldest flow
// when the store holds less than a minute.
func TestServerStatus(t *testing.T) {
	ctx := context.Background()
	store := flows.NewStore(10)
	_, c := serve(t, store, observer.Config{Version: "flatnet v0.0.0-test"})
	st, err := c.ServerStatus(ctx, &observerpb.ServerStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.GetNumFlows() != 0 || st.GetMaxFlows() != 10 || st.GetSeenFlows() != 0 || st.GetFlowsRate() != 0 ||
		st.GetVersion() != "flatnet v0.0.0-test" || st.GetUptimeNs() == 0 {
		t.Fatalf("empty store: %v", st)
	}
	if st.GetNumConnectedNodes() != nil || st.GetNumUnavailableNodes() != nil {
		t.Fatalf("an agent reports node counts, which are the relay's: %v", st)
	}

	// 15 flows, 4 s apart, the newest 2 s ago: the store keeps the last 10,
	// from 38 s ago on, all within the minute, so the rate is over those 38 s.
	now := time.Now()
	for i := range 15 {
		store.Add(newFlow(i, now.Add(-time.Duration(2+4*(14-i))*time.Second)))
	}
	st, err = c.ServerStatus(ctx, &observerpb.ServerStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.GetNumFlows() != 10 || st.GetMaxFlows() != 10 || st.GetSeenFlows() != 15 {
		t.Fatalf("num %d max %d seen %d, want 10, 10, 15", st.GetNumFlows(), st.GetMaxFlows(), st.GetSeenFlows())
	}
	if want := 10 / 38.0; math.Abs(st.GetFlowsRate()-want) > want*0.01 {
		t.Fatalf("flows_rate %v, want about %v (10 flows over the 38 s since the oldest)", st.GetFlowsRate(), want)
	}

	// With flows older than a minute, the rate is the last minute's.
	store = flows.NewStore(100)
	_, c = serve(t, store, observer.Config{})
	now = time.Now()
	for i := range 90 { // one a second, the newest now: 60 within the minute
		store.Add(newFlow(i, now.Add(-time.Duration(89-i)*time.Second-time.Second/2)))
	}
	st, err = c.ServerStatus(ctx, &observerpb.ServerStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if want := 60 / 60.0; math.Abs(st.GetFlowsRate()-want) > 0.02 {
		t.Fatalf("flows_rate %v, want %v (60 flows in the last minute)", st.GetFlowsRate(), want)
	}
}

// TestGetNodes: an agent lists itself, connected, with its store's figures.
func TestGetNodes(t *testing.T) {
	store, _ := history(5)
	_, c := serve(t, store, observer.Config{Version: "flatnet v1", Address: "192.0.2.10:4244", TLSServerName: "node-a.default.hubble-grpc.cilium.io"})
	resp, err := c.GetNodes(context.Background(), &observerpb.GetNodesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetNodes()) != 1 {
		t.Fatalf("nodes %v, want this one", resp.GetNodes())
	}
	n := resp.GetNodes()[0]
	n.UptimeNs = 0
	want := &observerpb.Node{Name: node, Version: "flatnet v1", Address: "192.0.2.10:4244", State: relaypb.NodeState_NODE_CONNECTED,
		Tls: &observerpb.TLS{Enabled: true, ServerName: "node-a.default.hubble-grpc.cilium.io"}, NumFlows: 5, MaxFlows: 100, SeenFlows: 5}
	if !proto.Equal(n, want) {
		t.Fatalf("node %v, want %v", n, want)
	}
}

// TestGetNamespaces: the namespaces flows named in the last hour, by cluster
// then name; endpoints outside the cluster (no namespace) name none.
func TestGetNamespaces(t *testing.T) {
	store := flows.NewStore(10)
	o, c := serve(t, store, observer.Config{})
	now := time.Now()
	world := newFlow(0, now)
	world.Flow.Source.Namespace, world.Flow.Source.PodName = "", ""
	world.Flow.Destination.Namespace = "web"
	old := newFlow(1, now.Add(-2*time.Hour))
	old.Flow.Source.Namespace, old.Flow.Destination.Namespace = "gone", "gone"
	other := newFlow(2, now)
	other.Flow.Source.ClusterName, other.Flow.Source.Namespace = "another", "client"
	for _, r := range []*flows.Response{world, old, other, newFlow(3, now)} {
		o.Observe(r)
		store.Add(r)
	}
	resp, err := c.GetNamespaces(context.Background(), &observerpb.GetNamespacesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, ns := range resp.GetNamespaces() {
		got = append(got, ns.GetCluster()+"/"+ns.GetNamespace())
	}
	if want := "another/client default/client default/server default/web"; strings.Join(got, " ") != want {
		t.Fatalf("namespaces %v, want %s", got, want)
	}
}

// TestAgentAndDebugEventsAreUnimplemented: flatnet has neither; the error
// says so rather than streaming nothing.
func TestAgentAndDebugEventsAreUnimplemented(t *testing.T) {
	_, c := serve(t, flows.NewStore(1), observer.Config{})
	ctx := context.Background()
	agent, err := c.GetAgentEvents(ctx, &observerpb.GetAgentEventsRequest{})
	if err == nil {
		_, err = agent.Recv()
	}
	if st, _ := status.FromError(err); st.Code() != codes.Unimplemented || !strings.Contains(st.Message(), "flatnet has no Cilium agent events") {
		t.Fatalf("GetAgentEvents: %v", err)
	}
	debug, err := c.GetDebugEvents(ctx, &observerpb.GetDebugEventsRequest{})
	if err == nil {
		_, err = debug.Recv()
	}
	if st, _ := status.FromError(err); st.Code() != codes.Unimplemented || !strings.Contains(st.Message(), "no Cilium debug events") {
		t.Fatalf("GetDebugEvents: %v", err)
	}
}
