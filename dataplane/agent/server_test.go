package agent

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	dynfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/flatnet/flatnet/dataplane/flows"
)

// freeAddr is a loopback address with a port nobody listens on right now.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// apiTestAgent is an agent as flatnet-agent wires it (cfg.API = flows.Handler)
// with its HTTP server started the way Run starts it; no cluster is needed.
func apiTestAgent(t *testing.T, cfg Config) *Agent {
	t.Helper()
	store := flows.NewStore(8)
	at := time.Now()
	store.Add(&flows.Response{NodeName: "node-a", Time: at, Flow: &flows.Flow{Time: at, Verdict: flows.VerdictForwarded,
		Source: &flows.Endpoint{Namespace: "tenant-a", PodName: "secret-client"}, Destination: &flows.Endpoint{Namespace: "tenant-a", PodName: "db"}}})
	cfg.NodeName = "node-a"
	cfg.Subnet = netip.MustParsePrefix("10.224.0.0/16")
	cfg.Gateway = netip.MustParseAddr("10.224.0.1")
	cfg.DockerRange = netip.MustParsePrefix("10.224.0.0/27")
	cfg.StateDir = t.TempDir()
	cfg.API = flows.Handler(store)
	kube := fake.NewClientset()
	a, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), kube, dynfake.NewSimpleDynamicClient(runtime.NewScheme()), informers.NewSharedInformerFactory(kube, 0))
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 4)
	stop, err := a.serveHTTP(errc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	stopAPI, err := a.serveAPI(errc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stopAPI)
	return a
}

// status is the HTTP status of GET url, or 0 when the connection is refused.
func status(t *testing.T, url string) (int, string) {
	t.Helper()
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if errors.Is(err, syscall.ECONNREFUSED) {
		return 0, "connection refused"
	}
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	// A follow stream never ends: what came within the timeout is the answer.
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// TestTCPPortServesOnlyHealthAndMetrics: the agent's TCP port is on the node's
// addresses, which every pod of the node reaches (pod -> own node is always
// allowed). A plain client there must get /metrics and the kubelet's probes,
// never the flows of other namespaces or the explain endpoint.
func TestTCPPortServesOnlyHealthAndMetrics(t *testing.T) {
	addr := freeAddr(t)
	apiTestAgent(t, Config{HTTPAddr: addr, APIAddr: freeAddr(t)})
	base := "http://" + addr
	if code, body := status(t, base+"/metrics"); code != http.StatusOK || !strings.Contains(body, "flatnet_endpoints") {
		t.Errorf("GET /metrics: %d, want 200 with the agent's metrics", code)
	}
	if code, _ := status(t, base+"/healthz"); code != http.StatusOK {
		t.Errorf("GET /healthz: %d, want 200 (the kubelet's liveness probe)", code)
	}
	for _, path := range []string{flows.FlowsPath, flows.FlowsPath + "?follow=true&last=1", ExplainPath + "?namespace=a&pod=b&direction=INGRESS&remote=10.0.0.1&port=80"} {
		code, body := status(t, base+path)
		if code != 0 && code != http.StatusNotFound && code != http.StatusForbidden {
			t.Errorf("GET %s on the TCP port without credentials: %d %q; want 403, 404 or connection refused", path, code, firstLine(body))
		}
		if strings.Contains(body, "secret-client") {
			t.Errorf("GET %s on the TCP port leaked another namespace's flow: %q", path, firstLine(body))
		}
	}
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return fmt.Sprintf("%.200s", l)
}

// TestAPIOnlyOnLoopback: the flows API answers on its loopback address (where
// pods/portforward reaches it) and an address a pod could reach is refused
// at start, naming the flag and the fix.
func TestAPIOnlyOnLoopback(t *testing.T) {
	api := freeAddr(t)
	apiTestAgent(t, Config{HTTPAddr: freeAddr(t), APIAddr: api})
	if code, body := status(t, "http://"+api+flows.FlowsPath); code != http.StatusOK || !strings.Contains(body, "secret-client") {
		t.Errorf("GET /v1/flows on the loopback API address: %d %q, want 200 with the flow", code, firstLine(body))
	}
	for _, bad := range []string{":9970", "0.0.0.0:9970", "10.224.0.2:9970", "[::]:9970", "localhost:9970", "127.0.0.1"} {
		cfg := Config{NodeName: "node-a", Subnet: netip.MustParsePrefix("10.224.0.0/16"), Gateway: netip.MustParseAddr("10.224.0.1"),
			DockerRange: netip.MustParsePrefix("10.224.0.0/27"), StateDir: t.TempDir(), APIAddr: bad, API: http.NotFoundHandler()}
		kube := fake.NewClientset()
		_, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), kube, dynfake.NewSimpleDynamicClient(runtime.NewScheme()), informers.NewSharedInformerFactory(kube, 0))
		if err == nil || !strings.Contains(err.Error(), "--api-addr") || !strings.Contains(err.Error(), "127.0.0.1:9970") {
			t.Errorf("APIAddr %q: error %v, want one naming --api-addr and a loopback example", bad, err)
		}
	}
}
