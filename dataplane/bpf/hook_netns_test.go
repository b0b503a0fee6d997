package bpf

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
)

// attachTCXAsBefore puts p's programs on its host veth the way versions before
// the clsact hook did: tcx links pinned under links/<ifindex>-<side>, no filter
// (the way MoveToTCX leaves them too).
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

// hookKind is where an endpoint's programs sit, for wantHookKind.
type hookKind string

const (
	onFilter hookKind = "filter"
	onTCX    hookKind = "tcx"
	onNone   hookKind = "none"
)

// wantHookKind checks where d's programs sit on the host veth ifindex of n's node
// in both directions: on the datapath's filters and no tcx link, on pinned tcx
// links and no filter, or on neither.
func wantHookKind(t *testing.T, n *testNode, d *Datapath, ifindex int, want hookKind) {
	t.Helper()
	for _, dir := range []int{dirIngress, dirEgress} {
		var filter, tcx ebpf.ProgramID
		must(t, n.node.Do(func(ns.NetNS) error {
			var err error
			filter, err = hookProgramID(ifindex, dir)
			if l := d.pinnedTCXLink(ifindex, dir); l != nil {
				info, ierr := l.Info()
				l.Close()
				if ierr != nil {
					return ierr
				}
				tcx = info.Program
			}
			return err
		}))
		prog, _ := d.hookProgram(dir)
		own, err := programID(prog)
		must(t, err)
		var wantFilter, wantTCX ebpf.ProgramID
		switch want {
		case onFilter:
			wantFilter = own
		case onTCX:
			wantTCX = own
		}
		if filter != wantFilter || tcx != wantTCX {
			t.Errorf("interface %d, direction %d: filter runs program %d, tcx link %d; want %s (own program %d)",
				ifindex, dir, filter, tcx, want, own)
		}
	}
}

// restartUnderProbes closes the node's datapath and loads the next agent's, as
// a restart or rollout does, while client's connections to server on port 80 are
// probed (allowed) and other's (denied): none may go the wrong way across it.
func (n *testNode) restartUnderProbes(t *testing.T, client, other, server *testPod, across string) *Datapath {
	t.Helper()
	probes := startProbes(client, other, server, 80)
	time.Sleep(200 * time.Millisecond)
	must(t, n.d.Close())
	d2, err := n.load(Options{})
	if err != nil {
		probes.halt()
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	probes.haltAndCheck(t, across, 5, 5)
	n.restartAgent(t, d2)
	return d2
}

// TestNetnsMoveToTCX: endpoints are attached on filters and moved to tcx links
// while traffic flows, with no allowed connection failing and no denied one
// passing; once moved they keep their links, and the links run the programs of
// whatever agent comes next; policy writes reach them; a detach removes the link.
func TestNetnsMoveToTCX(t *testing.T) {
	n := newTestNode(t)
	server, client, other := n.addServerClientOther()
	server.serveTCP(t, 80)
	n.cnp("allow-client", allowClient)
	pods := []*testPod{server, client, other}
	for _, p := range pods {
		wantHookKind(t, n, n.d, p.ifindex, onFilter)
	}
	if got := n.d.FilteredEndpoints(); len(got) != 3 {
		t.Fatalf("endpoints listed to move: %v, want the 3 attached", got)
	}

	probes := startProbes(client, other, server, 80)
	time.Sleep(200 * time.Millisecond)
	for _, p := range pods {
		var moved bool
		err := n.node.Do(func(ns.NetNS) error {
			var err error
			moved, err = n.d.MoveToTCX(context.Background(), p.ifindex)
			return err
		})
		if err != nil || !moved {
			probes.halt()
			t.Fatalf("moving interface %d to tcx: moved %v, %v", p.ifindex, moved, err)
		}
	}
	time.Sleep(400 * time.Millisecond)
	probes.haltAndCheck(t, "the move from filters to tcx", 5, 5)
	for _, p := range pods {
		wantHookKind(t, n, n.d, p.ifindex, onTCX)
	}
	if got := n.d.FilteredEndpoints(); len(got) != 0 {
		t.Errorf("endpoints listed to move after the move: %v", got)
	}
	must(t, n.node.Do(func(ns.NetNS) error {
		moved, err := n.d.MoveToTCX(context.Background(), server.ifindex)
		if moved {
			t.Errorf("an endpoint on tcx moved again")
		}
		return err
	}))
	// Attached again (the agent does at every policy change of its pod): it stays.
	n.reattach(t, server)
	wantHookKind(t, n, n.d, server.ifindex, onTCX)
	n.c.DeletePolicy("cnp/default/allow-client")
	n.flush()
	wantWorks(t, "policy deleted, on tcx", other.tcpWorks(server.ip, 80))
	n.cnp("allow-client", allowClient)
	wantBlocked(t, "policy back, on tcx", other.tcpQuick(server.ip, 80))

	// A new agent: the links stay, each pointed at its programs.
	d2 := n.restartUnderProbes(t, client, other, server, "a restart on tcx links")
	for _, p := range pods {
		wantHookKind(t, n, d2, p.ifindex, onTCX)
	}
	if got := d2.FilteredEndpoints(); len(got) != 0 {
		t.Errorf("a restarted agent lists endpoints on tcx to move: %v", got)
	}

	n.cnp("allow-client", allowClient)
	wantBlocked(t, "denied by the new agent's policy, on tcx", other.tcpQuick(server.ip, 80))
	must(t, n.node.Do(func(ns.NetNS) error { return d2.DetachEndpoint(context.Background(), server.ifindex) }))
	wantHookKind(t, n, d2, server.ifindex, onNone)
	for _, dir := range []int{dirIngress, dirEgress} {
		if _, err := os.Stat(d2.tcxLinkPin(server.ifindex, dir)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("tcx link pin of a detached endpoint left: %v", err)
		}
	}
	wantWorks(t, "server detached: no program judges its traffic", other.tcpWorks(server.ip, 80))
}

// TestNetnsMoveToTCXSkipsWhatIsNotItsToMove: an endpoint detached after it was
// listed, or whose interface is gone, is not moved and leaves no link behind.
func TestNetnsMoveToTCXSkipsWhatIsNotItsToMove(t *testing.T) {
	n := newTestNode(t)
	server, client := n.addServerClient()
	must(t, n.node.Do(func(ns.NetNS) error { return n.d.DetachEndpoint(context.Background(), client.ifindex) }))
	must(t, n.node.Do(func(ns.NetNS) error {
		moved, err := n.d.MoveToTCX(context.Background(), client.ifindex)
		if moved {
			t.Errorf("a detached endpoint was moved")
		}
		return err
	}))
	wantHookKind(t, n, n.d, client.ifindex, onNone)

	must(t, n.node.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByIndex(server.ifindex)
		if err != nil {
			return err
		}
		return netlink.LinkDel(l)
	}))
	must(t, n.node.Do(func(ns.NetNS) error {
		moved, err := n.d.MoveToTCX(context.Background(), server.ifindex)
		if moved {
			t.Errorf("the endpoint of a deleted interface was moved")
		}
		return err
	}))
	if _, err := os.Stat(n.d.tcxLinkPin(server.ifindex, dirIngress)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("tcx link pinned for a deleted interface: %v", err)
	}
}

