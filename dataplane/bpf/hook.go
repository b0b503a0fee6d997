package bpf

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The hooks: an endpoint's programs go on its host veth first as cls_bpf filters
// (direct action) of a clsact qdisc, one per direction, at hookPriority/hookHandle,
// and move to tcx links once the node is quiet (MoveToTCX):
//   - A tcx link waits for an RCU grace period under the kernel's rtnl lock on every
//     attach (kernel/bpf/tcx.c, tcx_entry_sync), ~12 ms each here, serialised
//     machine-wide: a burst of pods would queue behind each other's attaches
//     (BenchmarkHookAttach: 23.5-25.7 ms per veth with tcx, 0.26-0.28 ms with
//     filters). So the ADD path attaches filters.
//   - A filter belongs to whoever manages the device's tc: deleting the clsact qdisc
//     (an operator's tc qdisc del, another tool's) deletes it, and the pod's traffic
//     goes unjudged. A tcx link is detached only through the link, which the agent
//     pins, and runs before any clsact filter (TestNetnsTCXEndpointOutlivesItsQdisc).
//     So endpoints do not stay on filters.
//
// Per packet the two cost the same here: TCP_CRR with 1,000 rules, 12 interleaved
// rounds, 230.8 us/op on tcx and 230.6 on filters (p=0.84; dp=prog+1000rules and
// dp=prog+1000rules+filters of BenchmarkNetnsTCP). The verdicts are the same on
// both (TC_ACT_UNSPEC is tcx's "next", and passes when no other filter follows).
// tcx runs before clsact, so a move attaches the link first and then deletes the
// filter: no gap, and for the instant both are there a packet tcx lets through is
// judged twice by the same program, to the same verdict.
//
// tcx links are pinned under links/<ifindex>-<side> (they would go with the agent
// otherwise); filters live as long as their device and need no pin. An agent restart
// finds both and points each at its new programs in one atomic step: link.Update for
// a link, a replace of the same priority and handle for a filter.
const (
	hookPriority = 1
	hookHandle   = 1
	// hookNamePrefix starts both filters' names (tc filter show lists them).
	hookNamePrefix = "flatnet_"
)

// hookParent is the clsact side a direction's program runs on: the pod's egress
// enters the host through the veth's ingress.
func hookParent(dir int) uint32 {
	if dir == dirEgress {
		return netlink.HANDLE_MIN_INGRESS
	}
	return netlink.HANDLE_MIN_EGRESS
}

// hookProgram is the program of a direction, and its filter's name.
func (d *Datapath) hookProgram(dir int) (*ebpf.Program, string) {
	if dir == dirEgress {
		return d.objs.FromPod, hookNamePrefix + "from_pod"
	}
	return d.objs.ToPod, hookNamePrefix + "to_pod"
}

func hookFilter(ifindex, dir int) netlink.FilterAttrs {
	return netlink.FilterAttrs{LinkIndex: ifindex, Parent: hookParent(dir), Handle: hookHandle,
		Priority: hookPriority, Protocol: unix.ETH_P_ALL}
}

// attach points the direction's hook on the interface at its program: a tcx link
// the endpoint was moved to is updated in place, else the filter is added or
// replaced (atomically: it keeps its place). Neither waits for a grace period.
// It returns whether the endpoint is on a filter in that direction.
func (d *Datapath) attach(ifindex, dir int) (filtered bool, err error) {
	prog, name := d.hookProgram(dir)
	if l := d.pinnedTCXLink(ifindex, dir); l != nil {
		defer l.Close()
		if err := l.Update(prog); err != nil {
			return false, fmt.Errorf("pointing the tcx link of interface %d at %s: %w", ifindex, name, err)
		}
		// A filter left by a move cut short would run after tcx's "next".
		return false, delFilter(ifindex, dir)
	}
	if err := netlink.QdiscAdd(clsactQdisc(ifindex)); err != nil && !errors.Is(err, unix.EEXIST) {
		return false, fmt.Errorf("adding the clsact qdisc to interface %d: %w", ifindex, err)
	}
	f := &netlink.BpfFilter{FilterAttrs: hookFilter(ifindex, dir), Fd: prog.FD(), Name: name, DirectAction: true}
	if err := netlink.FilterReplace(f); err != nil {
		return false, fmt.Errorf("attaching %s to interface %d: %w", name, ifindex, err)
	}
	return true, nil
}

