package bpf

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/flatnet/flatnet/dataplane/compile"
)

// prepareThenAttach is the agent's attach of an interface whose index the warm
// pool prepared (empty policy map, connection table), then attached, which must
// only write entries and put the filters on: the interface keeps the policy map
// its index was prepared with.
func prepareThenAttach(t *testing.T, n *testNode) func(Endpoint, *compile.EndpointPolicy) error {
	return func(ep Endpoint, pol *compile.EndpointPolicy) error {
		if err := n.d.PrepareIndexes(context.Background(), []int{ep.IfIndex})[0]; err != nil {
			return err
		}
		if !n.d.Prepared(ep.IfIndex) {
			return errors.New("not prepared after PrepareIndexes")
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

// TestNetnsPreparedIndex: an index is prepared before any interface has it (its
// policy map and connection table installed, no program anywhere), the pod's host
// veth is then created with that index, as the CNI plugin does, and attached: its
// first packets are judged by its policy, and detaching leaves nothing of the
// index. An endpoint's index cannot be prepared.
func TestNetnsPreparedIndex(t *testing.T) {
	n := newTestNode(t)
	server, client := n.addServerClient()
	server.serveTCP(t, 80)
	const index = 1 << 30
	must(t, n.node.Do(func(ns.NetNS) error { return n.d.PrepareIndexes(context.Background(), []int{index})[0] }))
	if !n.d.Prepared(index) {
		t.Fatalf("index %d not prepared after PrepareIndexes", index)
	}
	before := policyMapID(t, n.d, index)
	if ct, err := n.d.estTable(index); err != nil || ct == nil {
		t.Fatalf("prepared index %d has no table of established connections (%v)", index, err)
	}
	n.cnp("deny-to-server", seedDefaultDeny)
	n.attach = func(ep Endpoint, pol *compile.EndpointPolicy) error {
		if ep.IfIndex != index {
			return fmt.Errorf("the pod's host veth got index %d, want the prepared %d", ep.IfIndex, index)
		}
		return n.d.AttachEndpoint(context.Background(), ep, pol)
	}
	late := n.addPodIndexed("default", "late", "10.224.2.42", map[string]string{"app": "late"}, index)
	if after := policyMapID(t, n.d, index); after != before {
		t.Errorf("attaching prepared index %d swapped its policy map (%d -> %d): not entries only", index, before, after)
	}
	wantHookKind(t, n, n.d, index, onFilter)
	late.serveTCP(t, 80)
	wantWorks(t, "to the pod of the prepared index", client.tcpWorks(late.ip, 80))
	wantBlocked(t, "from it to a server under default deny", late.tcpQuick(server.ip, 80))
	if err := n.d.PrepareIndexes(context.Background(), []int{server.ifindex})[0]; err == nil {
		t.Errorf("preparing an endpoint's interface index: want an error")
	}

	const unused = 1<<30 + 1
	must(t, n.node.Do(func(ns.NetNS) error { return n.d.PrepareIndexes(context.Background(), []int{unused})[0] }))
	must(t, n.node.Do(func(ns.NetNS) error { return n.d.DetachEndpoint(context.Background(), unused) }))
	if n.d.Prepared(unused) {
		t.Errorf("index %d still prepared after DetachEndpoint", unused)
	}
	var id ebpf.MapID
	if err := n.d.objs.FnPolicy.Lookup(uint32(unused), &id); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Errorf("policy map of index %d after DetachEndpoint: %v (want none)", unused, err)
	}
	if ct, err := n.d.estTable(unused); err != nil || ct != nil {
		t.Errorf("table of established connections left for index %d (%v)", unused, err)
	}
}

// BenchmarkAttachPrepared compares what AttachEndpoint costs a pod's start on a
// host veth the kernel numbered (prepared=false: as BenchmarkAttachEndpoint) and
// on one created on an index of the warm pool (prepared=true: the index prepared
// beforehand, untimed). Each op has a new veth, as each pod does (the hook's
// qdisc swaps on one device wait for a grace period when they follow each other
// closely). attach-us/op is the wall time of the attach alone, measured around
// it: the benchmark timer also counts its own stops and starts, which the
// untimed work makes costly.
func BenchmarkAttachPrepared(b *testing.B) {
	for _, prepared := range []bool{false, true} {
		b.Run(fmt.Sprintf("prepared=%v", prepared), func(b *testing.B) {
			n := newTestNode(b)
			ctx := context.Background()
			pol := DenyAll()
			var wall time.Duration
			for i := range b.N {
				b.StopTimer()
				index := 0
				if prepared {
					index = 1<<30 + i
					must(b, n.node.Do(func(ns.NetNS) error { return n.d.PrepareIndexes(ctx, []int{index})[0] }))
				}
				var ifindex int
				must(b, n.node.Do(func(ns.NetNS) error {
					v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "fnbench", Index: index}, PeerName: "eth0bench"}
					if err := netlink.LinkAdd(v); err != nil {
						return err
					}
					l, err := netlink.LinkByName("fnbench")
					if err == nil {
						ifindex = l.Attrs().Index
						err = netlink.LinkSetUp(l)
					}
					return err
				}))
				ep := Endpoint{IfIndex: ifindex, IP: serverIP, Identity: 300}
				b.StartTimer()
				t0 := time.Now()
				must(b, n.node.Do(func(ns.NetNS) error { return n.d.AttachEndpoint(ctx, ep, pol) }))
				wall += time.Since(t0)
				b.StopTimer()
				must(b, n.node.Do(func(ns.NetNS) error {
					return errors.Join(n.d.DetachEndpoint(ctx, ifindex), netlink.LinkDel(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "fnbench"}}))
				}))
				b.StartTimer()
			}
			b.ReportMetric(float64(wall.Microseconds())/float64(b.N), "attach-us/op")
		})
	}
}
