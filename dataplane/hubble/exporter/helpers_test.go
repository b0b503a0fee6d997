package exporter

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// flowOf is a flow as the agent records one: pod to pod, TCP, with a verdict.
func flowOf(i int, srcNS, verdict string) *flowpb.Flow {
	v := flowpb.Verdict(flowpb.Verdict_value[verdict])
	f := &flowpb.Flow{
		Time:     timestamppb.New(time.Date(2026, 12, 6, 8, 0, 0, i*1000, time.UTC)),
		Verdict:  v,
		NodeName: "kind-worker",
		Type:     flowpb.FlowType_L3_L4,
		IP:       &flowpb.IP{Source: "10.224.1.5", Destination: "10.224.2.7", IpVersion: flowpb.IPVersion_IPv4},
		L4: &flowpb.Layer4{Protocol: &flowpb.Layer4_TCP{TCP: &flowpb.TCP{
			SourcePort: uint32(30000 + i%30000), DestinationPort: 80, Flags: &flowpb.TCPFlags{SYN: true},
		}}},
		Source: &flowpb.Endpoint{Identity: 1234, Namespace: srcNS, PodName: "client",
			Labels: []string{"k8s:app=client", "k8s:io.kubernetes.pod.namespace=" + srcNS}},
		Destination: &flowpb.Endpoint{Identity: 5678, Namespace: "server-ns", PodName: "server",
			Labels: []string{"k8s:app=server", "k8s:io.kubernetes.pod.namespace=server-ns"}},
		EventType:             &flowpb.CiliumEventType{Type: 4},
		TrafficDirection:      flowpb.TrafficDirection_INGRESS,
		TraceObservationPoint: flowpb.TraceObservationPoint_TO_ENDPOINT,
		IsReply:               wrapperspb.Bool(false),
		Summary:               "TCP Flags: SYN",
	}
	if v == flowpb.Verdict_DROPPED {
		f.EventType.Type = 1
		f.DropReasonDesc = flowpb.DropReason_POLICY_DENIED
		f.IngressDeniedBy = []*flowpb.Policy{{Name: "default-deny", Namespace: "server-ns", Kind: "CiliumNetworkPolicy"}}
	}
	return f
}

// readLines decodes every line of a flow log file (gzipped when it ends in .gz)
// as observer.GetFlowsResponse, as `hubble observe` reads `-o json` output back.
func readLines(t testing.TB, path string) []*observerpb.GetFlowsResponse {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if strings.HasSuffix(path, ".gz") {
		zr, err := gzip.NewReader(bytes.NewReader(data))
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if data, err = io.ReadAll(zr); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
	}
	return decodeLines(t, path, data)
}

func decodeLines(t testing.TB, name string, data []byte) []*observerpb.GetFlowsResponse {
	t.Helper()
	var out []*observerpb.GetFlowsResponse
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, 1<<20)
	for n := 1; sc.Scan(); n++ {
		r := new(observerpb.GetFlowsResponse)
		if err := protojson.Unmarshal(sc.Bytes(), r); err != nil {
			t.Fatalf("%s line %d: %v: %s", name, n, err, sc.Text())
		}
		out = append(out, r)
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	if len(data) > 0 && data[len(data)-1] != '\n' {
		t.Fatalf("%s: the last line is cut: %q", name, data[max(0, len(data)-80):])
	}
	return out
}

// eventually waits for cond, failing t after 10 s: for state an asynchronous
// part reaches (a reload, a writer), never to time anything.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// logBuffer collects a logger's lines, safe for the writer goroutines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func newLogger(t testing.TB) (*slog.Logger, *logBuffer) {
	b := &logBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("log:\n%s", b)
		}
	})
	return slog.New(slog.NewTextHandler(b, nil)), b
}

// newTestManager is a Manager of a config file in a directory of its own,
// writing flow logs under another.
func newTestManager(t testing.TB, queue int) (*Manager, *logBuffer) {
	t.Helper()
	log, buf := newLogger(t)
	m, err := NewManager(log, Options{ConfigFile: filepath.Join(t.TempDir(), "flowlogs.yaml"), Dir: t.TempDir(), QueueLength: queue})
	if err != nil {
		t.Fatal(err)
	}
	return m, buf
}

// apply parses yaml against m's directory and applies it, failing t on error.
func apply(t testing.TB, m *Manager, yaml string) {
	t.Helper()
	cfg, err := Parse([]byte(yaml), m.opts.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Apply(cfg); err != nil {
		t.Fatal(err)
	}
}

// runManager runs m until the test ends, which waits for it to stop.
func runManager(t testing.TB, m *Manager) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
}

func counter(m *Manager, vec string, label string) float64 {
	switch vec {
	case "written":
		return testutil.ToFloat64(m.metrics.written.WithLabelValues(label))
	case "dropped":
		return testutil.ToFloat64(m.metrics.dropped.WithLabelValues(label))
	case "writeErrors":
		return testutil.ToFloat64(m.metrics.writeErrors.WithLabelValues(label))
	default:
		return testutil.ToFloat64(m.metrics.reconfigurations.WithLabelValues(label))
	}
}

func names(m *Manager) []string {
	var out []string
	for _, e := range m.running() {
		out = append(out, e.name)
	}
	return out
}
