package bpf

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The hook: the programs sit on each host veth as cls_bpf filters (direct action)
// of a clsact qdisc, one per direction, at hookPriority/hookHandle. Not tcx: a tcx
// link waits for an RCU grace period under the kernel's rtnl lock on every attach
// (kernel/bpf/tcx.c, tcx_entry_sync), ~12 ms each here, serialised machine-wide,
// so a burst of pods queued behind each other's attaches (BenchmarkHookAttach:
// 23.5-25.7 ms per veth with tcx, 0.26-0.28 ms with clsact). A filter lives as
// long as its device, with no pin: an agent restart finds it on the device and
// replaces its program in one atomic step (same priority and handle). The verdicts
// are the same on both hooks (TC_ACT_UNSPEC, tcx's "next", passes when no other
// filter follows). The price is per packet, outside the programs: TCP_CRR with
// 1,000 rules on a bare node netns runs at 0.94-0.96 of no program against
// 0.98-1.03 on tcx (bench-datapath.sh BASE=<tcx commit>, two runs of 4 rounds);
// with kube-proxy's rules on the path the hooks are even. Moving endpoints to
// tcx in the background, off the ADD path, would take both.
//
// Earlier versions attached tcx links pinned under links/<ifindex>-<side>. tcx runs
// before clsact and its verdict is final, so attaching the filter first and then
// unpinning the link hands an endpoint over without a gap (dropTCXLink).
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

// attach puts the direction's program on the interface, or replaces the program
// there (atomically: the filter keeps its place).
func (d *Datapath) attach(ifindex, dir int) error {
	prog, name := d.hookProgram(dir)
	q := &netlink.GenericQdisc{QdiscType: "clsact", QdiscAttrs: netlink.QdiscAttrs{
		LinkIndex: ifindex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT}}
	if err := netlink.QdiscAdd(q); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("adding the clsact qdisc to interface %d: %w", ifindex, err)
	}
	f := &netlink.BpfFilter{FilterAttrs: hookFilter(ifindex, dir), Fd: prog.FD(), Name: name, DirectAction: true}
	if err := netlink.FilterReplace(f); err != nil {
		return fmt.Errorf("attaching %s to interface %d: %w", name, ifindex, err)
	}
	return d.dropTCXLink(ifindex, dir)
}

// detach takes the direction's program off the interface; an interface gone or
// without it is fine.
func (d *Datapath) detach(ifindex, dir int) error {
	err := netlink.FilterDel(&netlink.BpfFilter{FilterAttrs: hookFilter(ifindex, dir)})
	if err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENODEV) && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("detaching the datapath from interface %d: %w", ifindex, err)
	}
	return d.dropTCXLink(ifindex, dir)
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

// tcxLinkPin is where an earlier version pinned an endpoint's tcx link.
func (d *Datapath) tcxLinkPin(ifindex, dir int) string {
	name := "ingress"
	if dir == dirEgress {
		name = "egress"
	}
	return d.linkPinPath(fmt.Sprintf("%d-%s", ifindex, name))
}

// pinnedTCXProgram returns the ID of the program an earlier version's pinned tcx
// link runs on the interface in that direction (0: none, or its interface gone, in
// which case the pin is removed).
func (d *Datapath) pinnedTCXProgram(ifindex, dir int) ebpf.ProgramID {
	pin := d.tcxLinkPin(ifindex, dir)
	l, err := link.LoadPinnedLink(pin, nil)
	if err != nil {
		return 0
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil || info.TCX() == nil || info.TCX().Ifindex != uint32(ifindex) {
		_ = l.Unpin() // detached: its interface went away
		return 0
	}
	return info.Program
}

// dropTCXLink detaches an earlier version's tcx link from the interface, if one
// is pinned: the last reference goes with the pin.
func (d *Datapath) dropTCXLink(ifindex, dir int) error {
	pin := d.tcxLinkPin(ifindex, dir)
	l, err := link.LoadPinnedLink(pin, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("opening the earlier tcx link %s: %w", pin, err)
	}
	defer l.Close()
	if err := l.Unpin(); err != nil {
		return fmt.Errorf("unpinning the earlier tcx link %s: %w", pin, err)
	}
	return nil
}
