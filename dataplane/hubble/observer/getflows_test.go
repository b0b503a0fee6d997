package observer_test

import (
	"context"
	"errors"
	"io"
	"math"
	"slices"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/flatnet/flatnet/dataplane/flows"
	"github.com/flatnet/flatnet/dataplane/hubble/observer"
)

// history adds n flows one second apart, flow i at t0+i s, to a store that
// keeps them all.
func history(n int) (*flows.Store, time.Time) {
	store := flows.NewStore(100)
	t0 := time.Now().Add(-time.Hour).Truncate(time.Second)
	for i := range n {
		store.Add(newFlow(i, t0.Add(time.Duration(i)*time.Second)))
	}
	return store, t0
}

// TestGetFlowsNumberAndFirst: number selects the newest flows and, with first,
// the oldest; 0 means all the history, as Hubble's server reads it (the CLI
// asks for 20 by default and for the largest number with --all, number being
// unsigned on the wire).
func TestGetFlowsNumberAndFirst(t *testing.T) {
	store, _ := history(30)
	_, c := serve(t, store, observer.Config{})
	for _, tc := range []struct {
		name string
		req  *observerpb.GetFlowsRequest
		want []int
	}{
		{"last 10", &observerpb.GetFlowsRequest{Number: 10}, seq(20, 29)},
		{"first 10", &observerpb.GetFlowsRequest{Number: 10, First: true}, seq(0, 9)},
		{"number 0 is all", &observerpb.GetFlowsRequest{}, seq(0, 29)},
		{"first with number 0 is all", &observerpb.GetFlowsRequest{First: true}, seq(0, 29)},
		{"--all", &observerpb.GetFlowsRequest{Number: math.MaxUint64}, seq(0, 29)},
		{"more than kept", &observerpb.GetFlowsRequest{Number: 1000}, seq(0, 29)},
		// Hubble's server reads extensions only through its plugins' hooks.
		{"extensions are ignored", &observerpb.GetFlowsRequest{Number: 1, Extensions: mustAny(t, &observerpb.ServerStatusRequest{})}, seq(29, 29)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, lost, err := getFlows(t, c, tc.req)
			if err != nil || len(lost) > 0 || !slices.Equal(got, tc.want) {
				t.Fatalf("flows %v, lost %v, err %v; want flows %v", got, lost, err, tc.want)
			}
		})
	}
}

func mustAny(t *testing.T, m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestGetFlowsSinceUntil: since and until bound the flows' time, both ends
// included; since wins over first and number chooses among what it selects.
func TestGetFlowsSinceUntil(t *testing.T) {
	store, t0 := history(30)
	_, c := serve(t, store, observer.Config{})
	at := func(i int) *timestamppb.Timestamp { return timestamppb.New(t0.Add(time.Duration(i) * time.Second)) }
	for _, tc := range []struct {
		name string
		req  *observerpb.GetFlowsRequest
		want []int
	}{
		{"since and until", &observerpb.GetFlowsRequest{Since: at(5), Until: at(9)}, seq(5, 9)},
		{"since", &observerpb.GetFlowsRequest{Since: at(25)}, seq(25, 29)},
		{"until", &observerpb.GetFlowsRequest{Until: at(3)}, seq(0, 3)},
		{"since between flows", &observerpb.GetFlowsRequest{Since: timestamppb.New(t0.Add(27500 * time.Millisecond))}, seq(28, 29)},
		{"since, first 3", &observerpb.GetFlowsRequest{Since: at(10), Number: 3, First: true}, seq(10, 12)},
		{"since, number 3", &observerpb.GetFlowsRequest{Since: at(10), Number: 3}, seq(10, 12)},
		{"until, last 2", &observerpb.GetFlowsRequest{Until: at(9), Number: 2}, seq(8, 9)},
		{"since before the history", &observerpb.GetFlowsRequest{Since: timestamppb.New(t0.Add(-time.Hour))}, seq(0, 29)},
		{"since after the history", &observerpb.GetFlowsRequest{Since: at(31)}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, lost, err := getFlows(t, c, tc.req)
			if err != nil || len(lost) > 0 || !slices.Equal(got, tc.want) {
				t.Fatalf("flows %v, lost %v, err %v; want flows %v", got, lost, err, tc.want)
			}
		})
	}
}

