package agent

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/flatnet/flatnet/dataplane/endpointapi"
	"github.com/flatnet/flatnet/dataplane/podnet/podnettest"
)

// ipDatapath keeps what a datapath keys by address (the IP cache, the local
// address map): which containers are attached with each address, and the
// order of calls.
type ipDatapath struct {
	recordingDatapath
	calls []string
}

func (d *ipDatapath) Attach(ctx context.Context, ep endpointapi.Endpoint) error {
	if err := d.recordingDatapath.Attach(ctx, ep); err != nil {
		return err
	}
	d.mu.Lock()
	d.calls = append(d.calls, "attach "+ep.ContainerID)
	d.mu.Unlock()
	return nil
}

func (d *ipDatapath) Detach(ctx context.Context, ep endpointapi.Endpoint) error {
	d.mu.Lock()
	d.calls = append(d.calls, "detach "+ep.ContainerID)
	d.mu.Unlock()
	return d.recordingDatapath.Detach(ctx, ep)
}

// holders lists the containers attached with ip.
func (d *ipDatapath) holders(ip netip.Addr) []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []string
	for id, ep := range d.attached {
		if ep.IP == ip {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out
}

// gc runs the installed plugin's CNI GC as a restarted runtime does: the
// attachments it still knows are valid, every other one is released.
func (tn *testNode) gc(list *libcni.NetworkConfigList, valid ...string) {
	tn.t.Helper()
	var atts []types.GCAttachment
	for _, id := range valid {
		atts = append(atts, types.GCAttachment{ContainerID: id, IfName: "eth0"})
	}
	if err := tn.ns.Do(func(ns.NetNS) error {
		c := libcni.NewCNIConfigWithCacheDir([]string{tn.cfg.CNIBinDir}, tn.t.TempDir(), nil)
		return c.GCNetworkList(context.Background(), list, &libcni.GCArgs{ValidAttachments: atts})
	}); err != nil {
		tn.t.Fatalf("CNI GC: %v", err)
	}
}

// A lost CNI DEL: pod a's sandbox is gone (containerd restarted and its GC
// released a's address), a is deleted from the API, the agent was never
// told. The next pod that gets a's address (forced: a block of 10, the
// other 9 taken) must be the only endpoint with it, a's detached first.
func TestReusedAddressReplacesTheStaleEndpoint(t *testing.T) {
	tn := newTestNode(t, 10, 10)
	dp := &ipDatapath{recordingDatapath: recordingDatapath{attached: map[string]endpointapi.Endpoint{}}}
	tn.cfg.Hook = dp
	// Neither the periodic collection nor the leak finder may get there
	// first: this is the ADD's own replacement.
	tn.cfg.Reconcile, tn.cfg.LeakGrace = time.Hour, time.Hour
	list, err := libcni.ConfListFromBytes(tn.start())
	if err != nil {
		t.Fatal(err)
	}
	ipA, err := tn.add(list, "c-a", "a", podnettest.NewNS(t))
	if err != nil {
		t.Fatal(err)
	}
	var others []string
	for i := range 9 {
		id := fmt.Sprintf("c-%d", i)
		if _, err := tn.add(list, id, fmt.Sprintf("p%d", i), podnettest.NewNS(t)); err != nil {
			t.Fatalf("ADD %s: %v", id, err)
		}
		others = append(others, id)
	}
	tn.gc(list, others...) // a's DEL never comes; the runtime's GC releases it
	ipB, err := tn.add(list, "c-b", "b", podnettest.NewNS(t))
	if err != nil {
		t.Fatal(err)
	}
	if ipB != ipA {
		t.Fatalf("b got %s, want a's %s (the only free address)", ipB, ipA)
	}
	if got := dp.holders(ipA); !slices.Equal(got, []string{"c-b"}) {
		t.Errorf("attached with %s: %v, want only c-b", ipA, got)
	}
	if _, ok := tn.agent.endpoints.Get("c-a"); ok {
		t.Error("the agent still has a's endpoint record")
	}
	dp.mu.Lock()
	calls := slices.Clone(dp.calls)
	dp.mu.Unlock()
	if da, ab := slices.Index(calls, "detach c-a"), slices.Index(calls, "attach c-b"); da < 0 || da > ab {
		t.Errorf("datapath calls %v: want a detached before b is attached", calls)
	}
}

// The same lost DEL without the address being reused: the agent collects
// the endpoint whose allocation is gone on its own.
func TestEndpointWithoutAllocationIsCollected(t *testing.T) {
	tn := newTestNode(t, 10, 10)
	dp := &ipDatapath{recordingDatapath: recordingDatapath{attached: map[string]endpointapi.Endpoint{}}}
	tn.cfg.Hook = dp
	tn.cfg.LeakGrace = time.Hour
	list, err := libcni.ConfListFromBytes(tn.start())
	if err != nil {
		t.Fatal(err)
	}
	ip, err := tn.add(list, "c-a", "a", podnettest.NewNS(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tn.add(list, "c-keep", "keep", podnettest.NewNS(t)); err != nil {
		t.Fatal(err)
	}
	tn.gc(list, "c-keep")
	eventually(t, "a's endpoint to be collected", func() bool {
		_, ok := tn.agent.endpoints.Get("c-a")
		return !ok && len(dp.holders(ip)) == 0
	})
	if _, ok := tn.agent.endpoints.Get("c-keep"); !ok {
		t.Error("the endpoint of a live attachment was collected")
	}
}
