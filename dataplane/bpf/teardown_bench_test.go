package bpf

import (
	"context"
	"encoding/binary"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/flatnet/flatnet/dataplane/podnet/podnettest"
)

// fillCT fills the shared connection table with count connections of other
// endpoints (interface indexes no veth has), as a node with many pods under a flood
// of new connections has it.
func fillCT(t testing.TB, d *Datapath, count int) {
	t.Helper()
	const batch = 4096
	keys := make([]datapathCtKey, 0, batch)
	vals := make([]datapathCtVal, 0, batch)
	put := func() {
		if len(keys) == 0 {
			return
		}
		_, err := d.objs.FnCt.BatchUpdate(keys, vals, nil)
		must(t, err)
		keys, vals = keys[:0], vals[:0]
	}
	val := datapathCtVal{ExpiresNs: ^uint64(0), OriginDir: dirEgress}
	for i := 0; i < count; i++ {
		var addr [4]byte
		binary.BigEndian.PutUint32(addr[:], 0x0ae00000|uint32(i>>8)) // 10.224.x.y
		keys = append(keys, datapathCtKey{Ifindex: uint32(100000 + i%512), PodAddr: binary.NativeEndian.Uint32(addr[:]),
			PeerAddr: 0x0100000a, PodPort: uint16(1024 + i%60000), PeerPort: 80, Proto: 6})
		vals = append(vals, val)
		if len(keys) == batch {
			put()
		}
	}
	put()
}

// ctOf puts count new connections of the endpoint on ifindex (address serverIP) in
// the shared table.
func ctOf(t testing.TB, d *Datapath, ifindex, count int) {
	t.Helper()
	for i := 0; i < count; i++ {
		k := datapathCtKey{Ifindex: uint32(ifindex), PodAddr: addrBE(serverIP), PeerAddr: addrBE(clientIP),
			PodPort: uint16(20000 + i), PeerPort: 80, Proto: 6}
		must(t, d.objs.FnCt.Put(&k, &datapathCtVal{ExpiresNs: ^uint64(0), OriginDir: dirEgress}))
	}
}

// fullCTEndpoint is a node whose shared connection table is full of other
// endpoints' connections, and an endpoint on a veth: attach attaches it and gives it
// 64 new connections, detach detaches it. The timer starts afresh.
func fullCTEndpoint(b *testing.B) (d *Datapath, attach, detach func()) {
	n := newTestNode(b)
	ctx := context.Background()
	fillCT(b, n.d, DefaultCTEntries)
	ifindex := podnettest.AddVeth(b, n.node, "fnbench", "eth0bench")
	ep := Endpoint{IfIndex: ifindex, IP: serverIP, Identity: 300}
	attach = func() {
		must(b, n.node.Do(func(ns.NetNS) error { return n.d.AttachEndpoint(ctx, ep, DenyAll()) }))
		ctOf(b, n.d, ifindex, 64)
	}
	detach = func() { must(b, n.node.Do(func(ns.NetNS) error { return n.d.DetachEndpoint(ctx, ifindex) })) }
	b.ResetTimer()
	return n.d, attach, detach
}

// BenchmarkDetachEndpointFullCT measures what a pod's teardown holds the datapath's
// (and the enforcer's) lock for: DetachEndpoint of an endpoint with 64 new
// connections while the shared connection table is full of other endpoints'. Each op
// detaches a freshly attached endpoint (attach and its connections untimed).
func BenchmarkDetachEndpointFullCT(b *testing.B) {
	d, attach, detach := fullCTEndpoint(b)
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		attach()
		b.StartTimer()
		detach()
	}
	b.StopTimer()
	left, err := countKeys(d.objs.FnCt)
	must(b, err)
	b.ReportMetric(float64(left), "ct-entries")
}

// BenchmarkCollectOrphansFullCT measures the other half of a teardown: deleting the
// 64 connections a detached endpoint left in a full shared table (ExpireConnections,
// off the lock). Each op detaches a freshly attached endpoint first (untimed).
func BenchmarkCollectOrphansFullCT(b *testing.B) {
	d, attach, detach := fullCTEndpoint(b)
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		attach()
		detach()
		b.StartTimer()
		st, err := d.ExpireConnections(context.Background())
		must(b, err)
		if st.Orphaned != 64 {
			b.Fatalf("collected %d connections of the detached endpoint, want its 64", st.Orphaned)
		}
	}
}