// TestGetFlowsWhitelistBlacklist: the filters select as Hubble defines them,
// a flow passing any whitelist filter and no blacklist filter.
func TestGetFlowsWhitelistBlacklist(t *testing.T) {
	store := flows.NewStore(100)
	t0 := time.Now()
	for i := range 10 {
		r := newFlow(i, t0.Add(time.Duration(i)*time.Millisecond))
		if i%2 == 1 {
			r.Flow.Verdict = flows.VerdictDropped
		}
		if i >= 5 {
			r.Flow.L4.TCP.DestinationPort = 443
		}
		store.Add(r)
	}
	_, c := serve(t, store, observer.Config{})
	got, _, err := getFlows(t, c, &observerpb.GetFlowsRequest{
		Whitelist: []*flowpb.FlowFilter{{Verdict: []flowpb.Verdict{flowpb.Verdict_DROPPED}}, {SourcePod: []string{"client/client-0"}}},
		Blacklist: []*flowpb.FlowFilter{{DestinationPort: []string{"443"}}},
	})
	if want := []int{0, 1, 3}; err != nil || !slices.Equal(got, want) {
		t.Fatalf("flows %v, err %v; want %v (dropped or from client-0, not to 443)", got, err, want)
	}
	// number counts the flows the filters pass, not those they drop.
	got, _, err = getFlows(t, c, &observerpb.GetFlowsRequest{Number: 2,
		Whitelist: []*flowpb.FlowFilter{{Verdict: []flowpb.Verdict{flowpb.Verdict_DROPPED}}}})
	if want := []int{7, 9}; err != nil || !slices.Equal(got, want) {
		t.Fatalf("last 2 dropped: flows %v, err %v; want %v", got, err, want)
	}
}

// TestGetFlowsBadRequests: what cannot be served is InvalidArgument naming the
// field, before any flow is sent.
func TestGetFlowsBadRequests(t *testing.T) {
	store, t0 := history(5)
	_, c := serve(t, store, observer.Config{})
	legacy := &observerpb.GetFlowsRequest_Experimental{}
	legacy.ProtoReflect().SetUnknown(legacyMask(t, "verdict", "source.no_such_field"))
	for _, tc := range []struct {
		name, field string
		req         *observerpb.GetFlowsRequest
	}{
		{"first and follow", "first", &observerpb.GetFlowsRequest{First: true, Follow: true}},
		{"since after until", "since", &observerpb.GetFlowsRequest{Since: timestamppb.New(t0.Add(time.Minute)), Until: timestamppb.New(t0)}},
		{"invalid since", "since", &observerpb.GetFlowsRequest{Since: &timestamppb.Timestamp{Nanos: 2e9}}},
		{"invalid until", "until", &observerpb.GetFlowsRequest{Until: &timestamppb.Timestamp{Seconds: math.MaxInt64}}},
		{"malformed whitelist CIDR", "whitelist[1].source_ip[0]", &observerpb.GetFlowsRequest{
			Whitelist: []*flowpb.FlowFilter{{}, {SourceIp: []string{"10.0.0/8"}}}}},
		{"malformed blacklist port", "blacklist[0].destination_port[0]", &observerpb.GetFlowsRequest{
			Blacklist: []*flowpb.FlowFilter{{DestinationPort: []string{"http"}}}}},
		{"unknown field-mask path", "field_mask.paths[1]", &observerpb.GetFlowsRequest{
			FieldMask: &fieldmaskpb.FieldMask{Paths: []string{"verdict", "source.no_such_field"}}}},
		{"empty field-mask path", "field_mask.paths[0]", &observerpb.GetFlowsRequest{
			FieldMask: &fieldmaskpb.FieldMask{Paths: []string{""}}}},
		{"field-mask path through a list", "field_mask.paths[0]", &observerpb.GetFlowsRequest{
			FieldMask: &fieldmaskpb.FieldMask{Paths: []string{"egress_allowed_by.name"}}}},
		{"unknown legacy field-mask path", "experimental.field_mask.paths[1]", &observerpb.GetFlowsRequest{Experimental: legacy}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, _, err := getFlows(t, c, tc.req)
			if len(got) > 0 {
				t.Fatalf("%d flows sent before the error", len(got))
			}
			wantInvalid(t, err, tc.field)
		})
	}
}

