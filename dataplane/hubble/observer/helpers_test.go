package observer_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flatnet/flatnet/dataplane/flows"
	"github.com/flatnet/flatnet/dataplane/hubble/observer"
	"github.com/flatnet/flatnet/dataplane/hubble/observer/observertest"
)

const node = "node-a"

// newFlow is flow i: client-i in namespace "client", whose address encodes i,
// connects to server/server:80 at time at, forwarded at ingress.
func newFlow(i int, at time.Time) *flows.Response {
	f := &flows.Flow{
		Time:             at,
		Verdict:          flows.VerdictForwarded,
		IP:               &flows.IP{Source: netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}).String(), Destination: "10.244.2.20", IPVersion: "IPv4"},
		L4:               &flows.Layer4{TCP: &flows.TCP{SourcePort: uint16(10000 + i), DestinationPort: 80, Flags: &flows.TCPFlags{SYN: true}}},
		Source:           &flows.Endpoint{Identity: 1000, ClusterName: "default", Namespace: "client", PodName: fmt.Sprintf("client-%d", i), Labels: []string{"k8s:app=client"}},
		Destination:      &flows.Endpoint{Identity: 2000, ClusterName: "default", Namespace: "server", PodName: "server", Labels: []string{"k8s:app=server"}},
		Type:             "L3_L4",
		NodeName:         node,
		EventType:        flows.EventType{Type: 4},
		TrafficDirection: flows.Ingress,
		Summary:          "TCP Flags: SYN",
	}
	return &flows.Response{Flow: f, NodeName: node, Time: at}
}

// index is the i newFlow was made with, read back from a served flow.
func index(f *flowpb.Flow) int {
	a, err := netip.ParseAddr(f.GetIP().GetSource())
	if err != nil {
		return -1
	}
	b := a.As4()
	return int(b[1])<<16 | int(b[2])<<8 | int(b[3])
}

// ipIndex is index for a flow's source address as text.
func ipIndex(t testing.TB, ip string) int {
	t.Helper()
	i := index(&flowpb.Flow{IP: &flowpb.IP{Source: ip}})
	if i < 0 {
		t.Fatalf("source address %q is not one newFlow makes", ip)
	}
	return i
}

// serve starts an observer over store on a real loopback gRPC server.
func serve(t testing.TB, store *flows.Store, cfg observer.Config) (*observer.Observer, observerpb.ObserverClient) {
	t.Helper()
	if cfg.NodeName == "" {
		cfg.NodeName = node
	}
	o := observer.New(store, cfg)
	return o, observertest.Serve(t, o).Client
}

// getFlows runs a request that ends and returns its flows' indexes, the lost
// events it carried, and how it ended (nil for a clean end).
func getFlows(t testing.TB, c observerpb.ObserverClient, req *observerpb.GetFlowsRequest) (got []int, lost []*flowpb.LostEvent, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := c.GetFlows(ctx, req)
	if err != nil {
		return nil, nil, err
	}
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return got, lost, nil
		}
		if err != nil {
			return got, lost, err
		}
		switch {
		case resp.GetFlow() != nil:
			got = append(got, index(resp.GetFlow()))
		case resp.GetLostEvents() != nil:
			lost = append(lost, resp.GetLostEvents())
		default:
			t.Fatalf("unexpected response %v", resp)
		}
	}
}

func seq(from, to int) []int {
	var out []int
	for i := from; i <= to; i++ {
		out = append(out, i)
	}
	return out
}

// wantInvalid checks err is InvalidArgument naming field in its message and in
// its BadRequest detail.
func wantInvalid(t *testing.T, err error, field string) {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.InvalidArgument {
		t.Fatalf("error %v: want InvalidArgument naming %s", err, field)
	}
	if !strings.Contains(st.Message(), field+":") {
		t.Fatalf("error %q does not name the field %s", st.Message(), field)
	}
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok && len(br.GetFieldViolations()) == 1 && br.GetFieldViolations()[0].GetField() == field {
			return
		}
	}
	t.Fatalf("error %q has no BadRequest detail for field %s: %v", st.Message(), field, st.Details())
}
