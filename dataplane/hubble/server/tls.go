package server

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"
	"time"
)

// TLSFiles name the PEM files of the server's mutual TLS: its certificate and
// key, and the CAs whose certificates clients must present.
type TLSFiles struct {
	CertFile, KeyFile string
	ClientCAFiles     []string
}

// validate says which flag is missing.
func (f TLSFiles) validate() error {
	switch {
	case f.CertFile == "":
		return errors.New("--hubble-tls-cert-file: missing; name the server certificate (PEM), or pass --hubble-disable-tls to serve plaintext")
	case f.KeyFile == "":
		return errors.New("--hubble-tls-key-file: missing; name the server certificate's key (PEM), or pass --hubble-disable-tls to serve plaintext")
	case len(f.ClientCAFiles) == 0:
		return errors.New("--hubble-tls-client-ca-files: missing; mutual TLS needs the CA that signs the clients' (hubble-relay's) certificates, or pass --hubble-disable-tls to serve plaintext")
	}
	return nil
}

// reloadingTLS serves the newest good certificate and client CAs read from
// TLSFiles. The files are polled rather than watched: a Secret volume is updated
// by swapping a symlink, at the kubelet's sync period (a minute or so), so a
// poll every few seconds loses nothing and needs no inotify watches. A
// handshake takes the config current at that moment; established connections
// and their streams keep theirs.
type reloadingTLS struct {
	files TLSFiles
	log   *slog.Logger

	cur     atomic.Pointer[tls.Config]
	last    []byte // the bytes cur was built from
	lastErr string // the last load error logged, to log each one once
}

func newReloadingTLS(files TLSFiles, log *slog.Logger) *reloadingTLS {
	r := &reloadingTLS{files: files, log: log}
	r.reload()
	return r
}

// serverConfig is the tls.Config for the gRPC credentials: every handshake asks
// for the current one.
func (r *reloadingTLS) serverConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			if c := r.cur.Load(); c != nil {
				return c, nil
			}
			return nil, fmt.Errorf("hubble server: no TLS certificate loaded yet from %s, %s", r.files.CertFile, r.files.KeyFile)
		},
	}
}

// run reloads every interval until ctx ends.
func (r *reloadingTLS) run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			r.reload()
		}
	}
}

// reload builds a new config when the files' bytes changed and parse; files
// caught half-written are retried at the next tick, the old config kept.
func (r *reloadingTLS) reload() {
	raw, cfg, err := load(r.files)
	if err == nil && bytes.Equal(raw, r.last) {
		return
	}
	if err != nil {
		if err.Error() != r.lastErr {
			r.lastErr = err.Error()
			r.log.Warn("hubble server: cannot load its TLS files; keeping the previous ones (none at first: TLS handshakes fail)", "error", err)
		}
		return
	}
	r.last, r.lastErr = raw, ""
	r.cur.Store(cfg)
	leaf := cfg.Certificates[0].Leaf
	r.log.Info("hubble server: TLS certificate loaded", "subject", leaf.Subject.String(), "dnsNames", leaf.DNSNames, "notAfter", leaf.NotAfter)
}

// load reads the files and builds the mutual-TLS config they describe; raw is
// their bytes, to tell a change.
func load(f TLSFiles) (raw []byte, _ *tls.Config, _ error) {
	read := func(path string) ([]byte, error) {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("TLS file: %w", err)
		}
		raw = append(append(raw, b...), 0)
		return b, nil
	}
	certPEM, err := read(f.CertFile)
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err := read(f.KeyFile)
	if err != nil {
		return nil, nil, err
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("server certificate %s with key %s: %w", f.CertFile, f.KeyFile, err)
	}
	pool := x509.NewCertPool()
	for _, p := range f.ClientCAFiles {
		b, err := read(p)
		if err != nil {
			return nil, nil, err
		}
		if !pool.AppendCertsFromPEM(b) {
			return nil, nil, fmt.Errorf("client CA file %s: no PEM certificate in it", p)
		}
	}
	return raw, &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		// gRPC requires ALPN h2; the credentials add it only to the base config.
		NextProtos: []string{"h2"},
	}, nil
}
