package server_test

import (
	"context"
	"io"
	"path/filepath"
	"testing"
	"time"

	observerpb "github.com/cilium/cilium/api/v1/observer"
	peerpb "github.com/cilium/cilium/api/v1/peer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/flatnet/flatnet/dataplane/flows"
	hubbleobserver "github.com/flatnet/flatnet/dataplane/hubble/observer"
	"github.com/flatnet/flatnet/dataplane/hubble/server"
)

// Every response carries hubble-server-version, as from the Cilium agent's
// Hubble server: the hubble CLI reads it from the first response of whatever
// it calls, unary (hubble status) or stream (hubble observe), and the relay's
// peer stream gets it too.
func TestResponsesNameTheServerVersion(t *testing.T) {
	const version = "1.19.4"
	sock := filepath.Join(t.TempDir(), "hubble.sock")
	obs := hubbleobserver.New(flows.NewStore(10), hubbleobserver.Config{NodeName: "kind-worker", Version: "flatnet v0.1.0"})
	start(t, fake.NewClientset(kindWorker()), server.Options{Observer: obs, Version: version, DisableTLS: true, SocketPath: sock})
	conn := dial(t, "unix://"+sock, insecure.NewCredentials())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	want := func(call string, md metadata.MD) {
		t.Helper()
		if got := md.Get(server.VersionHeader); len(got) != 1 || got[0] != version {
			t.Errorf("%s: header %s = %q, want [%q] (all headers: %v)", call, server.VersionHeader, got, version, md)
		}
	}

	var md metadata.MD
	if _, err := observerpb.NewObserverClient(conn).ServerStatus(ctx, &observerpb.ServerStatusRequest{}, grpc.Header(&md)); err != nil {
		t.Fatal(err)
	}
	want("ServerStatus", md)

	flowsStream, err := observerpb.NewObserverClient(conn).GetFlows(ctx, &observerpb.GetFlowsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := flowsStream.Recv(); err != io.EOF {
		t.Fatalf("GetFlows over an empty history: %v, want its end", err)
	}
	md, err = flowsStream.Header()
	if err != nil {
		t.Fatal(err)
	}
	want("GetFlows", md)

	notify, err := peerpb.NewPeerClient(conn).Notify(ctx, &peerpb.NotifyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	md, err = notify.Header()
	if err != nil {
		t.Fatal(err)
	}
	want("Notify", md)
}

// Without a version, no header: a client sees no version rather than an empty one.
func TestNoVersionNoHeader(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "hubble.sock")
	start(t, fake.NewClientset(kindWorker()), server.Options{Observer: hubbleobserver.New(flows.NewStore(10), hubbleobserver.Config{}), DisableTLS: true, SocketPath: sock})
	conn := dial(t, "unix://"+sock, insecure.NewCredentials())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var md metadata.MD
	if _, err := observerpb.NewObserverClient(conn).ServerStatus(ctx, &observerpb.ServerStatusRequest{}, grpc.Header(&md)); err != nil {
		t.Fatal(err)
	}
	if got := md.Get(server.VersionHeader); len(got) != 0 {
		t.Errorf("header %s = %q without a version", server.VersionHeader, got)
	}
}
