package bpf

import (
	"context"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/flatnet/flatnet/dataplane/compile"
	"github.com/flatnet/flatnet/dataplane/compile/compiletest"
	"github.com/flatnet/flatnet/dataplane/identity"
	"github.com/flatnet/flatnet/dataplane/podnet/podnettest"
	"github.com/flatnet/flatnet/dataplane/policy"
)

// BenchmarkPolicyApply measures the agent's share of issue 20's policy apply ->
// enforced path, from the informer's object to the maps written, with 1,000
// policies and 500 pods present (compiletest.Issue20) and the node's endpoints'
// policies in real maps: the cluster benchmark's default-deny policy on one
// namespace converted, compiled and flushed (compile-ns/op), then written by Apply
// (apply-ns/op); change=apply adds it, change=delete removes it. inforce-ns/op is
// from the informer's object to every changed endpoint's new map seen in place by
// a poller: the kernel swaps each map in before the update's RCU grace period,
// which apply-ns/op includes and new connections do not wait for. Endpoints need
// no link here: Apply writes policy maps by interface index.
func BenchmarkPolicyApply(b *testing.B) {
	d := loadTest(b)
	ctx := context.Background()
	c := compile.New(identity.NewAllocator())
	if err := compiletest.Build(c, compiletest.Issue20); err != nil {
		b.Fatal(err)
	}
	// Every local pod an endpoint with an interface index of its own.
	ifindexes := map[string]int{}
	s := compiletest.Issue20
	for i := 0; i < s.Pods; i++ {
		if p := s.Pod(i); p.Local {
			ifindexes[p.Namespace+"/"+p.Name] = 1000 + i
		}
	}
	ifindexOf := func(ns, name string) (int, bool) { i, ok := ifindexes[ns+"/"+name]; return i, ok }
	c.Invalidate()
	must(b, d.Apply(ctx, c.Flush(), ifindexOf))

	np := compiletest.DenyIngress(compiletest.Namespace(0))
	key := compiletest.Key(np)
	apply := func() {
		p, err := policy.FromNetworkPolicy(np)
		must(b, err)
		must(b, c.UpsertPolicy(key, []*policy.Policy{p}))
	}
	remove := func() { c.DeletePolicy(key) }
	for _, v := range []struct {
		name       string
		timed, set func()
	}{{"apply", apply, remove}, {"delete", remove, apply}} {
		b.Run("change="+v.name, func(b *testing.B) {
			if v.name == "delete" {
				apply()
				must(b, d.Apply(ctx, c.Flush(), ifindexOf))
			}
			var compileT, applyT, inForceT time.Duration
			eps := 0
			for i := 0; i < b.N; i++ {
				t0 := time.Now()
				v.timed()
				up := c.Flush()
				t1 := time.Now()
				swapped := watchSwaps(b, d, up, ifindexOf)
				must(b, d.Apply(ctx, up, ifindexOf))
				compileT += t1.Sub(t0)
				applyT += time.Since(t1)
				inForceT += swapped().Sub(t0)
				eps += len(up.Endpoints)
				b.StopTimer()
				v.set()
				must(b, d.Apply(ctx, c.Flush(), ifindexOf))
				b.StartTimer()
			}
			b.StopTimer()
			if v.name == "apply" {
				remove()
				must(b, d.Apply(ctx, c.Flush(), ifindexOf))
			}
			b.ReportMetric(float64(compileT.Nanoseconds())/float64(b.N), "compile-ns/op")
			b.ReportMetric(float64(applyT.Nanoseconds())/float64(b.N), "apply-ns/op")
			b.ReportMetric(float64(inForceT.Nanoseconds())/float64(b.N), "inforce-ns/op")
			b.ReportMetric(float64(eps)/float64(b.N), "endpoints/op")
		})
	}
}

// watchSwaps polls, from before Apply, the policy maps of the endpoints up
// changes; the returned func waits until every one holds a new map and says
// when the poll saw the last.
func watchSwaps(b *testing.B, d *Datapath, up compile.Update, ifindexOf func(ns, name string) (int, bool)) func() time.Time {
	old := map[uint32]uint32{}
	for _, e := range up.Endpoints {
		if ifindex, ok := ifindexOf(e.Namespace, e.Name); ok && e.Policy != nil {
			var id uint32
			must(b, d.objs.FnPolicy.Lookup(uint32(ifindex), &id))
			old[uint32(ifindex)] = id
		}
	}
	done := make(chan time.Time, 1)
	go func() {
		for len(old) > 0 {
			for ifindex, was := range old {
				var id uint32
				if err := d.objs.FnPolicy.Lookup(ifindex, &id); err == nil && id != was {
					delete(old, ifindex)
				}
			}
			if len(old) > 0 {
				time.Sleep(20 * time.Microsecond)
			}
		}
		done <- time.Now()
	}()
	return func() time.Time { return <-done }
}

// BenchmarkAttachEndpoint measures what a pod's start pays in the datapath
// (AttachEndpoint from the CNI ADD): its policy map and its table of established
// connections written, the programs attached to its host veth. Each op attaches a
// fresh endpoint (the previous one detached, untimed).
func BenchmarkAttachEndpoint(b *testing.B) {
	n := newTestNode(b)
	ctx := context.Background()
	ifindex := podnettest.AddVeth(b, n.node, "fnbench", "eth0bench")
	ep := Endpoint{IfIndex: ifindex, IP: serverIP, Identity: 300}
	pol := DenyAll()
	for i := 0; i < b.N; i++ {
		must(b, n.node.Do(func(ns.NetNS) error { return n.d.AttachEndpoint(ctx, ep, pol) }))
		b.StopTimer()
		must(b, n.node.Do(func(ns.NetNS) error { return n.d.DetachEndpoint(ctx, ifindex) }))
		b.StartTimer()
	}
}
