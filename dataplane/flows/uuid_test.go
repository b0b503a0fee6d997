package flows

import (
	"sync"
	"testing"

	"github.com/google/uuid"

	"github.com/flatnet/flatnet/dataplane/bpf"
	"github.com/flatnet/flatnet/dataplane/flows/flowstest"
	"github.com/flatnet/flatnet/dataplane/policy"
)

// TestFlowUUIDs: every flow an enricher names has a UUID that parses as RFC 4122
// version 4 (what Hubble's clients and uuid filter expect), Proto carries it, and
// no two are equal: not within one enricher, even from goroutines at once, nor
// across two enrichers (two agents, or one agent's two runs).
func TestFlowUUIDs(t *testing.T) {
	c := flowstest.Compiler(t)
	ev := bpf.FlowEvent{Src: clientIP, Dst: serverIP, SrcPort: 40000, DstPort: 80, Protocol: 6, Direction: policy.Ingress, Code: bpf.ForwardPolicy}
	seen := map[string]bool{}
	var mu sync.Mutex
	for range 2 {
		en, err := NewEnricher("node-a", c.Latest())
		must(t, err)
		var wg sync.WaitGroup
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 2000 {
					f := en.Flow(ev)
					u, err := uuid.Parse(f.UUID)
					if err != nil || u.Version() != 4 || u.Variant() != uuid.RFC4122 {
						t.Errorf("flow uuid %q: version %v, variant %v, %v; want an RFC 4122 version 4 UUID", f.UUID, u.Version(), u.Variant(), err)
						return
					}
					if p := (&Response{Flow: f}).Proto(); p.GetUuid() != f.UUID {
						t.Errorf("Proto's uuid %q, the flow's %q", p.GetUuid(), f.UUID)
						return
					}
					mu.Lock()
					if seen[f.UUID] {
						t.Errorf("uuid %s given twice", f.UUID)
					}
					seen[f.UUID] = true
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
	}
	if len(seen) != 2*4*2000 {
		t.Errorf("%d distinct uuids, want %d", len(seen), 2*4*2000)
	}
}

// BenchmarkFlowUUID: one flow's UUID as Proto drew it before (uuid.NewString,
// crypto/rand per call) and as the enricher names it now, side by side; parallel
// runs on every CPU at once.
func BenchmarkFlowUUID(b *testing.B) {
	ids, err := newFlowIDs()
	if err != nil {
		b.Fatal(err)
	}
	for _, v := range []struct {
		name string
		next func() string
	}{{"crypto-rand", uuid.NewString}, {"prefix+counter", ids.next}} {
		b.Run(v.name+"/serial", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_ = v.next()
			}
		})
		b.Run(v.name+"/parallel", func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					_ = v.next()
				}
			})
		})
	}
}
