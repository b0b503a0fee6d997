package flows

import (
	"encoding/json"
	"net/netip"
	"reflect"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/flatnet/flatnet/dataplane/bpf"
	"github.com/flatnet/flatnet/dataplane/compile"
	"github.com/flatnet/flatnet/dataplane/flows/flowstest"
	"github.com/flatnet/flatnet/dataplane/policy"
)

// TestFlowNamesTheDeployment: a pod created by a Deployment (through its ReplicaSet,
// as the informer delivers it) appears in its flows with the Deployment as its
// workload, in flatnet's JSON and in Hubble's (protojson with the proto's names, as
// `hubble observe -o json` prints it): "workloads":[{"name":"web","kind":"Deployment"}].
// A pod nothing controls has no workloads field.
func TestFlowNamesTheDeployment(t *testing.T) {
	c := flowstest.Compiler(t)
	webIP := netip.MustParseAddr("10.224.0.42")
	web := flowstest.DeploymentPod("default", webIP)
	must(t, c.UpsertPod(compile.PodFromCore(web, false)))
	c.Flush()
	en, err := NewEnricher("node-a", c.Latest())
	must(t, err)
	ev := bpf.FlowEvent{Src: webIP, Dst: serverIP, SrcPort: 40000, DstPort: 80, Protocol: 6, TCPFlags: 0x02,
		Direction: policy.Ingress, Code: bpf.ForwardPolicy}
	f := en.Flow(ev)
	want := []any{map[string]any{"name": "web", "kind": "Deployment"}}
	ours := decode(t, must2(t, func() ([]byte, error) { return json.Marshal(f) }))
	r := &Response{Flow: f, NodeName: f.NodeName, Time: f.Time}
	hubble := decode(t, must2(t, func() ([]byte, error) {
		return protojson.MarshalOptions{UseProtoNames: true}.Marshal(r.Proto())
	}))
	for side, m := range map[string]map[string]any{"flatnet's JSON": ours, "Hubble's JSON": hubble} {
		if got := get(t, m, "source", "workloads"); !reflect.DeepEqual(got, want) {
			t.Errorf("%s: source.workloads = %v, want %v", side, got, want)
		}
		if got, ok := get(t, m, "destination").(map[string]any)["workloads"]; ok {
			t.Errorf("%s: destination.workloads = %v; the server pod has no controller", side, got)
		}
	}
	if again := en.Flow(ev); &again.Source.Workloads[0] != &f.Source.Workloads[0] {
		t.Error("each flow copied the workloads: they are the compiler snapshot's, shared")
	}
}
