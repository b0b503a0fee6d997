package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/httpstream/wsstream"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	kubeletpf "k8s.io/kubelet/pkg/cri/streaming/portforward"

	"github.com/flatnet/flatnet/dataplane/flows"
)

// fakeKubelet forwards a pod's port as containerd does for a host-network pod:
// it connects to localhost:port in the host's namespace, here to the address
// the test gives for (pod, port); anything else is refused as nothing listens.
type fakeKubelet struct {
	t     *testing.T
	ports map[string]string // "pod:port" -> loopback address
}

func (k fakeKubelet) PortForward(ctx context.Context, pod string, _ types.UID, port int32, stream io.ReadWriteCloser) error {
	defer stream.Close()
	addr, ok := k.ports[fmt.Sprintf("%s:%d", pod, port)]
	if !ok {
		addr = closedAddr(k.t)
	}
	conn, err := net.Dial("tcp4", addr)
	if err != nil {
		return fmt.Errorf("failed to connect to localhost:%d inside namespace of pod %s: %w", port, pod, err)
	}
	defer conn.Close()
	go io.Copy(conn, stream)
	_, err = io.Copy(stream, conn)
	return err
}

// closedAddr is a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	return l.Addr().String()
}

// fakeAPIServer answers pods/portforward of the pods in ns the way the API
// server and kubelet do (SPDY; a WebSocket upgrade is refused, as by an API
// server without tunneling, so the client's fallback is exercised) and
// nothing else: pods/proxy, the old way to the agents, is 404.
func fakeAPIServer(t *testing.T, ns string, k fakeKubelet) *httptest.Server {
	prefix := "/api/v1/namespaces/" + ns + "/pods/"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		name, ok := strings.CutSuffix(strings.TrimPrefix(r.URL.Path, prefix), "/portforward")
		if !strings.HasPrefix(r.URL.Path, prefix) || !ok || strings.Contains(name, "/") {
			http.NotFound(w, r)
			return
		}
		if wsstream.IsWebSocketRequest(r) {
			http.Error(w, "websocket port-forward not supported here", http.StatusBadRequest)
			return
		}
		kubeletpf.ServePortForward(w, r, k, name, "", nil, time.Minute, 10*time.Second, []string{portforward.PortForwardProtocolV1Name})
	}))
	t.Cleanup(srv.Close)
	return srv
}

// agentAPI is an agent's loopback API serving the flows of store (the real handler).
func agentAPI(t *testing.T, h http.Handler) string {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

// agentA serves h as the loopback API of the agent pod agent-a, which flatnetctl
// reaches through a fake API server's pods/portforward; it returns the agents
// to reach it with and the API's port.
func agentA(t *testing.T, h http.Handler) (agents, string) {
	api := agentAPI(t, h)
	_, port, _ := net.SplitHostPort(api)
	portN, _ := strconv.Atoi(port)
	apiserver := fakeAPIServer(t, "flatnet-system", fakeKubelet{t: t, ports: map[string]string{"agent-a:" + port: api}})
	rc := &rest.Config{Host: apiserver.URL}
	kube, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	return agents{kube: kube, rest: rc, namespace: "flatnet-system", port: portN}, port
}

// running is the running agent pod name on node.
func running(name, node string) corev1.Pod {
	return corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "flatnet-system", Name: name},
		Spec: corev1.PodSpec{NodeName: node}, Status: corev1.PodStatus{Phase: corev1.PodRunning}}
}

