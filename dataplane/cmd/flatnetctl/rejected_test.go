package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/flatnet/flatnet/dataplane/enforce"
	"github.com/flatnet/flatnet/dataplane/policy"
)

// rejected reaches each agent's /v1/rejected through the same agent-API helper as
// flows (agents.get: a stream to the agent's loopback port) and prints one line per
// node and object; an agent that cannot be reached is named, the others still print.
func TestRejectedPrintsEveryNodesRejections(t *testing.T) {
	rej := enforce.Rejection{Object: enforce.ObjectRef{Ref: policy.Ref{Kind: policy.KindCNP, Namespace: "team-a", Name: "mapped"}},
		Node: "node-a", Reason: enforce.ReasonInvalid, Message: "spec.egress[0].toCIDR[0]: Invalid value: ... write the IPv4 block 10.0.0.0/8"}
	agentA := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != enforce.RejectedPath {
			http.NotFound(w, r)
			return
		}
		_ = json.NewEncoder(w).Encode([]enforce.Rejection{rej})
	}))
	defer agentA.Close()
	ag := agents{namespace: "flatnet-system", port: 9970,
		dial: func(ctx context.Context, pod corev1.Pod, port int) (io.ReadWriteCloser, error) {
			if pod.Name != "agent-a" || port != 9970 {
				return nil, fmt.Errorf("dial %s:%d: connection refused", pod.Name, port)
			}
			var d net.Dialer
			return d.DialContext(ctx, "tcp", agentA.Listener.Addr().String())
		}}
	var errw, out bytes.Buffer
	got, failed := gatherRejected(context.Background(), ag, []corev1.Pod{running("agent-a", "node-a"), running("agent-b", "node-b")}, &errw)
	if failed != 1 || !strings.Contains(errw.String(), "node node-b") {
		t.Errorf("failed=%d stderr=%q, want node-b named", failed, errw.String())
	}
	if err := printRejected(&out, "table", got); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[1], "node-a") || !strings.Contains(lines[1], "team-a/mapped") ||
		!strings.Contains(lines[1], "PolicyRejected") || !strings.Contains(lines[1], "toCIDR[0]") {
		t.Errorf("table:\n%s\nwant a header and node-a's rejection of team-a/mapped", out.String())
	}
}
