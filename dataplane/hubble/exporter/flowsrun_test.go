package exporter

import (
	"context"
	"errors"
	"io"
	"net/netip"
	"path/filepath"
	"testing"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"sigs.k8s.io/yaml"

	"github.com/flatnet/flatnet/dataplane/bpf"
	"github.com/flatnet/flatnet/dataplane/compile"
	"github.com/flatnet/flatnet/dataplane/flows"
	"github.com/flatnet/flatnet/dataplane/identity"
	"github.com/flatnet/flatnet/dataplane/policy"
)

// eventList is a datapath that reports its events, then io.EOF.
type eventList []bpf.FlowEvent

func (l *eventList) Read(context.Context) (bpf.FlowEvent, error) {
	if len(*l) == 0 {
		return bpf.FlowEvent{}, io.EOF
	}
	ev := (*l)[0]
	*l = (*l)[1:]
	return ev, nil
}

// The article's scenario through the agent's flow path: default-deny on server
// drops client's SYN to port 80; flows.Run hands the enriched flow to the
// Manager as an observer, and the drops log holds it in Hubble's form, naming
// the policy, while the allowed egress stays out.
func TestFlowsRunToFile(t *testing.T) {
	serverIP, clientIP, worldIP := netip.MustParseAddr("10.224.0.40"), netip.MustParseAddr("10.224.0.41"), netip.MustParseAddr("192.0.2.7")
	c := compile.New(identity.NewAllocator())
	must(t, c.UpsertNamespace(compile.Namespace{Name: "default", Labels: map[string]string{"kubernetes.io/metadata.name": "default"}}))
	must(t, c.UpsertPod(compile.Pod{Namespace: "default", Name: "server", Labels: map[string]string{"app": "server"}, IP: serverIP, Local: true}))
	must(t, c.UpsertPod(compile.Pod{Namespace: "default", Name: "client", Labels: map[string]string{"app": "client"}, IP: clientIP, Local: true}))
	js, err := yaml.YAMLToJSON([]byte(`
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: default-deny, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress: [{}]
  egress: [{}]
`))
	must(t, err)
	cnp, err := policy.DecodeCilium(js)
	must(t, err)
	pols, err := policy.FromCilium(cnp)
	must(t, err)
	must(t, c.UpsertPolicy(compile.PolicyKey(policy.Ref{Kind: policy.KindCNP, Namespace: "default", Name: "default-deny"}), pols))
	c.Flush()
	server, _ := c.IdentityOf("default", "server")
	client, _ := c.IdentityOf("default", "client")
	en, err := flows.NewEnricher("kind-worker", c.Latest())
	must(t, err)

	m, _ := newTestManager(t, 0)
	apply(t, m, `flowLogs: [{name: drops, filePath: drops.log, includeFilters: [{verdict: [DROPPED], destination_pod: [default/server]}]}]`)
	evs := eventList{
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
