package hubblecli

import (
	"context"
	"net"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	relaypb "github.com/cilium/cilium/api/v1/relay"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// answers answers GetFlows by the request's first source_ip, in the ways a
// refusal can come: as hubble-relay v1.19.4 forwards agents' errors (one
// merged NODE_ERROR event with the status's text, the call ending OK), as a
// server refusing the call itself, with an error other than InvalidArgument,
// or not refusing at all.
type answers struct {
	observerpb.UnimplementedObserverServer
}

const badIP = `whitelist[0].source_ip[0]: "10.0.0.300" is not an IP or CIDR`

func (answers) GetFlows(req *observerpb.GetFlowsRequest, s observerpb.Observer_GetFlowsServer) error {
	nodeStatus := func(state relaypb.NodeState, msg string, nodes ...string) error {
		return s.Send(&observerpb.GetFlowsResponse{NodeName: "relay", Time: timestamppb.Now(), ResponseTypes: &observerpb.GetFlowsResponse_NodeStatus{
			NodeStatus: &relaypb.NodeStatusEvent{StateChange: state, NodeNames: nodes, Message: msg}}})
	}
	switch req.GetWhitelist()[0].GetSourceIp()[0] {
	case "relay":
		_ = nodeStatus(relaypb.NodeState_NODE_CONNECTED, "", "kind-worker", "kind-worker2")
		return nodeStatus(relaypb.NodeState_NODE_ERROR, status.Error(codes.InvalidArgument, badIP).Error(), "kind-worker", "kind-worker2")
	case "server":
		return status.Error(codes.InvalidArgument, badIP)
	case "unavailable":
		return nodeStatus(relaypb.NodeState_NODE_ERROR, status.Error(codes.Unavailable, "connection refused").Error(), "kind-worker")
	default:
		return s.Send(&observerpb.GetFlowsResponse{NodeName: "kind-worker", Time: timestamppb.Now(), ResponseTypes: &observerpb.GetFlowsResponse_Flow{
			Flow: &flowpb.Flow{Time: timestamppb.Now(), Verdict: flowpb.Verdict_FORWARDED, NodeName: "kind-worker"}}})
	}
}

func TestRefusalTellsWhoRefusedAndHow(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	observerpb.RegisterObserverServer(srv, answers{})
	go func() { _ = srv.Serve(l) }()
	defer srv.Stop()
	conn, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := observerpb.NewObserverClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	check := func(t *testing.T, via string, got Refusal, mode string) {
		t.Helper()
		switch mode {
		case "relay":
			if got.Status != "" || len(got.Other) != 0 || got.ByNode["kind-worker"] != badIP || got.ByNode["kind-worker2"] != badIP || len(got.ByNode) != 2 {
				t.Errorf("%s, refused by both agents through the relay: %+v", via, got)
			}
		case "server":
			if got.Status != badIP || len(got.ByNode) != 0 || len(got.Other) != 0 {
				t.Errorf("%s, refused by the server itself: %+v", via, got)
			}
		case "unavailable":
			if got.Status != "" || len(got.ByNode) != 0 || len(got.Other) != 1 {
				t.Errorf("%s, an agent failing otherwise is no InvalidArgument: %+v", via, got)
			}
		default:
			if got.Status != "" || len(got.ByNode) != 0 || got.Flows != 1 || len(got.Other) != 1 {
				t.Errorf("%s, not refused: %+v", via, got)
			}
		}
	}
	modes := []string{"relay", "server", "unavailable", "10.0.0.1"}
	t.Run("gRPC", func(t *testing.T) {
		for _, mode := range modes {
			check(t, "gRPC", ReadRefusal(ctx, client, &observerpb.GetFlowsRequest{Whitelist: []*flowpb.FlowFilter{{SourceIp: []string{mode}}}}), mode)
		}
	})
	t.Run("CLI", func(t *testing.T) {
		cli := realCLI(t, repoRoot)
		cli.Server = l.Addr().String()
		for _, mode := range modes {
			r, err := cli.Run(ctx, "observe", "--from-ip", mode, "-o", "json")
			if err != nil {
				t.Fatal(err)
			}
			check(t, "the CLI ("+r.String()+")", r.Refusal(), mode)
		}
	})
}
