package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/flatnet/flatnet/dataplane/flows"
)

// An API server answering pods/proxy for two agents: the one on node-a serves two
// flows, the one on node-b fails as a crashed agent's proxy does. flows must print
// node-a's flows in time order and name node-b on stderr.
func TestGatherShowsTheOtherNodesWhenOneAgentIsDown(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	line := func(port uint16, at time.Time) string {
		f := &flows.Flow{Time: at, Verdict: flows.VerdictDropped, NodeName: "node-a", TrafficDirection: flows.Ingress,
			L4:          &flows.Layer4{TCP: &flows.TCP{SourcePort: port, DestinationPort: 80}},
			Source:      &flows.Endpoint{Namespace: "default", PodName: "client"},
			Destination: &flows.Endpoint{Namespace: "default", PodName: "server"}}
		js, _ := json.Marshal(flows.Response{Flow: f, NodeName: "node-a", Time: at})
		return string(js) + "\n"
	}
	var gotQuery string
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/api/v1/namespaces/flatnet-system/pods/agent-a:9969/proxy/v1/flows":
			gotQuery = r.URL.RawQuery
			// Newest first on purpose: the CLI orders by time.
			w.Write([]byte(line(2, t0.Add(time.Second)) + line(1, t0)))
		case "/api/v1/namespaces/flatnet-system/pods/agent-b:9969/proxy/v1/flows":
			http.Error(w, "error trying to reach service: dial tcp 10.224.0.3:9969: connect: connection refused", http.StatusServiceUnavailable)
		default:
			http.NotFound(w, r)
		}
	}))
	defer api.Close()
	kube, err := kubernetes.NewForConfig(&rest.Config{Host: api.URL})
	if err != nil {
		t.Fatal(err)
	}
	ag := agents{kube: kube, namespace: "flatnet-system", port: "9969"}
	running := func(name, node string) corev1.Pod {
		return corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "flatnet-system", Name: name},
			Spec: corev1.PodSpec{NodeName: node}, Status: corev1.PodStatus{Phase: corev1.PodRunning}}
	}
	pending := running("agent-c", "node-c")
	pending.Status.Phase = corev1.PodPending
	f, err := flows.ParseFilter("default", "", nil, "DROPPED", "", "", "", t0)
	if err != nil {
		t.Fatal(err)
	}
	var out, errw bytes.Buffer
	p := newPrinter(&out, "json", false)
	failed := gather(context.Background(), ag, []corev1.Pod{running("agent-a", "node-a"), running("agent-b", "node-b"), pending},
		f.Values(), false, 0, p, &errw)
	if failed != 2 {
		t.Errorf("%d agents failed, want 2 (node-b down, node-c pending)", failed)
	}
	if !strings.Contains(gotQuery, "verdict=DROPPED") || !strings.Contains(gotQuery, "namespace=default") {
		t.Errorf("agent got query %q: the filter was not sent", gotQuery)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], `"source_port":1`) || !strings.Contains(lines[1], `"source_port":2`) {
		t.Errorf("output:\n%s\nwant node-a's two flows, oldest first", out.String())
	}
	for _, want := range []string{"node node-b", "connection refused", "node node-c", "Pending"} {
		if !strings.Contains(errw.String(), want) {
			t.Errorf("stderr %q does not mention %q", errw.String(), want)
		}
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
