// Package server is the agent's Hubble gRPC endpoint, as the Cilium agent's Hubble
// server: the Observer and Peer services and grpc.health.v1, on a TCP address
// (":4244" on the host network: what hubble-relay dials) with mutual TLS, and on
// a node-local unix socket in plaintext (Cilium's hubble.sock). The certificate
// and client CAs are reloaded when their files change (a rotated Secret volume)
// without a restart and without dropping established streams. Connections,
// streams, handshakes and idle peers are bounded so that a misbehaving client
// costs the agent a bounded share of it and nothing of its datapath.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	observerpb "github.com/cilium/cilium/api/v1/observer"
	peerpb "github.com/cilium/cilium/api/v1/peer"
	"golang.org/x/net/netutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/reflection"

	"github.com/flatnet/flatnet/dataplane/endpointapi"
)

// Defaults, Cilium's where it has them.
const (
	DefaultListenAddress = ":4244"
	DefaultSocketPath    = "/run/flatnet/hubble.sock"
	// DefaultMaxConnections bounds the connections of each listener: a relay
	// holds one, a CLI one per command.
	DefaultMaxConnections = 64
	// DefaultMaxConcurrentStreams bounds the streams of one connection.
	DefaultMaxConcurrentStreams = 64
	// DefaultTLSReloadInterval is how often the TLS files are checked for a change.
	DefaultTLSReloadInterval = 5 * time.Second
	// DefaultMaxRequestBytes bounds one request message: Hubble's requests are
	// filters, a few KiB even with hundreds of them (gRPC's default is 4 MiB).
	DefaultMaxRequestBytes = 1 << 20
	// DefaultHandshakeTimeout bounds a new connection's TLS and HTTP/2 setup.
	DefaultHandshakeTimeout = 10 * time.Second
)

// ObserverServiceName is what the hubble CLI (hubble status) and Cilium ask the
// health service about: Hubble's own name (pkg/hubble/api/v1), not the gRPC
// service's ("observer.Observer").
const ObserverServiceName = "hubble.server.Observer"

// Options configure a Server. Zero limits take the defaults.
type Options struct {
	// Observer is registered when set (nil: not served, and not reported healthy).
	Observer observerpb.ObserverServer
	// Peer is registered when set.
	Peer peerpb.PeerServer
	// Version is sent to every client in the hubble-server-version response
	// header, as the Cilium agent's Hubble server sends its version: the hubble
	// CLI reads it, as a semantic version, to warn when it is older than the
	// server ("" = no header).
	Version string

	// ListenAddress is the TCP address ("" = none); it serves mutual TLS with
	// TLS unless DisableTLS.
	ListenAddress string
	TLS           TLSFiles
	// DisableTLS serves ListenAddress in plaintext: every client that reaches
	// the address reads every namespace's flows.
	DisableTLS bool
	// SocketPath is the node-local plaintext unix socket ("" = none); 0600,
	// root on the node only.
	SocketPath string

	MaxConnections       int
	MaxConcurrentStreams uint32
	MaxRequestBytes      int
	TLSReloadInterval    time.Duration
	// HandshakeTimeout: a connection that has not finished its setup by then is
	// closed, giving its slot of MaxConnections back.
	HandshakeTimeout time.Duration
}

// Validate checks o before anything listens, naming the flag to fix.
func (o Options) Validate() error {
	if o.ListenAddress != "" {
		if _, _, err := net.SplitHostPort(o.ListenAddress); err != nil {
			return fmt.Errorf("--hubble-listen-address %q: want host:port, e.g. :4244: %w", o.ListenAddress, err)
		}
		if !o.DisableTLS {
			if err := o.TLS.validate(); err != nil {
				return err
			}
		}
	}
	return nil
}

// Server is the running Hubble endpoint: one gRPC server per listener (TLS is a
// property of a gRPC server), sharing the services and the health state.
type Server struct {
	log     *slog.Logger
	health  *health.Server
	servers []*grpc.Server
	tcp     net.Addr
	cancel  context.CancelFunc
	done    sync.WaitGroup
}

