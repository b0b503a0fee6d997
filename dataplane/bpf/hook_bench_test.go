package bpf

import (
	"fmt"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/flatnet/flatnet/internal/testenv"
)

// BenchmarkHookAttach is what putting programs on both directions of a new host
// veth costs the kernel, by hook: tcx links (what the datapath uses) against the
// older clsact qdisc with two cls_bpf filters. It measures the hook alone (a
// two-instruction program; veth creation and deletion are outside the timer):
// the evidence behind the CNI ADD floor in dataplane/cni/DESIGN.md. tcx waits for
// an RCU grace period per link under rtnl (kernel/bpf/tcx.c: tcx_entry_sync);
// clsact's miniq swap waits only when a grace period since the last swap has
// not passed.
func BenchmarkHookAttach(b *testing.B) {
	testenv.RequireRoot(b)
	newProg := func(at ebpf.AttachType) *ebpf.Program {
		p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, AttachType: at, License: "GPL",
			Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()}})
		if err != nil {
			b.Fatalf("loading a program: %v", err)
		}
		b.Cleanup(func() { p.Close() })
		return p
	}
	ingress, egress, cls := newProg(ebpf.AttachTCXIngress), newProg(ebpf.AttachTCXEgress), newProg(ebpf.AttachNone)
	hooks := []struct {
		name   string
		attach func(ifindex int) (detach func(), err error)
	}{
		{"tcx", func(ifindex int) (func(), error) {
			in, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: ingress, Attach: ebpf.AttachTCXIngress})
			if err != nil {
				return nil, err
			}
			out, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: egress, Attach: ebpf.AttachTCXEgress})
			if err != nil {
				in.Close()
				return nil, err
			}
			return func() { in.Close(); out.Close() }, nil
		}},
		{"tc-clsact", func(ifindex int) (func(), error) {
			q := &netlink.GenericQdisc{QdiscType: "clsact", QdiscAttrs: netlink.QdiscAttrs{
				LinkIndex: ifindex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT}}
			if err := netlink.QdiscAdd(q); err != nil {
				return nil, err
			}
			for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
				f := &netlink.BpfFilter{Fd: cls.FD(), Name: "bench", DirectAction: true, FilterAttrs: netlink.FilterAttrs{
					LinkIndex: ifindex, Parent: parent, Handle: 1, Protocol: unix.ETH_P_ALL, Priority: 1}}
				if err := netlink.FilterAdd(f); err != nil {
					return nil, err
				}
			}
			return func() {}, nil // the qdisc goes with the device
		}},
	}
	for _, h := range hooks {
		b.Run("hook="+h.name, func(b *testing.B) {
			for i := 0; b.Loop(); i++ {
				b.StopTimer()
				name := fmt.Sprintf("fnbh%d", i%1000)
				v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"}
				if err := netlink.LinkAdd(v); err != nil {
					b.Fatalf("creating veth %s: %v", name, err)
				}
				l, err := netlink.LinkByName(name)
				if err != nil {
					b.Fatalf("reading veth %s: %v", name, err)
				}
				b.StartTimer()
				detach, err := h.attach(l.Attrs().Index)
				b.StopTimer()
				if err != nil {
					netlink.LinkDel(v)
					b.Fatalf("attaching by %s to %s: %v", h.name, name, err)
				}
				detach()
				if err := netlink.LinkDel(v); err != nil {
					b.Fatalf("deleting veth %s: %v", name, err)
				}
				b.StartTimer()
			}
		})
	}
}
