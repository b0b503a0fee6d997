package certs_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/flatnet/flatnet/dataplane/hubble/certs"
	"github.com/flatnet/flatnet/dataplane/hubble/server"
	"github.com/flatnet/flatnet/internal/apiservertest"
)

var defaults = certs.Config{
	ClusterName:  "default",
	CAValidity:   certs.DefaultCAValidity,
	CertValidity: certs.DefaultCertValidity,
	RenewBefore:  certs.DefaultRenewBefore,
}

// apiServer starts a real kube-apiserver and returns the Secrets of a new namespace.
func apiServer(t *testing.T) kubernetes.Interface {
	t.Helper()
	env := &envtest.Environment{BinaryAssetsDirectory: apiservertest.Require(t)}
	rc, err := env.Start()
	if err != nil {
		t.Fatalf("start kube-apiserver and etcd: %v", err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	kube, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	return kube
}

func namespace(t *testing.T, kube kubernetes.Interface, name string) corev1client.SecretInterface {
	t.Helper()
	if _, err := kube.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return kube.CoreV1().Secrets(name)
}

// reconcile runs Reconcile at now and returns "secret: action" per Secret.
func reconcile(t *testing.T, secrets corev1client.SecretInterface, cfg certs.Config, now time.Time) string {
	t.Helper()
	changes, err := certs.Reconcile(context.Background(), secrets, cfg, now)
	if err != nil {
		t.Fatalf("reconcile at %s: %v", now, err)
	}
	var out []string
	for _, c := range changes {
		out = append(out, c.Secret+": "+c.Action)
	}
	return strings.Join(out, ", ")
}

type state struct {
	secrets map[string]*corev1.Secret
}

func read(t *testing.T, secrets corev1client.SecretInterface) state {
	t.Helper()
	st := state{secrets: map[string]*corev1.Secret{}}
	for _, n := range []string{certs.CASecret, certs.ServerSecret, certs.RelayClientSecret} {
		s, err := secrets.Get(context.Background(), n, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		st.secrets[n] = s
	}
	return st
}

func (st state) cert(t *testing.T, secret string) *x509.Certificate {
	t.Helper()
	s := st.secrets[secret]
	kp := certs.KeyPair{CertPEM: s.Data[corev1.TLSCertKey], KeyPEM: s.Data[corev1.TLSPrivateKeyKey]}
	if secret == certs.CASecret {
		kp = certs.KeyPair{CertPEM: s.Data[certs.CACertKey], KeyPEM: s.Data[certs.CAKeyKey]}
	}
	c, _, err := kp.Parse()
	if err != nil {
		t.Fatalf("%s: %v", secret, err)
	}
	return c
}

// bundle is the certificates of a certificate Secret's ca.crt.
func (st state) bundle(t *testing.T, secret string) []*x509.Certificate {
	var out []*x509.Certificate
	rest := st.secrets[secret].Data[certs.BundleKey]
	for {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			return out
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
}

// verify checks that secret's certificate chains, at now, to a CA of trustedBy's
// bundle for the usage a peer checks.
func (st state) verify(t *testing.T, secret, trustedBy string, now time.Time, name string, usage x509.ExtKeyUsage) error {
	roots := x509.NewCertPool()
	for _, c := range st.bundle(t, trustedBy) {
		roots.AddCert(c)
	}
	_, err := st.cert(t, secret).Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now, DNSName: name, KeyUsages: []x509.ExtKeyUsage{usage}})
	return err
}

func TestReconcile(t *testing.T) {
	kube := apiServer(t)
	secrets := namespace(t, kube, "flatnet-system")
	t0 := time.Now()

	if got, want := reconcile(t, secrets, defaults, t0), "hubble-ca: created, hubble-server-certs: created, hubble-relay-client-certs: created"; got != want {
		t.Fatalf("first run: %s, want %s", got, want)
	}
	first := read(t, secrets)
	for _, n := range []string{certs.ServerSecret, certs.RelayClientSecret} {
		s := first.secrets[n]
		if s.Type != corev1.SecretTypeTLS || len(s.Data[certs.BundleKey]) == 0 {
			t.Errorf("%s: type %s, keys %v: want kubernetes.io/tls with ca.crt, tls.crt, tls.key", n, s.Type, keys(s.Data))
		}
	}
	if c := first.cert(t, certs.ServerSecret); c.PublicKeyAlgorithm != x509.ECDSA || c.NotAfter.Sub(t0) < defaults.CertValidity-time.Minute {
		t.Errorf("server certificate: %v key, expires %s: want ECDSA for %v", c.PublicKeyAlgorithm, c.NotAfter, defaults.CertValidity)
	}
	if err := first.verify(t, certs.ServerSecret, certs.RelayClientSecret, t0, "kind-worker.default.hubble-grpc.cilium.io", x509.ExtKeyUsageServerAuth); err != nil {
		t.Errorf("the relay does not trust the agents' certificate for a node's server name: %v", err)
	}
	if err := first.verify(t, certs.RelayClientSecret, certs.ServerSecret, t0, "", x509.ExtKeyUsageClientAuth); err != nil {
		t.Errorf("the agents do not trust the relay's client certificate: %v", err)
	}
	if err := first.verify(t, certs.ServerSecret, certs.RelayClientSecret, t0, "", x509.ExtKeyUsageClientAuth); err == nil {
		t.Error("the server certificate is good as a client certificate too; want server use only")
	}
	mutualTLS(t, first)

	// Idempotent: a later run writes nothing.
	if got, want := reconcile(t, secrets, defaults, t0.Add(time.Hour)), "hubble-ca: kept, hubble-server-certs: kept, hubble-relay-client-certs: kept"; got != want {
		t.Fatalf("second run: %s, want %s", got, want)
	}
	if again := read(t, secrets); fmt.Sprint(versions(again)) != fmt.Sprint(versions(first)) {
		t.Errorf("a run with nothing to do wrote: versions %v, were %v", versions(again), versions(first))
	}

	// Within RenewBefore of expiry the certificates are renewed, the CA kept.
	tRenew := first.cert(t, certs.ServerSecret).NotAfter.Add(-defaults.RenewBefore + time.Hour)
	if got, want := reconcile(t, secrets, defaults, tRenew), "hubble-ca: kept, hubble-server-certs: renewed, hubble-relay-client-certs: renewed"; got != want {
		t.Fatalf("run near expiry: %s, want %s", got, want)
	}
	renewed := read(t, secrets)
	if !bytes.Equal(renewed.secrets[certs.CASecret].Data[certs.CAKeyKey], first.secrets[certs.CASecret].Data[certs.CAKeyKey]) {
		t.Error("the CA changed, want it kept")
	}
	if !renewed.cert(t, certs.ServerSecret).NotAfter.After(first.cert(t, certs.ServerSecret).NotAfter) {
		t.Error("the renewed server certificate does not last longer")
	}

	// When the CA would expire before a new certificate, it is renewed and the
	// certificates re-issued; the old CA stays trusted while it is valid, so a
	// relay still holding its old certificate is accepted by agents that
	// already have the new Secret.
	tCA := first.cert(t, certs.CASecret).NotAfter.Add(-defaults.CertValidity + time.Hour)
	if got, want := reconcile(t, secrets, defaults, tCA.Add(-24*time.Hour)), "hubble-ca: kept, hubble-server-certs: renewed, hubble-relay-client-certs: renewed"; got != want {
		t.Fatalf("the day before the CA's renewal: %s, want %s", got, want)
	}
	before := read(t, secrets)
	if got, want := reconcile(t, secrets, defaults, tCA), "hubble-ca: renewed, hubble-server-certs: renewed, hubble-relay-client-certs: renewed"; got != want {
		t.Fatalf("run near the CA's expiry: %s, want %s", got, want)
	}
	rotated := read(t, secrets)
	if n := len(rotated.bundle(t, certs.ServerSecret)); n != 2 {
		t.Errorf("ca.crt after the CA's renewal holds %d CAs, want the new and the old", n)
	}
	old := state{secrets: map[string]*corev1.Secret{certs.RelayClientSecret: before.secrets[certs.RelayClientSecret], certs.ServerSecret: rotated.secrets[certs.ServerSecret]}}
	if err := old.verify(t, certs.RelayClientSecret, certs.ServerSecret, tCA, "", x509.ExtKeyUsageClientAuth); err != nil {
		t.Errorf("the relay's certificate of the old CA, against the agents' new ca.crt: %v", err)
	}
	if rotated.cert(t, certs.ServerSecret).NotAfter.After(rotated.cert(t, certs.CASecret).NotAfter) {
		t.Error("a certificate outlives its CA")
	}

	// Certificates renewed while the old CA is still valid keep trusting it...
	tRenew = rotated.cert(t, certs.ServerSecret).NotAfter.Add(-defaults.RenewBefore + time.Hour)
	if got, want := reconcile(t, secrets, defaults, tRenew), "hubble-ca: kept, hubble-server-certs: renewed, hubble-relay-client-certs: renewed"; got != want {
		t.Fatalf("run near expiry under the new CA: %s, want %s", got, want)
	}
	if n := len(read(t, secrets).bundle(t, certs.ServerSecret)); n != 2 {
		t.Errorf("ca.crt while the old CA is valid holds %d CAs, want 2", n)
	}
	// ...and once it expired, no longer: the bundles shrink.
	tExpired := first.cert(t, certs.CASecret).NotAfter.Add(time.Hour)
	if got, want := reconcile(t, secrets, defaults, tExpired), "hubble-ca: updated, hubble-server-certs: updated, hubble-relay-client-certs: updated"; got != want {
		t.Fatalf("run after the old CA expired: %s, want %s", got, want)
	}
	if n := len(read(t, secrets).bundle(t, certs.ServerSecret)); n != 1 {
		t.Errorf("ca.crt after the old CA expired holds %d CAs, want 1", n)
	}

	// Another cluster name re-issues the server certificate only.
	prod := defaults
	prod.ClusterName = "prod.eu"
	if got, want := reconcile(t, secrets, prod, tExpired), "hubble-ca: kept, hubble-server-certs: renewed, hubble-relay-client-certs: kept"; got != want {
		t.Fatalf("run for another cluster name: %s, want %s", got, want)
	}
	if names := read(t, secrets).cert(t, certs.ServerSecret).DNSNames; fmt.Sprint(names) != "[*.prod-eu.hubble-grpc.cilium.io]" {
		t.Errorf("server certificate names %v", names)
	}

	// A damaged Secret (a key that is not the certificate's) is replaced.
	s := read(t, secrets).secrets[certs.RelayClientSecret]
	s.Data[corev1.TLSPrivateKeyKey] = first.secrets[certs.RelayClientSecret].Data[corev1.TLSPrivateKeyKey]
	if _, err := secrets.Update(context.Background(), s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if got, want := reconcile(t, secrets, prod, tExpired), "hubble-ca: kept, hubble-server-certs: kept, hubble-relay-client-certs: renewed"; got != want {
		t.Fatalf("run after damage: %s, want %s", got, want)
	}

	// A Secret of the wrong type cannot be updated into the right one: the error
	// says what to do.
	other := namespace(t, kube, "other")
	if _, err := other.Create(context.Background(), &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: certs.ServerSecret}, StringData: map[string]string{"x": "y"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := certs.Reconcile(context.Background(), other, defaults, t0); err == nil || !strings.Contains(err.Error(), "delete it") {
		t.Errorf("an Opaque %s: %v, want an error saying to delete it", certs.ServerSecret, err)
	}
}

func TestConfigNamesTheFlag(t *testing.T) {
	for flag, cfg := range map[string]certs.Config{
		"--renew-before":  {CAValidity: 3, CertValidity: 2, RenewBefore: 0},
		"--cert-validity": {CAValidity: 3, CertValidity: 1, RenewBefore: 1},
		"--ca-validity":   {CAValidity: 2, CertValidity: 2, RenewBefore: 1},
	} {
		if err := cfg.Validate(); err == nil || !strings.HasPrefix(err.Error(), flag) {
			t.Errorf("%+v: %v, want an error about %s", cfg, err, flag)
		}
	}
	if err := defaults.Validate(); err != nil {
		t.Errorf("defaults: %v", err)
	}
}

// mutualTLS serves the agents' Secret with the Hubble server and calls it with
// the relay's Secret, as hubble-relay does (at the real time: only for
// certificates issued now).
func mutualTLS(t *testing.T, st state) {
	t.Helper()
	dir := t.TempDir()
	files := server.TLSFiles{CertFile: filepath.Join(dir, "tls.crt"), KeyFile: filepath.Join(dir, "tls.key"), ClientCAFiles: []string{filepath.Join(dir, "ca.crt")}}
	srv := st.secrets[certs.ServerSecret].Data
	for path, b := range map[string][]byte{files.CertFile: srv[corev1.TLSCertKey], files.KeyFile: srv[corev1.TLSPrivateKeyKey], files.ClientCAFiles[0]: srv[certs.BundleKey]} {
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	s, err := server.Start(server.Options{ListenAddress: "127.0.0.1:0", TLS: files}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	relay := st.secrets[certs.RelayClientSecret].Data
	kp, err := tls.X509KeyPair(relay[corev1.TLSCertKey], relay[corev1.TLSPrivateKeyKey])
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(relay[certs.BundleKey])
	creds := credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{kp}, RootCAs: roots, ServerName: "kind-worker.default.hubble-grpc.cilium.io", MinVersion: tls.VersionTLS13})
	conn, err := grpc.NewClient(s.TCPAddr().String(), grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if r, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("relay → agent over mutual TLS with the generated Secrets: %v %v", r, err)
	}
}

func keys(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func versions(st state) map[string]string {
	out := map[string]string{}
	for n, s := range st.secrets {
		out[n] = s.ResourceVersion
	}
	return out
}
