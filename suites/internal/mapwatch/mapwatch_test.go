package mapwatch

import (
	"context"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/flatnet/flatnet/internal/testenv"
)

// A node's maps as the agent pins them (dataplane/bpf/c's layout), in a bpffs
// of the test's own: the watcher finds the endpoint by its address, sees
// nothing while its policy map stays, and reports the swap of a new one with
// an instant between the swap's start and its return.
func TestWatcherSeesAPolicyMapSwap(t *testing.T) {
	testenv.RequireRoot(t)
	dir := testenv.BPFFS(t)
	inner := &ebpf.MapSpec{Type: ebpf.Hash, KeySize: 8, ValueSize: 4, MaxEntries: 64}
	eps := pin(t, dir, "fn_endpoints", &ebpf.MapSpec{Type: ebpf.Hash, KeySize: 4, ValueSize: 16, MaxEntries: 16})
	pol := pin(t, dir, "fn_policy", &ebpf.MapSpec{Type: ebpf.HashOfMaps, KeySize: 4, ValueSize: 4, MaxEntries: 16, InnerMap: inner})
	ip := netip.MustParseAddr("10.224.0.70")
	// Two endpoints; the watched one is ifindex 7.
	for ifindex, addr := range map[uint32]netip.Addr{5: netip.MustParseAddr("10.224.0.69"), 7: ip} {
		val := make([]byte, 16)
		a := addr.As4()
		copy(val, a[:])
		if err := eps.Put(ifindex, val); err != nil {
			t.Fatal(err)
		}
		swapIn(t, pol, ifindex, inner)
	}

	node := Target{Node: "node-a", IP: ip}
	w, err := start(context.Background(), []Target{node}, time.Millisecond,
		func(context.Context, string) (string, error) { return dir, nil })
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	t0 := time.Now()
	time.Sleep(20 * time.Millisecond)
	if s, ok := w.FirstSwap(node, t0); ok {
		t.Fatalf("a swap at %s reported while nothing changed", s.At)
	}
	swapIn(t, pol, 5, inner) // another endpoint's policy: not ours
	before := time.Now()
	id := swapIn(t, pol, 7, inner)
	after := time.Now()
	deadline := time.Now().Add(5 * time.Second)
	var s Swap
	for ok := false; !ok; s, ok = w.FirstSwap(node, t0) {
		if time.Now().After(deadline) {
			t.Fatal("the swap of ifindex 7's policy map was not seen in 5s")
		}
		time.Sleep(time.Millisecond)
	}
	if s.MapID != id {
		t.Errorf("swap reported map %d, the new map is %d", s.MapID, id)
	}
	if s.At.Before(before) {
		t.Errorf("swap seen at %s, before it was made (%s)", s.At, before)
	}
	t.Logf("swap seen %s after the update returned", s.At.Sub(after))
	if err := w.Stop(); err != nil {
		t.Fatal(err)
	}
}

// An address no endpoint has, and a node without the agent's maps, fail at
// Start naming what is missing.
func TestStartNamesWhatIsMissing(t *testing.T) {
	testenv.RequireRoot(t)
	dir := testenv.BPFFS(t)
	inner := &ebpf.MapSpec{Type: ebpf.Hash, KeySize: 8, ValueSize: 4, MaxEntries: 64}
	pin(t, dir, "fn_endpoints", &ebpf.MapSpec{Type: ebpf.Hash, KeySize: 4, ValueSize: 16, MaxEntries: 16})
	pin(t, dir, "fn_policy", &ebpf.MapSpec{Type: ebpf.HashOfMaps, KeySize: 4, ValueSize: 4, MaxEntries: 16, InnerMap: inner})
	at := func(d string) func(context.Context, string) (string, error) {
		return func(context.Context, string) (string, error) { return d, nil }
	}
	_, err := start(context.Background(), []Target{{Node: "node-a", IP: netip.MustParseAddr("10.224.0.9")}}, time.Millisecond, at(dir))
	if err == nil || !strings.Contains(err.Error(), "no endpoint with address 10.224.0.9") || !strings.Contains(err.Error(), "node-a") {
		t.Errorf("unknown address: %v", err)
	}
	empty := t.TempDir()
	_, err = start(context.Background(), []Target{{Node: "node-b", IP: netip.MustParseAddr("10.224.0.9")}}, time.Millisecond, at(empty))
	if err == nil || !strings.Contains(err.Error(), "node-b") || !strings.Contains(err.Error(), empty) {
		t.Errorf("no maps: %v", err)
	}
}

func pin(t *testing.T, dir, name string, spec *ebpf.MapSpec) *ebpf.Map {
	t.Helper()
	m, err := ebpf.NewMap(spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	if err := m.Pin(filepath.Join(dir, name)); err != nil {
		t.Fatal(err)
	}
	return m
}

// swapIn puts a new inner map under ifindex, as the agent's policy write does,
// and returns the new map's ID.
func swapIn(t *testing.T, pol *ebpf.Map, ifindex uint32, inner *ebpf.MapSpec) uint32 {
	t.Helper()
	m, err := ebpf.NewMap(inner)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := pol.Put(ifindex, uint32(m.FD())); err != nil {
		t.Fatal(err)
	}
	info, err := m.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, _ := info.ID()
	return uint32(id)
}
