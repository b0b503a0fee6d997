// Package apiservertest starts a real kube-apiserver with etcd (through
// envtest) for tests that must hold against the API server itself: CRD
// schemas, CEL rules, field validation, create-if-absent semantics.
package apiservertest

import (
	"fmt"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// Assets finds kube-apiserver and etcd: KUBEBUILDER_ASSETS, else what
// scripts/node-image.sh built into the flatnet cache (newest first); "" when
// neither, so the caller decides whether that is a skip or a fallback.
func Assets() string {
	has := func(dir string) bool {
		for _, b := range []string{"kube-apiserver", "etcd"} {
			if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
				return false
			}
		}
		return true
	}
	if d := os.Getenv("KUBEBUILDER_ASSETS"); d != "" && has(d) {
		return d
	}
	cache := os.Getenv("FLATNET_CACHE")
	if cache == "" {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, ".cache", "flatnet")
	}
	dirs, _ := filepath.Glob(filepath.Join(cache, "node-bin", "*"))
	slices.Sort(dirs)
	slices.Reverse(dirs)
	for _, d := range dirs {
		if has(d) {
			return d
		}
	}
	return ""
}

// RequireEnv names the variable `make test` sets after building kube-apiserver and
// etcd (scripts/node-bin.sh): with it, a test that finds no API server fails
// instead of skipping, so a green `make test` always ran them.
const RequireEnv = "FLATNET_REQUIRE_APISERVER"

// Require returns Assets() for t, or ends t when there are none: a failure under
// RequireEnv, a skip saying how to get them otherwise.
func Require(t testing.TB) string {
	t.Helper()
	if d := Assets(); d != "" {
		return d
	}
	if os.Getenv(RequireEnv) != "" {
		t.Fatalf("no kube-apiserver and etcd (KUBEBUILDER_ASSETS, or the flatnet cache's node-bin), and %s is set, so this test may not be skipped", RequireEnv)
	}
	t.Skip("needs kube-apiserver and etcd: `bash scripts/node-bin.sh kube-apiserver etcd` (make test does it) builds them, or set KUBEBUILDER_ASSETS")
	return ""
}

// Start runs kube-apiserver and etcd from the binaries in dir with the CRDs
// at crdPaths installed (a missing file is an error, not a silently absent
// CRD) and returns a dynamic client on it and the function that stops both.
func Start(dir string, crdPaths ...string) (dynamic.Interface, func() error, error) {
	env := &envtest.Environment{
		BinaryAssetsDirectory: dir,
		CRDDirectoryPaths:     crdPaths,
		ErrorIfCRDPathMissing: true,
	}
	cfg, err := env.Start()
	if err != nil {
		return nil, nil, fmt.Errorf("start kube-apiserver and etcd from %s: %w", dir, err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		env.Stop()
		return nil, nil, fmt.Errorf("dynamic client for the test kube-apiserver: %w", err)
	}
	return dyn, env.Stop, nil
}

// Proxy is a reverse proxy to the API server of cfg that authenticates
// upstream as cfg's user, for tests that put a front of their own before the
// API server (counting watches, serving a subresource themselves).
func Proxy(t testing.TB, cfg *rest.Config) *httputil.ReverseProxy {
	t.Helper()
	upstream, err := url.Parse(cfg.Host)
	if err != nil {
		t.Fatalf("API server address %q: %v", cfg.Host, err)
	}
	tr, err := rest.TransportFor(cfg)
	if err != nil {
		t.Fatalf("API server transport: %v", err)
	}
	p := httputil.NewSingleHostReverseProxy(upstream)
	p.Transport = tr
	return p
}
