package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/flatnet/flatnet/dataplane/enforce"
	"github.com/flatnet/flatnet/dataplane/policy"
)

// rejected reaches each agent's /v1/rejected through the same agent-API helper as
// flows (pods/proxy today) and prints one line per node and object.
func TestRejectedPrintsEveryNodesRejections(t *testing.T) {
	rej := enforce.Rejection{Object: enforce.ObjectRef{Ref: policy.Ref{Kind: policy.KindCNP, Namespace: "team-a", Name: "mapped"}},
		Node: "node-a", Reason: enforce.ReasonInvalid, Message: "spec.egress[0].toCIDR[0]: Invalid value: ... write the IPv4 block 10.0.0.0/8"}
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/api/v1/namespaces/flatnet-system/pods/agent-a:9969/proxy" + enforce.RejectedPath:
			_ = json.NewEncoder(w).Encode([]enforce.Rejection{rej})
		case "/api/v1/namespaces/flatnet-system/pods/agent-b:9969/proxy" + enforce.RejectedPath:
			http.Error(w, "connection refused", http.StatusServiceUnavailable)
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
