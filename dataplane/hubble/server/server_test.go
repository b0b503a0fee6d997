package server_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	observerpb "github.com/cilium/cilium/api/v1/observer"
	peerpb "github.com/cilium/cilium/api/v1/peer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/flatnet/flatnet/dataplane/hubble/certs"
	"github.com/flatnet/flatnet/dataplane/hubble/peer"
	"github.com/flatnet/flatnet/dataplane/hubble/server"
)

// The names hubble-relay uses: it dials a node with the peer's TLS server name.
const (
	serverWildcard = "*.default.hubble-grpc.cilium.io"
	nodeServerName = "kind-worker.default.hubble-grpc.cilium.io"
	relayName      = "*.hubble-relay.cilium.io"
)

// pki is one CA with a server and a client certificate it signed.
type pki struct {
	ca, server, client certs.KeyPair
}

func newPKI(t testing.TB, name string) pki {
	t.Helper()
	now := time.Now()
	ca, err := certs.NewCA(name, now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := certs.Issue(ca, certs.Leaf{DNSName: serverWildcard, Usage: x509.ExtKeyUsageServerAuth}, now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cli, err := certs.Issue(ca, certs.Leaf{DNSName: relayName, Usage: x509.ExtKeyUsageClientAuth}, now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return pki{ca: ca, server: srv, client: cli}
}

// writeAtomic replaces path as the kubelet updates a Secret volume: the new
// content appears whole.
func writeAtomic(t testing.TB, path string, b []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// install writes p's server side (certificate, key, client CA) where files says.
func install(t testing.TB, files server.TLSFiles, p pki) {
	writeAtomic(t, files.KeyFile, p.server.KeyPEM)
	writeAtomic(t, files.CertFile, p.server.CertPEM)
	writeAtomic(t, files.ClientCAFiles[0], p.ca.CertPEM)
}

func tlsFiles(dir string) server.TLSFiles {
	return server.TLSFiles{
		CertFile:      filepath.Join(dir, "server.crt"),
		KeyFile:       filepath.Join(dir, "server.key"),
		ClientCAFiles: []string{filepath.Join(dir, "client-ca.crt")},
	}
}

// observer is only here so that the Observer service is registered; its methods
// answer Unimplemented.
type observer struct {
	observerpb.UnimplementedObserverServer
}

// start runs a Server with the Peer service over kube's nodes, on 127.0.0.1:0 and
// a unix socket in a temporary directory, with opts' files and limits.
func start(t testing.TB, kube kubernetes.Interface, opts server.Options) *server.Server {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	factory := informers.NewSharedInformerFactory(kube, 0)
	opts.Peer = peer.New(factory.Core().V1().Nodes().Informer(), peer.Options{Port: 4244})
	factory.Start(ctx.Done())
	if opts.ListenAddress == "" {
		opts.ListenAddress = "127.0.0.1:0"
	}
	if opts.TLSReloadInterval == 0 {
		opts.TLSReloadInterval = 20 * time.Millisecond
	}
	s, err := server.Start(opts, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.Stop()
		cancel()
		factory.Shutdown()
	})
	return s
}

// clientTLS is what hubble-relay dials with: its client certificate, the CA it
// trusts, the peer's server name.
func clientTLS(trust pki, cert *certs.KeyPair, serverName string) *tls.Config {
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(trust.ca.CertPEM)
	c := &tls.Config{RootCAs: roots, ServerName: serverName, MinVersion: tls.VersionTLS13}
	if cert != nil {
		kp, err := tls.X509KeyPair(cert.CertPEM, cert.KeyPEM)
		if err != nil {
			panic(err)
		}
		c.Certificates = []tls.Certificate{kp}
	}
	return c
}

func dial(t testing.TB, target string, creds credentials.TransportCredentials) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// check asks conn's health service about service, in at most 5 s.
func check(conn *grpc.ClientConn, service string) (healthpb.HealthCheckResponse_ServingStatus, error) {
	return checkWithin(conn, service, 5*time.Second)
}

func checkWithin(conn *grpc.ClientConn, service string, d time.Duration) (healthpb.HealthCheckResponse_ServingStatus, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	r, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: service})
	return r.GetStatus(), err
}

func kindWorker() *corev1.Node {
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "kind-worker"},
		Status:     corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "10.224.0.3"}}},
	}
}

