package exporter

import (
	"context"
	"errors"
	"io"
	"path/filepath"
	"testing"

	flowpb "github.com/cilium/cilium/api/v1/flow"

	"github.com/flatnet/flatnet/dataplane/bpf"
	"github.com/flatnet/flatnet/dataplane/flows"
	"github.com/flatnet/flatnet/dataplane/flows/flowstest"
	"github.com/flatnet/flatnet/dataplane/identity"
	"github.com/flatnet/flatnet/dataplane/policy"
)

// The article's scenario through the agent's flow path: default-deny on server
// drops client's SYN to port 80; flows.Run hands the enriched flow to the
// Manager as an observer, and the drops log holds it in Hubble's form, naming
// the policy, while the allowed egress stays out.
func TestFlowsRunToFile(t *testing.T) {
	serverIP, clientIP, worldIP := flowstest.ServerIP, flowstest.ClientIP, flowstest.WorldIP
	c := flowstest.Compiler(t, `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: default-deny, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress: [{}]
  egress: [{}]
`)
	server, _ := c.IdentityOf("default", "server")
	client, _ := c.IdentityOf("default", "client")
	en, err := flows.NewEnricher("kind-worker", c.Latest())
	must(t, err)

	m, _ := newTestManager(t, 0)
	apply(t, m, `flowLogs: [{name: drops, filePath: drops.log, includeFilters: [{verdict: [DROPPED], destination_pod: [default/server]}]}]`)
	evs := flowstest.Events{
		{Src: clientIP, Dst: serverIP, SrcPort: 41000, DstPort: 80, Protocol: 6, TCPFlags: 0x02,
			Direction: policy.Ingress, Code: bpf.DropPolicy, RemoteIdentity: client, LocalIdentity: server},
		{Src: clientIP, Dst: worldIP, SrcPort: 41001, DstPort: 443, Protocol: 6, TCPFlags: 0x02,
			Direction: policy.Egress, Code: bpf.ForwardPolicy, RemoteIdentity: identity.World, LocalIdentity: client},
	}
	store := flows.NewStore(10)
	if err := flows.Run(context.Background(), &evs, en, store, m.Observe); !errors.Is(err, io.EOF) {
		t.Fatalf("flows.Run: %v, want the reader's io.EOF", err)
	}
	m.stopAll()

	got := readLines(t, filepath.Join(m.opts.Dir, "drops.log"))
	if len(got) != 1 {
		t.Fatalf("%d lines, want the one drop", len(got))
	}
	f := got[0].GetFlow()
	if f.GetVerdict() != flowpb.Verdict_DROPPED || f.GetSource().GetPodName() != "client" ||
		f.GetDestination().GetPodName() != "server" || f.GetL4().GetTCP().GetDestinationPort() != 80 ||
		got[0].GetNodeName() != "kind-worker" {
		t.Errorf("line %v: want client → server:80 DROPPED on kind-worker", got[0])
	}
	if by := f.GetIngressDeniedBy(); len(by) != 1 || by[0].GetName() != "default-deny" || by[0].GetNamespace() != "default" {
		t.Errorf("ingress_denied_by = %v, want default/default-deny", by)
	}
	// The file holds what the store (and so the Observer) serves.
	if rec := store.Recent(flows.Filter{}, 0); len(rec) != 2 || rec[0].Proto().GetUuid() != f.GetUuid() {
		t.Errorf("the line is not the store's flow %v", rec[0].Proto())
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