// flatnetctl reaches agents through pods/portforward to their loopback API: the
// agent on node-a streams two flows, the one on node-b does not listen (as a
// crashed agent); flows must print node-a's flows in time order and name
// node-b (with the kubelet's words) and the pending node-c on stderr.
func TestGatherShowsTheOtherNodesWhenOneAgentIsDown(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	store := flows.NewStore(8)
	add := func(port uint16, at time.Time) {
		f := &flows.Flow{Time: at, Verdict: flows.VerdictDropped, NodeName: "node-a", TrafficDirection: flows.Ingress,
			L4:          &flows.Layer4{TCP: &flows.TCP{SourcePort: port, DestinationPort: 80}},
			Source:      &flows.Endpoint{Namespace: "default", PodName: "client"},
			Destination: &flows.Endpoint{Namespace: "default", PodName: "server"}}
		store.Add(&flows.Response{Flow: f, NodeName: "node-a", Time: at})
	}
	// Newest first on purpose: the CLI orders by time.
	add(2, t0.Add(time.Second))
	add(1, t0)
	add(3, t0.Add(-time.Hour)) // before --since
	var gotQuery string
	h := flows.Handler(store)
	ag, port := agentA(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotQuery = r.URL.RawQuery
		h.ServeHTTP(w, r)
	}))
	pending := running("agent-c", "node-c")
	pending.Status.Phase = corev1.PodPending
	f, err := flows.ParseFilter("default", "", nil, "DROPPED", "", "", t0.Add(-time.Minute).Format(time.RFC3339), t0)
	if err != nil {
		t.Fatal(err)
	}
	var out, errw bytes.Buffer
	p := newPrinter(&out, "json", false)
	failed := gather(context.Background(), ag, []corev1.Pod{running("agent-a", "node-a"), running("agent-b", "node-b"), pending},
		f.Values(), false, 0, p, &errw)
	if failed != 2 {
		t.Errorf("%d agents failed, want 2 (node-b down, node-c pending); stderr %q", failed, errw.String())
	}
	if !strings.Contains(gotQuery, "verdict=DROPPED") || !strings.Contains(gotQuery, "namespace=default") {
		t.Errorf("agent got query %q: the filter was not sent", gotQuery)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], `"source_port":1`) || !strings.Contains(lines[1], `"source_port":2`) {
		t.Errorf("output:\n%s\nwant node-a's two flows, oldest first", out.String())
	}
	for _, want := range []string{"node node-b", "connection refused", "localhost:" + port, "node node-c", "Pending"} {
		if !strings.Contains(errw.String(), want) {
			t.Errorf("stderr %q does not mention %q", errw.String(), want)
		}
	}
}

// An agent's refusal (a limit, bad input) reaches the user in its own words.
func TestAgentErrorAnswerIsShown(t *testing.T) {
	ag, _ := agentA(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "too many followers (flows --follow) on this agent (limit 16): try again shortly", http.StatusTooManyRequests)
	}))
	_, err := ag.get(context.Background(), running("agent-a", "node-a"), flows.FlowsPath, nil)
	if err == nil || !strings.Contains(err.Error(), "429") || !strings.Contains(err.Error(), "limit 16") || !strings.Contains(err.Error(), "node-a") {
		t.Errorf("error %v: want the agent's 429 and its message, naming the node", err)
	}
}

func TestParseTarget(t *testing.T) {
	for _, c := range []struct {
		arg      string
		wantPort bool
		want     target
		err      string
	}{
		{arg: "default/server:80", wantPort: true, want: target{"default", "server", 80, "TCP"}},
		{arg: "server:53/udp", wantPort: true, want: target{"dflt", "server", 53, "UDP"}},
		{arg: "ns/client", want: target{"ns", "client", 0, "TCP"}},
		{arg: "default/server", wantPort: true, err: "missing the port"},
		{arg: "default/server:http", wantPort: true, err: `port "http"`},
		{arg: "default/server:80/ICMP", wantPort: true, err: `protocol "ICMP"`},
		{arg: "/server:80", wantPort: true, err: "want <namespace>/<pod>"},
	} {
		got, err := parseTarget(c.arg, "dflt", "destination", c.wantPort)
		switch {
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("%q: error %v, want one containing %q", c.arg, err, c.err)
		case c.err == "" && (err != nil || got != c.want):
			t.Errorf("%q: %+v, %v; want %+v", c.arg, got, err, c.want)
		}
	}
}

func TestCommandNameAsKubectlPlugin(t *testing.T) {
	for argv0, want := range map[string]string{
		"/usr/local/bin/kubectl-flatnet": "kubectl flatnet",
		"./flatnetctl":                   "flatnetctl",
		"kubectl-flat_net":               "kubectl flat-net",
	} {
		if got := commandName(argv0); got != want {
			t.Errorf("commandName(%q) = %q, want %q", argv0, got, want)
		}
	}
}
