package bpf

import (
	"errors"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/containernetworking/plugins/pkg/ns"
)

// attachTCXAsBefore puts p's programs on its host veth the way versions before
// the clsact hook did: tcx links pinned under links/<ifindex>-<side>, no filter.
func (n *testNode) attachTCXAsBefore(t *testing.T, p *testPod) {
	t.Helper()
	must(t, n.node.Do(func(ns.NetNS) error {
		for _, dir := range []int{dirIngress, dirEgress} {
			if err := n.d.detach(p.ifindex, dir); err != nil {
				return err
			}
			prog, at := n.d.objs.ToPod, ebpf.AttachTCXEgress
			if dir == dirEgress {
				prog, at = n.d.objs.FromPod, ebpf.AttachTCXIngress
			}
			l, err := link.AttachTCX(link.TCXOptions{Interface: p.ifindex, Program: prog, Attach: at})
			if err != nil {
				return err
			}
			err = l.Pin(n.d.tcxLinkPin(p.ifindex, dir))
			l.Close()
			if err != nil {
				return err
			}
		}
		return nil
	}))
}

// TestNetnsTCXEndpointsMoveToClsact is a rollout over an agent of the tcx hook:
// its endpoints' pinned tcx links are replaced by the new agent's filters at
// load, the filter first (tcx runs before clsact, so it decides until its link
// goes), with no allowed connection failing and no denied one passing; no link
// pin is left, and the new agent's policy writes reach the new filters.
func TestNetnsTCXEndpointsMoveToClsact(t *testing.T) {
	n := newTestNode(t)
	server, client, other := n.addServerClientOther()
	server.serveTCP(t, 80)
	n.cnp("allow-client", allowClient)
	for _, p := range []*testPod{server, client, other} {
		n.attachTCXAsBefore(t, p)
		wantHook(t, n, n.d, p.ifindex, false)
	}
	wantWorks(t, "allowed on tcx", client.tcpWorks(server.ip, 80))
	wantBlocked(t, "denied on tcx", other.tcpQuick(server.ip, 80))

	probes := startProbes(client, other, server, 80)
	time.Sleep(200 * time.Millisecond)
	must(t, n.d.Close())
	d2, err := n.load(Options{})
	if err != nil {
		probes.halt()
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	probes.haltAndCheck(t, "the move from tcx to clsact", 5, 5)

	n.restartAgent(t, d2)
	for _, p := range []*testPod{server, client, other} {
		wantHook(t, n, d2, p.ifindex, true)
		for _, dir := range []int{dirIngress, dirEgress} {
			if _, err := os.Stat(d2.tcxLinkPin(p.ifindex, dir)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("tcx link pin of interface %d left after the move: %v", p.ifindex, err)
			}
		}
	}
	n.cnp("allow-client", allowClient)
	wantWorks(t, "allowed after the move", client.tcpWorks(server.ip, 80))
	wantBlocked(t, "denied after the move", other.tcpQuick(server.ip, 80))
	n.c.DeletePolicy("cnp/default/allow-client")
	n.flush()
	wantWorks(t, "policy deleted by the new agent", other.tcpWorks(server.ip, 80))
}