func TestMutualTLS(t *testing.T) {
	p, other := newPKI(t, "hubble CA"), newPKI(t, "another CA")
	files := tlsFiles(t.TempDir())
	install(t, files, p)
	s := start(t, fake.NewClientset(), server.Options{Observer: observer{}, TLS: files})
	addr := s.TCPAddr().String()

	relay := dial(t, addr, credentials.NewTLS(clientTLS(p, &p.client, nodeServerName)))
	for _, svc := range []string{"", "hubble.server.Observer"} {
		if st, err := check(relay, svc); err != nil || st != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("relay's health check of %q: %v %v, want SERVING", svc, st, err)
		}
	}

	for name, creds := range map[string]credentials.TransportCredentials{
		"no client certificate":                      credentials.NewTLS(clientTLS(p, nil, nodeServerName)),
		"a client certificate of another CA":         credentials.NewTLS(clientTLS(p, &other.client, nodeServerName)),
		"the server's own certificate as the client": credentials.NewTLS(clientTLS(p, &p.server, nodeServerName)),
		"plaintext": insecure.NewCredentials(),
	} {
		if st, err := check(dial(t, addr, creds), ""); status.Code(err) != codes.Unavailable {
			t.Errorf("%s: %v %v, want refused (Unavailable)", name, st, err)
		}
	}
	// hubble-relay reaches the Peer service through a Service (Cilium's
	// hubble-peer) under the name hubble-peer.<cluster>.hubble-grpc.cilium.io:
	// the same certificate serves it.
	viaService := dial(t, addr, credentials.NewTLS(clientTLS(p, &p.client, "hubble-peer.default.hubble-grpc.cilium.io")))
	if st, err := check(viaService, ""); err != nil || st != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("relay through the hubble-peer Service name: %v %v", st, err)
	}
	// The certificate names every node of the cluster, and only those.
	if _, err := check(dial(t, addr, credentials.NewTLS(clientTLS(p, &p.client, "kind-worker.other.hubble-grpc.cilium.io"))), ""); status.Code(err) != codes.Unavailable {
		t.Errorf("another cluster's server name: %v, want the client to refuse the server", err)
	}
}