// Start validates o, listens and serves until Stop. It fails only when a
// listener cannot be opened; a TLS certificate not (yet) readable is logged and
// retried, its handshakes failing meanwhile.
func Start(o Options, log *slog.Logger) (*Server, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if o.MaxConnections <= 0 {
		o.MaxConnections = DefaultMaxConnections
	}
	if o.MaxConcurrentStreams == 0 {
		o.MaxConcurrentStreams = DefaultMaxConcurrentStreams
	}
	if o.TLSReloadInterval <= 0 {
		o.TLSReloadInterval = DefaultTLSReloadInterval
	}
	if o.MaxRequestBytes <= 0 {
		o.MaxRequestBytes = DefaultMaxRequestBytes
	}
	if o.HandshakeTimeout <= 0 {
		o.HandshakeTimeout = DefaultHandshakeTimeout
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{log: log, health: health.NewServer(), cancel: cancel}
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	if o.Observer != nil {
		s.health.SetServingStatus(ObserverServiceName, healthpb.HealthCheckResponse_SERVING)
	}
	fail := func(err error) (*Server, error) {
		s.Stop()
		return nil, err
	}
	if o.SocketPath != "" {
		l, err := endpointapi.ListenUnix(o.SocketPath)
		if err != nil {
			return fail(fmt.Errorf("hubble socket: %w", err))
		}
		s.serve(o, l, nil, "unix://"+o.SocketPath)
	}
	if o.ListenAddress != "" {
		l, err := net.Listen("tcp", o.ListenAddress)
		if err != nil {
			return fail(fmt.Errorf("hubble server: listen on %s: %w", o.ListenAddress, err))
		}
		s.tcp = l.Addr()
		var creds credentials.TransportCredentials
		if o.DisableTLS {
			log.Warn("hubble server: serving plaintext (--hubble-disable-tls): every client reaching this address reads every namespace's flows", "address", o.ListenAddress)
		} else {
			r := newReloadingTLS(o.TLS, log)
			s.done.Add(1)
			go func() {
				defer s.done.Done()
				r.run(ctx, o.TLSReloadInterval)
			}()
			creds = credentials.NewTLS(r.serverConfig())
		}
		s.serve(o, l, creds, o.ListenAddress)
	}
	return s, nil
}

// TCPAddr is the address the TCP listener took (nil without one).
func (s *Server) TCPAddr() net.Addr { return s.tcp }

// serve runs one gRPC server on l; creds nil is plaintext.
func (s *Server) serve(o Options, l net.Listener, creds credentials.TransportCredentials, what string) {
	opts := []grpc.ServerOption{
		grpc.MaxConcurrentStreams(o.MaxConcurrentStreams),
		grpc.MaxRecvMsgSize(o.MaxRequestBytes),
		grpc.ConnectionTimeout(o.HandshakeTimeout),
		// Clients may ping (hubble-relay keeps idle connections to its peers),
		// but not flood; the server pings quiet clients and drops dead ones, so
		// a vanished relay's follow streams end.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
	}
	if creds != nil {
		opts = append(opts, grpc.Creds(creds))
	}
	if o.Version != "" {
		md := metadata.Pairs(VersionHeader, o.Version)
		opts = append(opts, grpc.ChainUnaryInterceptor(versionUnary(md)), grpc.ChainStreamInterceptor(versionStream(md)))
	}
	g := grpc.NewServer(opts...)
	healthpb.RegisterHealthServer(g, s.health)
	if o.Observer != nil {
		observerpb.RegisterObserverServer(g, o.Observer)
	}
	if o.Peer != nil {
		peerpb.RegisterPeerServer(g, o.Peer)
	}
	reflection.Register(g)
	s.servers = append(s.servers, g)
	s.done.Add(1)
	go func() {
		defer s.done.Done()
		s.log.Info("hubble server: serving", "address", what, "tls", creds != nil)
		if err := g.Serve(netutil.LimitListener(l, o.MaxConnections)); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			s.log.Error("hubble server: stopped serving; the agent runs on without it", "address", what, "error", err)
		}
	}()
}

// VersionHeader is the response header naming the server's version (Hubble's
// defaults.GRPCMetadataServerVersionKey).
const VersionHeader = "hubble-server-version"

// versionUnary sets md as the response header of a unary call. It is set after
// the handler, as Cilium does, so that a handler's own headers come first.
func versionUnary(md metadata.MD) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		resp, err := handler(ctx, req)
		_ = grpc.SetHeader(ctx, md) // fails only once headers are sent, which a handler here never does
		return resp, err
	}
}

// versionStream sets md as the response header of a stream, sent with its
// first message (a follower waiting for flows gets it then).
func versionStream(md metadata.MD) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		_ = ss.SetHeader(md) // fails only once headers are sent: not before the handler runs
		return handler(srv, ss)
	}
}

// Stop reports NOT_SERVING, lets unary calls finish for a moment, then closes
// every connection (follow and Notify streams never finish on their own).
func (s *Server) Stop() {
	s.health.Shutdown()
	var wg sync.WaitGroup
	for _, g := range s.servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := time.AfterFunc(2*time.Second, g.Stop)
			g.GracefulStop()
			t.Stop()
		}()
	}
	wg.Wait()
	s.cancel()
	s.done.Wait()
}
