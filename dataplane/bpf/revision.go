package bpf

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// The policy revision (fn_policy_rev): a packet continuing a connection in its opening
// direction skips the policy lookup when the connection's entry holds the current
// revision (handle in datapath.c), which it got when policy last allowed it. Every
// write to what a verdict reads (policy maps, IP cache, CIDR cache) bumps the
// revision once it is done, so the next packet of every connection is judged again
// under the new state; a packet that read the revision before the write was judged
// with what it read and leaves the old revision behind.
//
// Entries keep 16 bits of it (ct_val.policy_rev) and the revision runs 1..65535 and
// round again (0: never trusted). So that an entry's value never comes round again
// while the entry still holds it, each time the revision enters another quarter of
// that range the entries still holding a revision older than the previous quarter
// are cleared: an entry is trusted for at most two quarters' worth of bumps, then
// judged again.
const revQuarter = 1 << 14

// revQuarterOf is the quarter of the range a revision is in.
func revQuarterOf(rev uint16) uint16 { return rev / revQuarter }

// nextRevision is the revision after rev, skipping 0.
func nextRevision(rev uint16) uint16 {
	if rev == 0xffff {
		return 1
	}
	return rev + 1
}

// loadRevision continues from the revision a previous agent left pinned (its
// connections hold its revisions) and bumps it once.
func (d *Datapath) loadRevision() error {
	var r datapathPolicyRev
	if err := d.objs.FnPolicyRev.Lookup(uint32(0), &r); err != nil {
		return fmt.Errorf("reading the policy revision: %w", err)
	}
	d.revMu.Lock()
	d.rev = uint16(r.Rev)
	d.revMu.Unlock()
	return d.bumpRevision()
}

// bumpRevision makes every tracked connection's next packet be judged by policy
// again: call it after writing anything a verdict reads.
func (d *Datapath) bumpRevision() error {
	if d.objs.FnPolicyRev == nil {
		return nil // a version's programs that read no revision (the upgrade test's previous one)
	}
	d.revMu.Lock()
	defer d.revMu.Unlock()
	next := nextRevision(d.rev)
	if q := revQuarterOf(next); next == 1 || q != revQuarterOf(d.rev) {
		if err := d.clearRevisions(q); err != nil {
			return err
		}
	}
	if err := d.objs.FnPolicyRev.Put(uint32(0), &datapathPolicyRev{Rev: uint32(next)}); err != nil {
		return fmt.Errorf("writing the policy revision: %w", err)
	}
	d.rev = next
	return nil
}

// clearRevisions sets to 0 the revision of every tracked connection holding one of
// neither quarter q nor the quarter before it.
func (d *Datapath) clearRevisions(q uint16) error {
	prev := (q + 3) % 4
	stale := func(v *datapathCtVal) bool {
		rq := revQuarterOf(v.PolicyRev)
		return v.PolicyRev != 0 && rq != q && rq != prev
	}
	tables := []*ebpf.Map{d.objs.FnCt}
	var ifindex uint32
	var id ebpf.MapID
	it := d.objs.FnCtEst.Iterate()
	for it.Next(&ifindex, &id) {
		if m, err := ebpf.NewMapFromID(id); err == nil {
			defer m.Close()
			tables = append(tables, m)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("listing connection tables: %w", err)
	}
	for _, m := range tables {
		var keys []datapathCtKey
		if err := walkCT(m, func(k *datapathCtKey, v *datapathCtVal) error {
			if stale(v) {
				keys = append(keys, *k)
			}
			return nil
		}); err != nil {
			return fmt.Errorf("walking connections to clear old policy revisions: %w", err)
		}
		for i := range keys {
			var v datapathCtVal
			if m.Lookup(&keys[i], &v) != nil || !stale(&v) {
				continue // gone, moved or judged again since the walk
			}
			v.PolicyRev = 0
			if err := m.Update(&keys[i], &v, ebpf.UpdateExist); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return fmt.Errorf("clearing the policy revision of a connection: %w", err)
			}
		}
	}
	return nil
}

// written bumps the revision after a write (whose error is err) to what verdicts
// read; it is bumped whether or not the write failed.
func (d *Datapath) written(err error) error {
	return errors.Join(err, d.bumpRevision())
}
