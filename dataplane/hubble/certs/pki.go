// Package certs issues and renews the certificates of Hubble's mutual TLS between
// the agents and hubble-relay, as Cilium's hubble.tls.auto (certgen) does: a CA,
// the agents' server certificate (*.<cluster>.hubble-grpc.cilium.io) and the
// relay's client certificate, kept in Secrets of flatnet-system. Reconcile is
// idempotent: it keeps what is valid and renews what nears its expiry, the CA
// only when it would not outlive a new certificate.
package certs

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"time"
)

// clockSkew backdates every certificate, so a node whose clock is a little
// behind still accepts a certificate issued this minute.
const clockSkew = 5 * time.Minute

// KeyPair is a certificate and its private key, PEM encoded, as Secrets and
// tls.X509KeyPair hold them.
type KeyPair struct {
	CertPEM, KeyPEM []byte
}

// Parse decodes p, checking that the key is the certificate's.
func (p KeyPair) Parse() (*x509.Certificate, crypto.Signer, error) {
	c, err := tls.X509KeyPair(p.CertPEM, p.KeyPEM)
	if err != nil {
		return nil, nil, err
	}
	signer, ok := c.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, nil, errors.New("private key cannot sign")
	}
	return c.Leaf, signer, nil
}

// NewCA makes a self-signed CA valid from now for validity.
func NewCA(commonName string, now time.Time, validity time.Duration) (KeyPair, error) {
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: commonName},
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	return issue(tmpl, nil, nil, now, now.Add(validity))
}

// Leaf describes a certificate to issue: its name (common name and DNS SAN)
// and whether it serves or authenticates a client.
type Leaf struct {
	DNSName string
	Usage   x509.ExtKeyUsage
}

// Issue signs a new key's certificate for l with ca, valid for validity but
// never past the CA's own expiry.
func Issue(ca KeyPair, l Leaf, now time.Time, validity time.Duration) (KeyPair, error) {
	caCert, caKey, err := ca.Parse()
	if err != nil {
		return KeyPair{}, fmt.Errorf("CA: %w", err)
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: l.DNSName},
		DNSNames:    []string{l.DNSName},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{l.Usage},
	}
	notAfter := now.Add(validity)
	if caCert.NotAfter.Before(notAfter) {
		notAfter = caCert.NotAfter
	}
	return issue(tmpl, caCert, caKey, now, notAfter)
}

// issue signs tmpl with a new ECDSA P-256 key; parent nil self-signs.
func issue(tmpl, parent *x509.Certificate, parentKey crypto.Signer, now, notAfter time.Time) (KeyPair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return KeyPair{}, fmt.Errorf("generate key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return KeyPair{}, fmt.Errorf("serial number: %w", err)
	}
	tmpl.SerialNumber = serial
	tmpl.NotBefore, tmpl.NotAfter = now.Add(-clockSkew), notAfter
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentKey)
	if err != nil {
		return KeyPair{}, fmt.Errorf("sign certificate for %q: %w", tmpl.Subject.CommonName, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return KeyPair{}, fmt.Errorf("encode key: %w", err)
	}
	return KeyPair{
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	}, nil
}