// TestNetnsTCXEndpointsKeptOnRollout is a rollout over an agent that attached
// with tcx links (every earlier version did): the new agent keeps each link and
// points it at its own programs, with no allowed connection failing and no denied
// one passing, and its policy writes reach them.
func TestNetnsTCXEndpointsKeptOnRollout(t *testing.T) {
	n := newTestNode(t)
	server, client, other := n.addServerClientOther()
	server.serveTCP(t, 80)
	n.cnp("allow-client", allowClient)
	for _, p := range []*testPod{server, client, other} {
		n.attachTCXAsBefore(t, p)
		wantHookKind(t, n, n.d, p.ifindex, onTCX)
	}
	wantWorks(t, "allowed on tcx", client.tcpWorks(server.ip, 80))
	wantBlocked(t, "denied on tcx", other.tcpQuick(server.ip, 80))

	d2 := n.restartUnderProbes(t, client, other, server, "the rollout")
	for _, p := range []*testPod{server, client, other} {
		wantHookKind(t, n, d2, p.ifindex, onTCX)
	}
	n.cnp("allow-client", allowClient)
	wantWorks(t, "allowed after the rollout", client.tcpWorks(server.ip, 80))
	wantBlocked(t, "denied after the rollout", other.tcpQuick(server.ip, 80))
	n.c.DeletePolicy("cnp/default/allow-client")
	n.flush()
	wantWorks(t, "policy deleted by the new agent", other.tcpWorks(server.ip, 80))
}

// TestNetnsTCXEndpointOutlivesItsQdisc: whoever deletes a host veth's clsact
// qdisc (tc qdisc del dev ... clsact: an operator, another tool managing tc)
// takes an endpoint's filters with it, and its traffic goes unjudged until it is
// attached again; an endpoint moved to tcx links keeps its programs, which only
// their link (pinned by the agent) detaches.
func TestNetnsTCXEndpointOutlivesItsQdisc(t *testing.T) {
	n := newTestNode(t)
	server, client, other := n.addServerClientOther()
	server.serveTCP(t, 80)
	n.cnp("allow-client", allowClient)
	// other unattached: its packets reach the server through the host stack and
	// the server's veth, where only the server's own programs judge them (an
	// attached sender's programs judge the receiver's ingress too).
	must(t, n.node.Do(func(ns.NetNS) error { return n.d.DetachEndpoint(context.Background(), other.ifindex) }))
	wantBlocked(t, "denied on filters", other.tcpQuick(server.ip, 80))
	delClsact := func() {
		t.Helper()
		must(t, n.node.Do(func(ns.NetNS) error {
			return netlink.QdiscDel(clsactQdisc(server.ifindex))
		}))
	}
	delClsact()
	wantWorks(t, "the filters deleted with their qdisc: nothing judges the server's traffic", other.tcpWorks(server.ip, 80))

	n.reattach(t, server)
	wantBlocked(t, "denied once attached again", other.tcpQuick(server.ip, 80))
	must(t, n.node.Do(func(ns.NetNS) error { _, err := n.d.MoveToTCX(context.Background(), server.ifindex); return err }))
	delClsact()
	wantHookKind(t, n, n.d, server.ifindex, onTCX)
	wantBlocked(t, "denied on tcx with the clsact qdisc deleted", other.tcpQuick(server.ip, 80))
	wantWorks(t, "allowed on tcx with the clsact qdisc deleted", client.tcpWorks(server.ip, 80))
}