func TestUnixSocketIsPlaintextAndRootOnly(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "hubble.sock")
	files := tlsFiles(t.TempDir())
	install(t, files, newPKI(t, "hubble CA"))
	start(t, fake.NewClientset(kindWorker()), server.Options{TLS: files, SocketPath: sock})
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want 0600", fi.Mode().Perm())
	}
	conn := dial(t, "unix://"+sock, insecure.NewCredentials())
	if st, err := check(conn, ""); err != nil || st != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health over the socket: %v %v", st, err)
	}
	// Without an Observer the service is neither served nor reported healthy.
	if _, err := check(conn, "hubble.server.Observer"); status.Code(err) != codes.NotFound {
		t.Errorf("health of the absent Observer: %v, want NotFound", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := observerpb.NewObserverClient(conn).ServerStatus(ctx, &observerpb.ServerStatusRequest{}); status.Code(err) != codes.Unimplemented {
		t.Errorf("ServerStatus without an Observer: %v, want Unimplemented", err)
	}
	n, err := peerpb.NewPeerClient(conn).Notify(ctx, &peerpb.NotifyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if cn, err := n.Recv(); err != nil || cn.GetName() != "kind-worker" {
		t.Errorf("Notify over the socket: %v %v", cn, err)
	}
}

// servedSerial is the serial number of the certificate a new handshake gets.
func servedSerial(t *testing.T, addr string, cfg *tls.Config) (string, error) {
	t.Helper()
	cfg = cfg.Clone()
	cfg.NextProtos = []string{"h2"}
	c, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		return "", err
	}
	defer c.Close()
	// TLS 1.3 checks the client's certificate after the client's handshake ends:
	// the first read gets either the server's HTTP/2 settings or its refusal.
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err != nil {
		return "", err
	}
	return c.ConnectionState().PeerCertificates[0].SerialNumber.String(), nil
}

func serial(t *testing.T, kp certs.KeyPair) string {
	c, _, err := kp.Parse()
	if err != nil {
		t.Fatal(err)
	}
	return c.SerialNumber.String()
}

// eventually polls f until it returns nil, for at most 10 s.
func eventually(t *testing.T, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still %v after 10s", what, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A rotated certificate and CA are served to new handshakes without a restart,
// while a Notify stream opened before goes on.
func TestRotationKeepsStreams(t *testing.T) {
	ctx := context.Background()
	p := newPKI(t, "hubble CA")
	files := tlsFiles(t.TempDir())
	install(t, files, p)
	kube := fake.NewClientset(kindWorker())
	s := start(t, kube, server.Options{TLS: files})
	addr := s.TCPAddr().String()

	conn := dial(t, addr, credentials.NewTLS(clientTLS(p, &p.client, nodeServerName)))
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	stream, err := peerpb.NewPeerClient(conn).Notify(sctx, &peerpb.NotifyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if cn, err := stream.Recv(); err != nil || cn.GetName() != "kind-worker" {
		t.Fatalf("first notification: %v %v", cn, err)
	}
	if got, err := servedSerial(t, addr, clientTLS(p, &p.client, nodeServerName)); err != nil || got != serial(t, p.server) {
		t.Fatalf("before rotation: serial %s, %v; want %s", got, err, serial(t, p.server))
	}

	// The CronJob renews the CA and every certificate; the kubelet rewrites the
	// Secret volume.
	q := newPKI(t, "renewed hubble CA")
	install(t, files, q)
	eventually(t, "new handshakes get the renewed certificate", func() error {
		got, err := servedSerial(t, addr, clientTLS(q, &q.client, nodeServerName))
		if err == nil && got != serial(t, q.server) {
			err = fmt.Errorf("serial %s, want %s", got, serial(t, q.server))
		}
		return err
	})
	// The old client certificate is no longer trusted for new connections.
	if _, err := servedSerial(t, addr, clientTLS(p, &p.client, nodeServerName)); err == nil {
		t.Error("a handshake with the replaced CA's client certificate succeeded")
	}
	if st, err := check(dial(t, addr, credentials.NewTLS(clientTLS(q, &q.client, nodeServerName))), ""); err != nil || st != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("gRPC with the renewed certificates: %v %v", st, err)
	}

	// The stream opened before the rotation still delivers.
	if err := kube.CoreV1().Nodes().Delete(ctx, "kind-worker", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if cn, err := stream.Recv(); err != nil || cn.GetType() != peerpb.ChangeNotificationType_PEER_DELETED {
		t.Fatalf("the stream opened before the rotation: %v %v, want PEER_DELETED", cn, err)
	}
}

// An agent may start before its certificate Secret is mounted: handshakes fail
// until the files appear, then work, with no restart. Files that do not parse
// (caught half-written, or damaged) leave the good certificate in place.
func TestCertificateArrivingLater(t *testing.T) {
	p := newPKI(t, "hubble CA")
	files := tlsFiles(t.TempDir())
	s := start(t, fake.NewClientset(), server.Options{TLS: files})
	addr := s.TCPAddr().String()
	if _, err := servedSerial(t, addr, clientTLS(p, &p.client, nodeServerName)); err == nil {
		t.Fatal("a handshake succeeded with no certificate installed")
	}
	install(t, files, p)
	eventually(t, "the certificate installed after start is served", func() error {
		_, err := servedSerial(t, addr, clientTLS(p, &p.client, nodeServerName))
		return err
	})
	writeAtomic(t, files.CertFile, []byte("-----BEGIN CERTIFICATE-----\ntruncated"))
	time.Sleep(10 * 20 * time.Millisecond) // ten reload intervals
	if got, err := servedSerial(t, addr, clientTLS(p, &p.client, nodeServerName)); err != nil || got != serial(t, p.server) {
		t.Errorf("after a damaged certificate file: serial %s, %v; want the previous certificate %s", got, err, serial(t, p.server))
	}
}

func TestOptionsNameTheFlagToFix(t *testing.T) {
	files := server.TLSFiles{CertFile: "/c", KeyFile: "/k", ClientCAFiles: []string{"/ca"}}
	for _, tc := range []struct {
		opts server.Options
		want string // in the error; "" = valid
	}{
		{server.Options{ListenAddress: ":4244", TLS: files}, ""},
		{server.Options{ListenAddress: ":4244", DisableTLS: true}, ""},
		{server.Options{SocketPath: "/run/x.sock"}, ""},
		{server.Options{ListenAddress: "4244", TLS: files}, "--hubble-listen-address"},
		{server.Options{ListenAddress: ":4244"}, "--hubble-tls-cert-file"},
		{server.Options{ListenAddress: ":4244", TLS: server.TLSFiles{CertFile: "/c", ClientCAFiles: []string{"/ca"}}}, "--hubble-tls-key-file"},
		{server.Options{ListenAddress: ":4244", TLS: server.TLSFiles{CertFile: "/c", KeyFile: "/k"}}, "--hubble-tls-client-ca-files"},
	} {
		err := tc.opts.Validate()
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%+v: %v, want an error naming %q", tc.opts, err, tc.want)
		}
		if tc.want != "" && !strings.Contains(err.Error(), "--hubble-disable-tls") && tc.want != "--hubble-listen-address" {
			t.Errorf("%+v: %v does not say how to serve without TLS", tc.opts, err)
		}
	}
}

// A connection may hold MaxConcurrentStreams streams, a listener
// MaxConnections connections: past that a client waits, the agent is not asked
// for more.
func TestLimits(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "hubble.sock")
	start(t, fake.NewClientset(kindWorker()), server.Options{SocketPath: sock, ListenAddress: "127.0.0.1:0", DisableTLS: true, MaxConnections: 1, MaxConcurrentStreams: 1})
	target := "unix://" + sock
	first := dial(t, target, insecure.NewCredentials())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := peerpb.NewPeerClient(first).Notify(ctx, &peerpb.NotifyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	// The same connection's second stream waits for the first to end.
	if _, err := checkWithin(first, "", time.Second); status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("a second stream on a connection limited to one: %v, want it to wait (DeadlineExceeded)", err)
	}
	// A second connection waits for the first to close.
	second := dial(t, target, insecure.NewCredentials())
	if _, err := checkWithin(second, "", time.Second); status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("a second connection on a listener limited to one: %v, want it to wait (DeadlineExceeded)", err)
	}
	first.Close()
	if st, err := check(second, ""); err != nil || st != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("the second connection once the first closed: %v %v", st, err)
	}
	// A request larger than MaxRequestBytes (default 1 MiB) is refused unread.
	if _, err := check(second, strings.Repeat("x", 2<<20)); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("a 2 MiB request: %v, want ResourceExhausted", err)
	}
}

// A client that connects and says nothing holds its connection slot only until
// the handshake timeout: then a real client gets in.
func TestSilentConnectionGivesItsSlotBack(t *testing.T) {
	p := newPKI(t, "hubble CA")
	files := tlsFiles(t.TempDir())
	install(t, files, p)
	s := start(t, fake.NewClientset(), server.Options{TLS: files, MaxConnections: 1, HandshakeTimeout: 300 * time.Millisecond})
	addr := s.TCPAddr().String()
	silent, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	start := time.Now()
	_ = silent.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := silent.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("the silent connection: %v, want closed by the server", err)
	}
	t.Logf("silent connection closed after %v", time.Since(start).Round(time.Millisecond))
	relay := dial(t, addr, credentials.NewTLS(clientTLS(p, &p.client, nodeServerName)))
	if st, err := check(relay, ""); err != nil || st != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("the relay after the silent client: %v %v", st, err)
	}
}
