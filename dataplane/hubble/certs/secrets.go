package certs

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"

	"github.com/flatnet/flatnet/dataplane/hubble/peer"
)

// The Secrets, in Config.Namespace. The two certificate Secrets hold ca.crt,
// tls.crt and tls.key: what the agent mounts and hubble-relay's chart mounts.
const (
	CASecret          = "hubble-ca"
	ServerSecret      = "hubble-server-certs"
	RelayClientSecret = "hubble-relay-client-certs"

	// CA Secret keys: the CA, and the one it replaced while that is unexpired,
	// still trusted so that a certificate it signed works until its holder
	// gets its renewed one.
	CACertKey     = "ca.crt"
	CAKeyKey      = "ca.key"
	PreviousCAKey = "previous-ca.crt"
	// BundleKey, in the certificate Secrets: the CAs to trust (the CA and the
	// one it replaced while unexpired).
	BundleKey = "ca.crt"

	// RelayClientName is the client certificate's name, Cilium's.
	RelayClientName = "*.hubble-relay.cilium.io"
)

// Defaults of Config.
const (
	DefaultNamespace    = "flatnet-system"
	DefaultCAValidity   = 3 * 365 * 24 * time.Hour
	DefaultCertValidity = 365 * 24 * time.Hour
	DefaultRenewBefore  = 30 * 24 * time.Hour
)

// Config is what Reconcile keeps.
type Config struct {
	// ClusterName names the servers: *.<cluster>.hubble-grpc.cilium.io.
	ClusterName string
	// CAValidity, CertValidity: how long a new CA and a new certificate last.
	// A certificate is renewed RenewBefore its expiry; the CA when it would
	// expire before a certificate issued now.
	CAValidity, CertValidity, RenewBefore time.Duration
}

// Validate names the flag to fix.
func (c Config) Validate() error {
	switch {
	case c.RenewBefore <= 0:
		return fmt.Errorf("--renew-before %v: must be positive", c.RenewBefore)
	case c.CertValidity <= c.RenewBefore:
		return fmt.Errorf("--cert-validity %v: must be longer than --renew-before %v, or every run renews", c.CertValidity, c.RenewBefore)
	case c.CAValidity <= c.CertValidity:
		return fmt.Errorf("--ca-validity %v: must be longer than --cert-validity %v, or every run renews the CA", c.CAValidity, c.CertValidity)
	}
	return nil
}

// Change says what Reconcile did to one Secret.
type Change struct {
	Secret string
	// Action is "created", "renewed", "updated" (ca.crt only) or "kept".
	Action string
	// Why: what made it act, or until when what it kept is good.
	Why string
}

func (c Change) String() string { return c.Secret + ": " + c.Action + " (" + c.Why + ")" }

// Reconcile makes the CA, server and relay client Secrets valid at now, writing
// only what must change. A write that races another writer fails (the next run
// retries) rather than overwriting.
func Reconcile(ctx context.Context, secrets corev1client.SecretInterface, cfg Config, now time.Time) ([]Change, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	ca, bundle, change, err := reconcileCA(ctx, secrets, cfg, now)
	if err != nil {
		return nil, err
	}
	changes := []Change{change}
	for _, l := range []struct {
		secret string
		leaf   Leaf
	}{
		{ServerSecret, Leaf{DNSName: "*." + peer.ServerNameDomain(cfg.ClusterName), Usage: x509.ExtKeyUsageServerAuth}},
		{RelayClientSecret, Leaf{DNSName: RelayClientName, Usage: x509.ExtKeyUsageClientAuth}},
	} {
		c, err := reconcileLeaf(ctx, secrets, l.secret, l.leaf, ca, bundle, cfg, now)
		if err != nil {
			return changes, err
		}
		changes = append(changes, c)
	}
	return changes, nil
}

// reconcileCA returns the CA to sign with and the bundle of CAs to trust.
func reconcileCA(ctx context.Context, secrets corev1client.SecretInterface, cfg Config, now time.Time) (KeyPair, []byte, Change, error) {
	s, err := get(ctx, secrets, CASecret)
	if err != nil {
		return KeyPair{}, nil, Change{}, err
	}
	cur := KeyPair{CertPEM: s.Data[CACertKey], KeyPEM: s.Data[CAKeyKey]}
	prev := s.Data[PreviousCAKey]
	c := Change{Secret: CASecret, Action: "kept"}
	cert, _, err := cur.Parse()
	switch {
	case s.ResourceVersion == "":
		c.Action, c.Why = "created", "none yet"
	case err != nil:
		c.Action, c.Why = "renewed", fmt.Sprintf("unusable: %v", err)
	case !cert.IsCA:
		c.Action, c.Why = "renewed", "its certificate is no CA"
	case cert.NotAfter.Sub(now) < cfg.CertValidity:
		c.Action, c.Why = "renewed", fmt.Sprintf("expires %s, before a certificate issued now would", cert.NotAfter.Format(time.RFC3339))
		prev = cur.CertPEM
	default:
		c.Why = "valid until " + cert.NotAfter.Format(time.RFC3339)
	}
	if c.Action != "kept" {
		if cur, err = NewCA("flatnet hubble CA", now, cfg.CAValidity); err != nil {
			return KeyPair{}, nil, Change{}, err
		}
	}
	if !unexpired(prev, now) {
		prev = nil
	}
	bundle := append(append([]byte{}, cur.CertPEM...), prev...)
	want := map[string][]byte{CACertKey: cur.CertPEM, CAKeyKey: cur.KeyPEM}
	if prev != nil {
		want[PreviousCAKey] = prev
	}
	if c.Action == "kept" && !sameData(s.Data, want) {
		c.Action, c.Why = "updated", "the CA it replaced expired"
	}
	if c.Action != "kept" {
		s.Type, s.Data = corev1.SecretTypeOpaque, want
		if err := put(ctx, secrets, s); err != nil {
			return KeyPair{}, nil, Change{}, err
		}
	}
	return cur, bundle, c, nil
}

