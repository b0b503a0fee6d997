package bpf

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/flatnet/flatnet/dataplane/compile"
	"github.com/flatnet/flatnet/dataplane/podnet/podnettest"
	"github.com/flatnet/flatnet/internal/testenv"
)

// TestAttachEndpointsGivesEachItsTable: a group attached together (their tables
// installed in one batch) gives every valid endpoint a table of its own of the
// configured size, and a bad endpoint in the group fails alone.
func TestAttachEndpointsGivesEachItsTable(t *testing.T) {
	n := newTestNodeWith(t, Options{CTEstablishedPerEndpoint: 32})
	ctx := context.Background()
	var eps []Endpoint
	var pols []*compile.EndpointPolicy
	for i := range 4 {
		ifindex := podnettest.AddVeth(t, n.node, fmt.Sprintf("fnest%d", i), fmt.Sprintf("eth0est%d", i))
		eps = append(eps, Endpoint{IfIndex: ifindex, IP: netip.AddrFrom4([4]byte{10, 224, 7, byte(10 + i)}), Identity: 300})
		pols = append(pols, DenyAll())
	}
	eps = append(eps, Endpoint{IfIndex: 0, IP: serverIP}) // no interface
	pols = append(pols, DenyAll())
	var errs []error
	must(t, n.node.Do(func(ns.NetNS) error { errs = n.d.AttachEndpoints(ctx, eps, pols); return nil }))
	if errs[len(eps)-1] == nil {
		t.Errorf("an endpoint without an interface index attached without an error")
	}
	seen := map[ebpf.MapID]int{}
	for i, ep := range eps[:len(eps)-1] {
		if errs[i] != nil {
			t.Fatalf("attaching endpoint %d: %v", ep.IfIndex, errs[i])
		}
		m, err := n.d.estTable(ep.IfIndex)
		must(t, err)
		if m == nil {
			t.Fatalf("endpoint %d attached without a table of established connections", ep.IfIndex)
		}
		info, err := m.Info()
		must(t, err)
		id, _ := info.ID()
		if other, dup := seen[id]; dup {
			t.Errorf("endpoints %d and %d share the connection table %d", other, ep.IfIndex, id)
		}
		seen[id] = ep.IfIndex
		if m.MaxEntries() != 32 {
			t.Errorf("endpoint %d: table of %d entries, want the configured 32", ep.IfIndex, m.MaxEntries())
		}
		m.Close()
	}
}

// TestEstTableResizedKeepsConnections: an agent configured with another table size
// gives each endpoint a table of that size at load, holding the connections its
// previous table held, so their replies still pass an ingress default deny.
func TestEstTableResizedKeepsConnections(t *testing.T) {
	testenv.RequireRoot(t)
	ctx := context.Background()
	pinDir := filepath.Join(testenv.BPFFS(t), "flatnet")
	// The test endpoint's interface is the lo of a netns of its own: a restarted
	// agent keeps only endpoints whose interface carries the datapath's filters.
	node := podnettest.NewNS(t)
	load := func(opts Options) (d *Datapath) {
		must(t, node.Do(func(ns.NetNS) (err error) { d, err = LoadWith(ctx, pinDir, opts); return err }))
		return d
	}
	d := load(Options{CTEntries: 64, CTEstablishedPerEndpoint: 16})
	setEndpoint(t, d, serverIP, 300, &compile.EndpointPolicy{Enforce: [2]bool{true, false}})
	must(t, node.Do(func(ns.NetNS) error { return d.attachLinks(ctx, testIfindex) }))
	peer := netip.MustParseAddr("10.224.9.9")
	conn := func(i int) pkt { return tcp(serverIP, peer, uint16(1000+i), 80, tcpSYN) }
	const open = 10
	for i := range open {
		expect(t, d, "SYN out", dirEgress, conn(i), tcxAllowed())
		expect(t, d, "SYN-ACK in", dirIngress, conn(i).reply(tcpSYN|tcpACK), tcxAllowed())
	}
	d.Close()

	d = load(Options{CTEntries: 64, CTEstablishedPerEndpoint: 32})
	t.Cleanup(func() { d.Close() })
	est, err := d.estTable(testIfindex)
	must(t, err)
	if est == nil {
		t.Fatal("the endpoint lost its table of established connections")
	}
	defer est.Close()
	if est.MaxEntries() != 32 {
		t.Errorf("table of %d entries after the agent asked for 32", est.MaxEntries())
	}
	if got, err := countKeys(est); err != nil || got != open {
		t.Errorf("%d connections in the new table (%v), want the %d established", got, err, open)
	}
	for i := range open {
		expect(t, d, "a reply of a connection established before the resize", dirIngress, conn(i).reply(tcpACK), tcxAllowed())
	}
	expect(t, d, "a reply of a connection never opened", dirIngress, conn(open).reply(tcpACK), tcxDrop)
}

// BenchmarkInstallEstTables measures installing a 30-pod burst's tables of
// established connections in fn_ct_est (each map-in-map update from user space
// waits for a grace period): one by one, concurrently as the attach goroutines
// did, against one batch (ensureEstTables). The tables are deleted between ops
// (untimed).
func BenchmarkInstallEstTables(b *testing.B) {
	testenv.RequireRoot(b)
	d, err := LoadWith(context.Background(), filepath.Join(testenv.BPFFS(b), "flatnet"), Options{})
	must(b, err)
	b.Cleanup(func() { d.Close() })
	const burst = 30
	ifindexes := make([]int, burst)
	keys := make([]uint32, burst)
	for i := range ifindexes {
		ifindexes[i] = 1000 + i // no interface needed: only the maps are written
		keys[i] = uint32(ifindexes[i])
	}
	for _, bc := range []struct {
		name    string
		install func() error
	}{
		{"concurrent", func() error {
			errs := make([]error, burst)
			var wg sync.WaitGroup
			for i, ifindex := range ifindexes {
				wg.Go(func() { errs[i] = d.ensureEstTable(ifindex) })
			}
			wg.Wait()
			return errors.Join(errs...)
		}},
		{"batch", func() error { return errors.Join(d.ensureEstTables(ifindexes)...) }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			for range b.N {
				must(b, bc.install())
				b.StopTimer()
				if n, err := d.objs.FnCtEst.BatchDelete(keys, nil); err != nil || n != burst {
					b.Fatalf("deleting the tables: %d of %d, %v", n, burst, err)
				}
				b.StartTimer()
			}
		})
	}
}
