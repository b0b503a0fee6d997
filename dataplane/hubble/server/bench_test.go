package server_test

import (
	"testing"

	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/flatnet/flatnet/dataplane/hubble/server"
)

// BenchmarkMutualTLSConnect is what each new client costs: a TCP connection, a
// TLS 1.3 handshake with client certificate (ECDSA P-256) under the reloading
// config, HTTP/2 setup and one health check, client and server in this process.
func BenchmarkMutualTLSConnect(b *testing.B) {
	p := newPKI(b, "hubble CA")
	files := tlsFiles(b.TempDir())
	install(b, files, p)
	s := start(b, fake.NewClientset(), server.Options{TLS: files, MaxConnections: 1 << 16})
	creds := credentials.NewTLS(clientTLS(p, &p.client, nodeServerName))
	addr := s.TCPAddr().String()
	b.ReportAllocs()
	for b.Loop() {
		conn := dial(b, addr, creds)
		if st, err := check(conn, ""); err != nil || st != healthpb.HealthCheckResponse_SERVING {
			b.Fatal(st, err)
		}
		conn.Close()
	}
}