// reconcileLeaf keeps the Secret's certificate while ca signed it for l and it
// is RenewBefore from expiry, and its ca.crt the bundle; else it writes anew.
func reconcileLeaf(ctx context.Context, secrets corev1client.SecretInterface, name string, l Leaf, ca KeyPair, bundle []byte, cfg Config, now time.Time) (Change, error) {
	s, err := get(ctx, secrets, name)
	if err != nil {
		return Change{}, err
	}
	if s.ResourceVersion != "" && s.Type != corev1.SecretTypeTLS {
		return Change{}, fmt.Errorf("secret %s/%s: type %s, want %s (a Secret's type cannot change): delete it and run again", s.Namespace, name, s.Type, corev1.SecretTypeTLS)
	}
	c := Change{Secret: name, Action: "kept"}
	cur := KeyPair{CertPEM: s.Data[corev1.TLSCertKey], KeyPEM: s.Data[corev1.TLSPrivateKeyKey]}
	if s.ResourceVersion == "" {
		c.Action, c.Why = "created", "none yet"
	} else if cert, err := verifyLeaf(cur, l, ca, now); err != nil {
		c.Action, c.Why = "renewed", err.Error()
	} else if left := cert.NotAfter.Sub(now); left < cfg.RenewBefore {
		c.Action, c.Why = "renewed", fmt.Sprintf("expires %s, in less than %v", cert.NotAfter.Format(time.RFC3339), cfg.RenewBefore)
	} else {
		c.Why = "valid until " + cert.NotAfter.Format(time.RFC3339)
	}
	if c.Action != "kept" {
		if cur, err = Issue(ca, l, now, cfg.CertValidity); err != nil {
			return Change{}, err
		}
	}
	want := map[string][]byte{BundleKey: bundle, corev1.TLSCertKey: cur.CertPEM, corev1.TLSPrivateKeyKey: cur.KeyPEM}
	if c.Action == "kept" && !sameData(s.Data, want) {
		c.Action, c.Why = "updated", "trusted CAs changed"
	}
	if c.Action == "kept" {
		return c, nil
	}
	s.Type, s.Data = corev1.SecretTypeTLS, want
	return c, put(ctx, secrets, s)
}

// verifyLeaf checks that kp is a certificate ca signed for exactly l, valid now.
func verifyLeaf(kp KeyPair, l Leaf, ca KeyPair, now time.Time) (*x509.Certificate, error) {
	cert, _, err := kp.Parse()
	if err != nil {
		return nil, fmt.Errorf("unusable: %w", err)
	}
	if len(cert.DNSNames) != 1 || cert.DNSNames[0] != l.DNSName {
		return nil, fmt.Errorf("names %v, want [%s]", cert.DNSNames, l.DNSName)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca.CertPEM)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{l.Usage}}); err != nil {
		return nil, fmt.Errorf("not valid under the current CA now: %w", err)
	}
	return cert, nil
}

// unexpired says whether certPEM holds a certificate still valid at now.
func unexpired(certPEM []byte, now time.Time) bool {
	b, _ := pem.Decode(certPEM)
	if b == nil {
		return false
	}
	c, err := x509.ParseCertificate(b.Bytes)
	return err == nil && now.Before(c.NotAfter)
}

func sameData(have, want map[string][]byte) bool {
	if len(have) != len(want) {
		return false
	}
	for k, v := range want {
		if !bytes.Equal(have[k], v) {
			return false
		}
	}
	return true
}

// get returns the Secret, or a new one to create (no ResourceVersion).
func get(ctx context.Context, secrets corev1client.SecretInterface, name string) (*corev1.Secret, error) {
	s, err := secrets.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{
			Name:   name,
			Labels: map[string]string{"app.kubernetes.io/managed-by": "flatnet-certgen"},
		}}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read secret %s: %w", name, err)
	}
	return s, nil
}

// put creates s, or updates it at the version read (a concurrent writer makes it fail).
func put(ctx context.Context, secrets corev1client.SecretInterface, s *corev1.Secret) error {
	var err error
	if s.ResourceVersion == "" {
		_, err = secrets.Create(ctx, s, metav1.CreateOptions{})
	} else {
		_, err = secrets.Update(ctx, s, metav1.UpdateOptions{})
	}
	if err != nil {
		if apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err) {
			err = errors.Join(err, errors.New("another writer changed it meanwhile; run again"))
		}
		return fmt.Errorf("write secret %s: %w", s.Name, err)
	}
	return nil
}