// legacyMask is experimental.field_mask as older hubble CLIs encode it: v1.19.4's
// API reserved that field, so it travels as unknown bytes.
func legacyMask(t *testing.T, paths ...string) []byte {
	b, err := proto.Marshal(&fieldmaskpb.FieldMask{Paths: paths})
	if err != nil {
		t.Fatal(err)
	}
	return protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), b)
}

// TestGetFlowsFieldMask: a field mask keeps only its fields in each flow,
// as Hubble applies it: the response's time and node name are the masked
// flow's, a masked message on the way is present even when empty, and the
// agent's own copy of the flow is untouched.
func TestGetFlowsFieldMask(t *testing.T) {
	store, t0 := history(3)
	_, c := serve(t, store, observer.Config{})
	legacy := &observerpb.GetFlowsRequest_Experimental{}
	legacy.ProtoReflect().SetUnknown(legacyMask(t, "time", "source.namespace", "l4.TCP.destination_port", "l4.UDP.source_port", "ethernet.source"))
	for _, req := range []*observerpb.GetFlowsRequest{
		{FieldMask: &fieldmaskpb.FieldMask{Paths: []string{"time", "source.namespace", "l4.TCP.destination_port", "l4.UDP.source_port", "ethernet.source"}}},
		{Experimental: legacy},
	} {
		resps := recvAll(t, c, req)
		if len(resps) != 3 {
			t.Fatalf("%d responses, want 3", len(resps))
		}
		for i, resp := range resps {
			want := &flowpb.Flow{
				Time:     timestamppb.New(t0.Add(time.Duration(i) * time.Second)),
				Source:   &flowpb.Endpoint{Namespace: "client"},
				L4:       &flowpb.Layer4{Protocol: &flowpb.Layer4_TCP{TCP: &flowpb.TCP{DestinationPort: 80}}},
				Ethernet: &flowpb.Ethernet{}, // Hubble's mask creates it, as the flow has none
			}
			if !proto.Equal(resp.GetFlow(), want) {
				t.Fatalf("masked flow %d = %v, want %v", i, resp.GetFlow(), want)
			}
			if !proto.Equal(resp.GetTime(), want.GetTime()) || resp.GetNodeName() != "" {
				t.Fatalf("response time %v node %q: want the masked flow's, %v and none", resp.GetTime(), resp.GetNodeName(), want.GetTime())
			}
		}
	}
	// Unmasked, the same flows are whole: the mask changed a copy.
	resps := recvAll(t, c, &observerpb.GetFlowsRequest{Number: 1})
	if f := resps[0].GetFlow(); f.GetVerdict() != flowpb.Verdict_FORWARDED || f.GetSource().GetPodName() != "client-2" || resps[0].GetNodeName() != node {
		t.Fatalf("unmasked flow after masked reads: %v", resps[0])
	}
	// An empty mask selects whole flows, as in Hubble.
	resps = recvAll(t, c, &observerpb.GetFlowsRequest{Number: 1, FieldMask: &fieldmaskpb.FieldMask{}})
	if f := resps[0].GetFlow(); f.GetDestination().GetPodName() != "server" {
		t.Fatalf("flow with an empty mask: %v", f)
	}
}

func recvAll(t *testing.T, c observerpb.ObserverClient, req *observerpb.GetFlowsRequest) []*observerpb.GetFlowsResponse {
	t.Helper()
	stream, err := c.GetFlows(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	var out []*observerpb.GetFlowsResponse
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("GetFlows(%v): %v", req, err)
		}
		out = append(out, resp)
	}
}
