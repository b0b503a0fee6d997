// Package observertest serves an Observer service in-process on a loopback TCP
// port, beside gRPC health reporting it serving, and dials it with the upstream
// generated client, so tests of the
// observer, and of what reads from it (a relay, exporters), go through real gRPC
// on a real socket: flow control, deadlines and status codes as in production.
package observertest

import (
	"net"
	"testing"

	observerpb "github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// ObserverServiceName is the service Hubble's health check asks about.
const ObserverServiceName = "hubble.server.Observer"

// Server is a running test server and a client connected to it.
type Server struct {
	// Addr is the loopback host:port it listens on.
	Addr   string
	Conn   *grpc.ClientConn
	Client observerpb.ObserverClient
	grpc   *grpc.Server
}

// Serve serves srv until the test ends (opts configure the gRPC server); the
// connection and the server are closed by tb.Cleanup, streams still open
// included.
func Serve(tb testing.TB, srv observerpb.ObserverServer, opts ...grpc.ServerOption) *Server {
	tb.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("listening for the observer: %v", err)
	}
	gs := grpc.NewServer(opts...)
	observerpb.RegisterObserverServer(gs, srv)
	// As the agent's server does: `hubble status` checks this before anything.
	hs := health.NewServer()
	hs.SetServingStatus(ObserverServiceName, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(gs, hs)
	served := make(chan error, 1)
	go func() { served <- gs.Serve(lis) }()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		gs.Stop()
		tb.Fatalf("dialing the observer at %s: %v", lis.Addr(), err)
	}
	tb.Cleanup(func() {
		_ = conn.Close()
		gs.Stop()
		if err := <-served; err != nil {
			tb.Errorf("observer server: %v", err)
		}
	})
	return &Server{Addr: lis.Addr().String(), Conn: conn, Client: observerpb.NewObserverClient(conn), grpc: gs}
}

// Dial opens another connection to the server with opts (a small receive
// window, say), closed when the test ends.
func (s *Server) Dial(tb testing.TB, opts ...grpc.DialOption) observerpb.ObserverClient {
	tb.Helper()
	conn, err := grpc.NewClient(s.Addr, append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)...)
	if err != nil {
		tb.Fatalf("dialing the observer at %s: %v", s.Addr, err)
	}
	tb.Cleanup(func() { _ = conn.Close() })
	return observerpb.NewObserverClient(conn)
}

// Stop stops the server at once, ending every stream (as an agent shutting
// down does).
func (s *Server) Stop() { s.grpc.Stop() }