// clsactQdisc is the interface's clsact qdisc, which holds the filters.
func clsactQdisc(ifindex int) *netlink.GenericQdisc {
	return &netlink.GenericQdisc{QdiscType: "clsact", QdiscAttrs: netlink.QdiscAttrs{
		LinkIndex: ifindex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT}}
}

// detach takes the direction's program off the interface; an interface gone or
// without it is fine.
func (d *Datapath) detach(ifindex, dir int) error {
	return errors.Join(delFilter(ifindex, dir), d.dropTCXLink(ifindex, dir))
}

// delFilter deletes the direction's filter from the interface, if it is there.
func delFilter(ifindex, dir int) error {
	err := netlink.FilterDel(&netlink.BpfFilter{FilterAttrs: hookFilter(ifindex, dir)})
	if err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENODEV) && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("deleting the datapath filter of interface %d: %w", ifindex, err)
	}
	return nil
}

// MoveToTCX moves an endpoint's programs from its filters to tcx links, which no
// tc command can delete. Every link's attach waits for a grace period holding the
// kernel's rtnl lock, which every pod being set up on the node needs meanwhile, so
// the agent moves endpoints only while none is being attached (enforce's hook mover),
// and one direction at a time, holding the datapath's lock for one attach only. An
// endpoint detached, not attached by these programs (an upgrade's pending one) or
// moved already is left as it is; one that failed to move stays on its filters. It
// returns whether it moved a direction. Call it in the node's network namespace.
func (d *Datapath) MoveToTCX(ctx context.Context, ifindex int) (bool, error) {
	moved := false
	for _, dir := range []int{dirIngress, dirEgress} {
		if err := ctx.Err(); err != nil {
			return false, err
		}
		m, err := d.moveDirToTCX(ifindex, dir)
		if err != nil {
			return false, err
		}
		moved = moved || m
	}
	return moved, nil
}

// moveDirToTCX is MoveToTCX for one direction: whether it moved it. The second
// direction's call takes the endpoint off the filtered list.
func (d *Datapath) moveDirToTCX(ifindex, dir int) (bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.isFiltered(ifindex) {
		return false, nil // detached meanwhile, or moved
	}
	moved, err := d.moveDirLocked(ifindex, dir)
	if err != nil || dir == dirEgress {
		// Failed: it stays on its filters (same verdicts, dearer packets) until
		// attached again, rather than failing every time the mover tries.
		d.setFiltered(ifindex, false)
	}
	return moved, err
}

func (d *Datapath) moveDirLocked(ifindex, dir int) (bool, error) {
	prog, name := d.hookProgram(dir)
	running, err := hookProgramID(ifindex, dir)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil // its interface went away: its DEL follows
	}
	if err != nil {
		return false, err
	}
	if own, err := programID(prog); err != nil || running != own {
		return false, err // no filter (moved), or another program's
	}
	if l := d.pinnedTCXLink(ifindex, dir); l != nil {
		// On a link already (a stale pin is removed by the lookup): the filter
		// is one a move cut short left behind.
		l.Close()
		return false, delFilter(ifindex, dir)
	}
	at := ebpf.AttachTCXEgress
	if dir == dirEgress {
		at = ebpf.AttachTCXIngress
	}
	l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: prog, Attach: at})
	if err != nil {
		return false, fmt.Errorf("moving %s of interface %d to tcx: %w", name, ifindex, err)
	}
	defer l.Close() // the pin holds it
	if err := l.Pin(d.tcxLinkPin(ifindex, dir)); err != nil {
		return false, fmt.Errorf("pinning the tcx link of interface %d (its filter stays): %w", ifindex, err)
	}
	// The link decides from now on: the filter can go.
	if err := delFilter(ifindex, dir); err != nil {
		return false, err
	}
	return true, nil
}

// FilteredEndpoints lists the endpoints with a direction still on a filter (to move
// to tcx), in order.
func (d *Datapath) FilteredEndpoints() []int {
	d.hookMu.Lock()
	defer d.hookMu.Unlock()
	return slices.Sorted(maps.Keys(d.filtered))
}

