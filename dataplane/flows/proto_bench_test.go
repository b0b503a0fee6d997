package flows

import (
	"testing"

	"github.com/flatnet/flatnet/dataplane/bpf"
	"github.com/flatnet/flatnet/dataplane/flows/flowstest"
	"github.com/flatnet/flatnet/dataplane/policy"
)

// BenchmarkFlowToProto is a flow's cost from datapath event to Hubble's form:
// enrichment (which names the flow's UUID) and Proto, once per flow as the
// Observer, exporter and metrics share it; "convert-only" is Proto alone.
// "parallel" runs it on every CPU at
// once, as several agents' readers and servers would contend for one source of
// randomness.
func BenchmarkFlowToProto(b *testing.B) {
	c := flowstest.Compiler(b)
	en, err := NewEnricher("node-a", c.Latest())
	if err != nil {
		b.Fatal(err)
	}
	ev := bpf.FlowEvent{Src: clientIP, Dst: serverIP, SrcPort: 40000, DstPort: 80, Protocol: 6, TCPFlags: 0x02,
		Direction: policy.Ingress, Code: bpf.DropPolicy}
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			f := en.Flow(ev)
			(&Response{Flow: f, NodeName: f.NodeName, Time: f.Time}).Proto()
		}
	})
	b.Run("convert-only", func(b *testing.B) {
		f := en.Flow(ev)
		b.ReportAllocs()
		for b.Loop() {
			(&Response{Flow: f, NodeName: f.NodeName, Time: f.Time}).Proto()
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				f := en.Flow(ev)
				(&Response{Flow: f, NodeName: f.NodeName, Time: f.Time}).Proto()
			}
		})
	})
}
