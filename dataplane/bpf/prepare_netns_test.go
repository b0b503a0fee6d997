package bpf

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/flatnet/flatnet/dataplane/compile"
	"github.com/flatnet/flatnet/dataplane/podnet/podnettest"
)

// prepareThenAttach is the agent's attach of a warm-pool interface: prepared
// first (programs, empty policy map, connection table), then attached, which
// must only write entries: the interface keeps the policy map it was prepared
// with.
func prepareThenAttach(t *testing.T, n *testNode) func(Endpoint, *compile.EndpointPolicy) error {
	return func(ep Endpoint, pol *compile.EndpointPolicy) error {
		if err := n.d.PrepareInterfaces(context.Background(), []int{ep.IfIndex})[0]; err != nil {
			return err
		}
		if !n.d.Prepared(ep.IfIndex) {
			return errors.New("not prepared after PrepareInterfaces")
		}
		before := policyMapID(t, n.d, ep.IfIndex)
		if err := n.d.AttachEndpoint(context.Background(), ep, pol); err != nil {
			return err
		}
		if n.d.Prepared(ep.IfIndex) {
			return errors.New("still prepared once attached")
		}
		if after := policyMapID(t, n.d, ep.IfIndex); after != before {
			t.Errorf("attaching prepared interface %d swapped its policy map (%d -> %d): not entries only", ep.IfIndex, before, after)
		}
		return nil
	}
}

func policyMapID(t *testing.T, d *Datapath, ifindex int) ebpf.MapID {
	t.Helper()
	var id ebpf.MapID
	if err := d.objs.FnPolicy.Lookup(uint32(ifindex), &id); err != nil {
		t.Fatalf("policy map of interface %d: %v", ifindex, err)
	}
	return id
}

// TestNetnsPreparedInterfacePassesNothing: a prepared interface no endpoint has
// claimed drops everything both ways, and detaching it leaves no pin behind.
func TestNetnsPreparedInterfacePassesNothing(t *testing.T) {
	n := newTestNode(t)
	server := n.addServer()
	server.serveTCP(t, 80)
	n.attach = func(ep Endpoint, _ *compile.EndpointPolicy) error {
		return n.d.PrepareInterfaces(context.Background(), []int{ep.IfIndex})[0]
	}
	idle := n.addPod("default", "idle", "10.224.2.42", map[string]string{"app": "idle"})
	idle.serveTCP(t, 80)
	wantBlocked(t, "from an unclaimed prepared interface", idle.tcpQuick(server.ip, 80))
	wantBlocked(t, "to an unclaimed prepared interface", server.tcpQuick(idle.ip, 80))
	if err := n.d.PrepareInterfaces(context.Background(), []int{server.ifindex})[0]; err == nil {
		t.Errorf("preparing an endpoint's interface: want an error")
	}
	must(t, n.node.Do(func(ns.NetNS) error { return n.d.DetachEndpoint(context.Background(), idle.ifindex) }))
	if n.d.Prepared(idle.ifindex) {
		t.Errorf("interface %d still prepared after DetachEndpoint", idle.ifindex)
	}
	for _, dir := range []int{dirIngress, dirEgress} {
		if _, err := os.Stat(n.d.linkPin(idle.ifindex, dir)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("link pin %s after DetachEndpoint: %v", n.d.linkPin(idle.ifindex, dir), err)
		}
	}
	var id ebpf.MapID
	if err := n.d.objs.FnPolicy.Lookup(uint32(idle.ifindex), &id); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Errorf("policy map of interface %d after DetachEndpoint: %v (want none)", idle.ifindex, err)
	}
}

// BenchmarkAttachPrepared compares what AttachEndpoint costs a pod's start on a
// fresh interface (prepared=false: as BenchmarkAttachEndpoint) and on an interface
// of the warm pool (prepared=true: prepared beforehand, untimed). attach-us/op is
// the wall time of the attach alone, measured around it: the benchmark timer also
// counts its own stops and starts, which the untimed preparation and detach make
// costly.
func BenchmarkAttachPrepared(b *testing.B) {
	for _, prepared := range []bool{false, true} {
		b.Run(fmt.Sprintf("prepared=%v", prepared), func(b *testing.B) {
			n := newTestNode(b)
			ctx := context.Background()
			ifindex := podnettest.AddVeth(b, n.node, "fnbench", "eth0bench")
			ep := Endpoint{IfIndex: ifindex, IP: serverIP, Identity: 300}
			pol := DenyAll()
			var wall time.Duration
			for range b.N {
				b.StopTimer()
				if prepared {
					must(b, n.node.Do(func(ns.NetNS) error { return n.d.PrepareInterfaces(ctx, []int{ifindex})[0] }))
				}
				b.StartTimer()
				t0 := time.Now()
				must(b, n.node.Do(func(ns.NetNS) error { return n.d.AttachEndpoint(ctx, ep, pol) }))
				wall += time.Since(t0)
				b.StopTimer()
				must(b, n.node.Do(func(ns.NetNS) error { return n.d.DetachEndpoint(ctx, ifindex) }))
				b.StartTimer()
			}
			b.ReportMetric(float64(wall.Microseconds())/float64(b.N), "attach-us/op")
		})
	}
}
