package observer_test

import (
	"context"
	"log"
	"net"

	observerpb "github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/grpc"

	"github.com/flatnet/flatnet/dataplane/flows"
	"github.com/flatnet/flatnet/dataplane/hubble/observer"
)

// How an agent serves its flows to Hubble's tools: one store, filled by
// flows.Run with the observer's Observe among its observers, read by the
// Observer service on the agent's gRPC server (TLS, the Peer and health
// services are the server's).
func ExampleNew() {
	ctx := context.Background()
	store := flows.NewStore(flows.DefaultCapacity)
	obs := observer.New(store, observer.Config{NodeName: "kind-worker", Version: "flatnet v0.1.0"})
	go func() {
		var events flows.EventReader // the datapath's flow reader
		var enricher *flows.Enricher
		_ = flows.Run(ctx, events, enricher, store, obs.Observe)
	}()
	srv := grpc.NewServer()
	observerpb.RegisterObserverServer(srv, obs)
	lis, err := net.Listen("tcp", ":4244")
	if err != nil {
		log.Fatal(err)
	}
	log.Fatal(srv.Serve(lis))
}