func (d *Datapath) setFiltered(ifindex int, on bool) {
	d.hookMu.Lock()
	defer d.hookMu.Unlock()
	if on {
		if d.filtered == nil {
			d.filtered = map[int]bool{}
		}
		d.filtered[ifindex] = true
	} else {
		delete(d.filtered, ifindex)
	}
}

func (d *Datapath) isFiltered(ifindex int) bool {
	d.hookMu.Lock()
	defer d.hookMu.Unlock()
	return d.filtered[ifindex]
}

func programID(p *ebpf.Program) (ebpf.ProgramID, error) {
	info, err := p.Info()
	if err != nil {
		return 0, fmt.Errorf("reading the ID of %s: %w", p, err)
	}
	id, _ := info.ID()
	return id, nil
}

// hookProgramID returns the ID of the program the datapath's filter runs on the
// interface in that direction (0, nil: no such filter; os.ErrNotExist: no such
// interface).
func hookProgramID(ifindex, dir int) (ebpf.ProgramID, error) {
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		var lnf netlink.LinkNotFoundError
		if errors.As(err, &lnf) || errors.Is(err, unix.ENODEV) {
			return 0, os.ErrNotExist
		}
		return 0, fmt.Errorf("looking up interface %d: %w", ifindex, err)
	}
	fs, err := netlinksafe.FilterList(l, hookParent(dir))
	if err != nil {
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			return 0, nil // no clsact qdisc
		}
		return 0, fmt.Errorf("listing the filters of interface %d: %w", ifindex, err)
	}
	for _, f := range fs {
		bf, ok := f.(*netlink.BpfFilter)
		if ok && bf.Attrs().Priority == hookPriority && bf.Attrs().Handle == hookHandle && strings.HasPrefix(bf.Name, hookNamePrefix) {
			return ebpf.ProgramID(bf.Id), nil
		}
	}
	return 0, nil
}

// tcxLinkPin is where an endpoint's tcx link is pinned.
func (d *Datapath) tcxLinkPin(ifindex, dir int) string {
	name := "ingress"
	if dir == dirEgress {
		name = "egress"
	}
	return d.linkPinPath(fmt.Sprintf("%d-%s", ifindex, name))
}

// hookRunning returns the ID of the program deciding on the interface's traffic in
// that direction: its tcx link's if it has one (tcx runs first), else its filter's
// (0, nil: neither; os.ErrNotExist: no such interface).
func (d *Datapath) hookRunning(ifindex, dir int) (ebpf.ProgramID, error) {
	if l := d.pinnedTCXLink(ifindex, dir); l != nil { // attached: its interface is there
		defer l.Close()
		if info, err := l.Info(); err == nil {
			return info.Program, nil
		}
	}
	return hookProgramID(ifindex, dir)
}

// pinnedTCXLink opens the tcx link pinned for the interface in that direction (nil:
// none; a pin whose link its interface left behind, gone or its index reused, is
// removed).
func (d *Datapath) pinnedTCXLink(ifindex, dir int) link.Link {
	pin := d.tcxLinkPin(ifindex, dir)
	l, err := link.LoadPinnedLink(pin, nil)
	if err != nil {
		return nil
	}
	info, err := l.Info()
	if err != nil || info.TCX() == nil || info.TCX().Ifindex != uint32(ifindex) {
		_ = l.Unpin() // detached: its interface went away
		l.Close()
		return nil
	}
	return l
}

// dropTCXLink detaches the interface's tcx link, if one is pinned: the last
// reference goes with the pin. (With the interface still there that waits for a
// grace period; the plugin's DEL deletes the veth first, which detached it.)
func (d *Datapath) dropTCXLink(ifindex, dir int) error {
	pin := d.tcxLinkPin(ifindex, dir)
	l, err := link.LoadPinnedLink(pin, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("opening the tcx link %s: %w", pin, err)
	}
	defer l.Close()
	if err := l.Unpin(); err != nil {
		return fmt.Errorf("unpinning the tcx link %s: %w", pin, err)
	}
	return nil
}
