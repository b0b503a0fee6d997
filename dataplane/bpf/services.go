package bpf

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// serviceHookPriority runs the Service egress check on FORWARD right after the
// filter table (priority 0), i.e. after kube-proxy's DNAT in PREROUTING.
const serviceHookPriority = 1

func (d *Datapath) servicePin() string { return filepath.Join(d.pinDir, "links", "service-forward") }

// AttachServiceHook attaches the netfilter program that judges a pod's egress to a
// Service on the backend kube-proxy picked. Call it in the node's network namespace;
// the link is pinned, so it outlives the agent. A link a previous agent pinned is
// replaced by one running the newly loaded program: the new link is attached before
// the old one goes, so both (sharing the maps) overlap instead of leaving a gap.
func (d *Datapath) AttachServiceHook(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	// The kernel refuses a second BPF link at the priority the previous agent's link
	// still holds (EBUSY), so the new one takes the other of two adjacent priorities;
	// both run after the filter table, and the old one goes once the new one is in.
	var l link.Link
	var err error
	for _, prio := range []int{serviceHookPriority, serviceHookPriority + 1} {
		l, err = link.AttachNetfilter(link.NetfilterOptions{
			Program:        d.objs.ServiceEgress,
			ProtocolFamily: link.NetfilterProtoIPv4,
			Hook:           link.NetfilterInetForward,
			Priority:       int32(prio),
		})
		if !errors.Is(err, unix.EBUSY) {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("attaching the Service egress program to netfilter FORWARD: %w", err)
	}
	defer l.Close()
	pin := d.servicePin()
	if old, err := link.LoadPinnedLink(pin, nil); err == nil && d.up != nil {
		// An upgrade: the previous version's hook stays attached (it judges the
		// endpoints still on its programs) until finishUpgrade unpins it.
		old.Close()
		if err := os.Rename(pin, pin+pendingSuffix); err != nil {
			return fmt.Errorf("setting the previous Service hook aside: %w", err)
		}
	} else if err == nil {
		if err := old.Unpin(); err != nil {
			old.Close()
			return fmt.Errorf("unpinning the previous Service hook: %w", err)
		}
		old.Close()
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("opening the previous Service hook %s: %w", pin, err)
	}
	if err := l.Pin(pin); err != nil {
		return fmt.Errorf("pinning the Service hook: %w", err)
	}
	return nil
}

// DetachServiceHook removes the netfilter program (for uninstall).
func (d *Datapath) DetachServiceHook(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	l, err := link.LoadPinnedLink(d.servicePin(), nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("opening the Service hook: %w", err)
	}
	defer l.Close()
	if err := l.Unpin(); err != nil {
		return fmt.Errorf("unpinning the Service hook: %w", err)
	}
	return nil
}
