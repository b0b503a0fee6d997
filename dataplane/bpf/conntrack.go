package bpf

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Defaults of Options: the sizes of CT_MAX and CT_EST_MAX in c/datapath.h.
const (
	DefaultCTEntries                = 262144
	DefaultCTEstablishedPerEndpoint = 8192
)

// Options of LoadWith. Connection tracking keeps new and closing connections in one
// LRU table shared by all endpoints (CTEntries) and established ones in a table per
// endpoint (CTEstablishedPerEndpoint) that nothing evicts: a flood of new connections
// from one pod pushes out only other new or closing connections, never an
// established one.
type Options struct {
	// CTEntries sizes the shared table; 0 means DefaultCTEntries.
	CTEntries int
	// CTEstablishedPerEndpoint sizes each endpoint's table of established
	// connections; 0 means DefaultCTEstablishedPerEndpoint. A pod with more
	// established connections keeps the excess in the shared table, where a flood
	// may evict them.
	CTEstablishedPerEndpoint int
}

func (o Options) sizes() (shared, est uint32, err error) {
	check := func(field string, n, def, lo, hi int) (uint32, error) {
		if n == 0 {
			return uint32(def), nil
		}
		if n < lo || n > hi {
			return 0, fmt.Errorf("%s %d: want %d..%d (0 for the default %d)", field, n, lo, hi, def)
		}
		return uint32(n), nil
	}
	if shared, err = check("CT entries", o.CTEntries, DefaultCTEntries, 64, 1<<24); err != nil {
		return 0, 0, err
	}
	est, err = check("CT established entries per endpoint", o.CTEstablishedPerEndpoint, DefaultCTEstablishedPerEndpoint, 16, 1<<22)
	return shared, est, err
}

// estTable opens an endpoint's table of established connections (nil, nil: none).
func (d *Datapath) estTable(ifindex int) (*ebpf.Map, error) {
	var id ebpf.MapID
	if err := d.objs.FnCtEst.Lookup(uint32(ifindex), &id); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("looking up the connection table of endpoint %d: %w", ifindex, err)
	}
	m, err := ebpf.NewMapFromID(id)
	if err != nil {
		return nil, fmt.Errorf("opening the connection table of endpoint %d: %w", ifindex, err)
	}
	return m, nil
}

// ensureEstTable gives an endpoint a table of established connections of the
// configured size, as ensureEstTables does.
func (d *Datapath) ensureEstTable(ifindex int) error {
	return d.ensureEstTables([]int{ifindex})[0]
}

// ensureEstTables gives each endpoint a table of established connections of the
// configured size, keeping the one it has (and its connections), and returns each
// one's error. A table of another size (changed between agents) is replaced by a
// copy: copied, swapped in, and copied again for the connections established
// meanwhile. Every map-in-map update from user space waits for an RCU grace
// period, which one endpoint after another added up across a pod burst: the new
// tables go in with one batch update, with one wait at its end.
func (d *Datapath) ensureEstTables(ifindexes []int) []error {
	errs := make([]error, len(ifindexes))
	var keys, fds []uint32
	var idx []int                // ifindexes index of each key
	var tables, olds []*ebpf.Map // each key's new table, and the one it replaces (or nil)
	defer func() {
		for i := range tables {
			tables[i].Close()
			if olds[i] != nil {
				olds[i].Close()
			}
		}
	}()
	all := func(*datapathCtKey) bool { return true }
	for j, ifindex := range ifindexes {
		m, cur, err := d.newEstTable(ifindex)
		if err != nil {
			errs[j] = err
			continue
		}
		if m == nil {
			continue // it has one of the configured size
		}
		tables, olds = append(tables, m), append(olds, cur)
		keys = append(keys, uint32(ifindex))
		fds = append(fds, uint32(m.FD()))
		idx = append(idx, j)
	}
	if len(keys) == 0 {
		return errs
	}
	n, err := d.objs.FnCtEst.BatchUpdate(keys, fds, nil)
	if err != nil {
		// Not supported, or one entry failed: the rest one by one, each with its error.
		for k := n; k < len(keys); k++ {
			if err := d.objs.FnCtEst.Put(keys[k], fds[k]); err != nil {
				errs[idx[k]] = fmt.Errorf("installing the connection table of endpoint %d: %w", keys[k], err)
			}
		}
	}
	for k, cur := range olds {
		if cur == nil || errs[idx[k]] != nil {
			continue
		}
		if _, _, err := copyCT(cur, tables[k], all); err != nil {
			errs[idx[k]] = fmt.Errorf("copying the connection table of endpoint %d: %w", keys[k], err)
		}
	}
	return errs
}

// newEstTable is a new table of established connections for the endpoint on
// ifindex holding what its current table (returned too, or nil) holds; nil, nil
// if it has one of the configured size.
func (d *Datapath) newEstTable(ifindex int) (m, cur *ebpf.Map, err error) {
	cur, err = d.estTable(ifindex)
	if err != nil {
		return nil, nil, err
	}
	if cur != nil && cur.MaxEntries() == d.ctEst.MaxEntries {
		cur.Close()
		return nil, nil, nil
	}
	fail := func(err error) (*ebpf.Map, *ebpf.Map, error) {
		if cur != nil {
			cur.Close()
		}
		return nil, nil, err
	}
	m, err = ebpf.NewMap(d.ctEst)
	if err != nil {
		return fail(fmt.Errorf("creating the connection table of endpoint %d: %w", ifindex, err))
	}
	if cur != nil {
		if _, _, err := copyCT(cur, m, func(*datapathCtKey) bool { return true }); err != nil {
			m.Close()
			return fail(fmt.Errorf("copying the connection table of endpoint %d: %w", ifindex, err))
		}
	}
	return m, cur, nil
}

// copyCT copies the entries of from that match into to, never over an entry to
// already has (it is newer). Entries that do not fit (to is full) are left out and
// counted as dropped.
func copyCT(from, to *ebpf.Map, match func(*datapathCtKey) bool) (copied, dropped int, err error) {
	err = walkCT(from, func(k *datapathCtKey, v *datapathCtVal) error {
		if !match(k) {
			return nil
		}
		added, full, err := putCT(to, k, v)
		if added {
			copied++
		}
		if full {
			dropped++
		}
		return err
	})
	return copied, dropped, err
}

// putCT adds k to m unless m already has it (that entry is newer): added says it
// went in, full that m had no room (E2BIG), which is the caller's to count, not
// an error.
func putCT(m *ebpf.Map, k *datapathCtKey, v *datapathCtVal) (added, full bool, err error) {
	err = m.Update(k, v, ebpf.UpdateNoExist)
	switch {
	case err == nil:
		return true, false, nil
	case errors.Is(err, ebpf.ErrKeyExist):
		return false, false, nil
	case errors.Is(err, unix.E2BIG):
		return false, true, nil
	}
	return false, false, err
}

// walkCT calls fn for every entry of a connection table (batched where the kernel
// can: a table is walked by the GC every few seconds).
func walkCT(m *ebpf.Map, fn func(*datapathCtKey, *datapathCtVal) error) error {
	const batch = 1024
	keys := make([]datapathCtKey, batch)
	vals := make([]datapathCtVal, batch)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := m.BatchLookup(&cursor, keys, vals, nil)
		for i := 0; i < n; i++ {
			if ferr := fn(&keys[i], &vals[i]); ferr != nil {
				return ferr
			}
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil // the last batch
		}
		if errors.Is(err, ebpf.ErrNotSupported) {
			break
		}
		if err != nil {
			return err
		}
	}
	var k datapathCtKey
	var v datapathCtVal
	it := m.Iterate()
	for it.Next(&k, &v) {
		if err := fn(&k, &v); err != nil {
			return err
		}
	}
	return it.Err()
}

// monotonicNow is CLOCK_MONOTONIC in nanoseconds, the clock of ct_val.expires_ns.
func monotonicNow() (uint64, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0, fmt.Errorf("reading CLOCK_MONOTONIC: %w", err)
	}
	return uint64(ts.Nano()), nil
}

// CTStats is what one ExpireConnections pass saw.
type CTStats struct {
	Tables   int // endpoints' tables walked
	Entries  int // entries left
	Expired  int // entries deleted
	Orphaned int // connections of detached endpoints deleted from the shared table
}

// ExpireConnections deletes the established connections whose lifetime has passed
// (idle: 6 h for TCP, 60 s for others) from the endpoints' tables, which evict
// nothing to make room, and the connections detached endpoints left in the shared
// table (see orphans); the agent runs it periodically. (A lookup of an expired entry
// deletes it too; the shared LRU table needs no other collection.)
func (d *Datapath) ExpireConnections(ctx context.Context) (CTStats, error) {
	var st CTStats
	now, err := monotonicNow()
	if err != nil {
		return st, err
	}
	if st.Orphaned, err = d.purgeOrphans(); err != nil {
		return st, err
	}
	var ifindexes []uint32
	var k uint32
	var id ebpf.MapID
	it := d.objs.FnCtEst.Iterate()
	for it.Next(&k, &id) {
		ifindexes = append(ifindexes, k)
	}
	if err := it.Err(); err != nil {
		return st, fmt.Errorf("listing connection tables: %w", err)
	}
	for _, ifindex := range ifindexes {
		if err := ctx.Err(); err != nil {
			return st, err
		}
		m, err := d.estTable(int(ifindex))
		if err != nil || m == nil {
			continue // detached meanwhile
		}
		var expired []datapathCtKey
		err = walkCT(m, func(k *datapathCtKey, v *datapathCtVal) error {
			if v.ExpiresNs < now {
				expired = append(expired, *k)
			} else {
				st.Entries++
			}
			return nil
		})
		for i := range expired {
			// Checked again just before: a packet may have renewed it since the walk.
			var v datapathCtVal
			if m.Lookup(&expired[i], &v) != nil || v.ExpiresNs >= now {
				st.Entries++
				continue
			}
			if m.Delete(&expired[i]) == nil {
				st.Expired++
			}
		}
		m.Close()
		if err != nil {
			return st, fmt.Errorf("walking the connection table of endpoint %d: %w", ifindex, err)
		}
		st.Tables++
	}
	return st, nil
}

// Flags of ct_val (CT_F_* in datapath.h).
const (
	ctSeenReply = 1
	ctClosing   = 2
)

// spreadCT puts the connections of src that match where this version keeps them:
// established ones (a reply seen, not closing) in their endpoint's own table when it
// has one with room, the others in the shared table; never over a newer entry.
// With move, src is the shared table itself: established ones are moved out of it.
func (d *Datapath) spreadCT(src *ebpf.Map, match func(*datapathCtKey) bool, move bool) (copied, dropped int, err error) {
	tables := map[uint32]*ebpf.Map{}
	defer func() {
		for _, t := range tables {
			if t != nil {
				t.Close()
			}
		}
	}()
	var moved []datapathCtKey
	err = walkCT(src, func(k *datapathCtKey, v *datapathCtVal) error {
		if !match(k) {
			return nil
		}
		if v.Flags&(ctSeenReply|ctClosing) == ctSeenReply {
			t, ok := tables[k.Ifindex]
			if !ok {
				t, _ = d.estTable(int(k.Ifindex))
				tables[k.Ifindex] = t
			}
			if t != nil {
				added, full, err := putCT(t, k, v)
				if added && move {
					moved = append(moved, *k)
				}
				if added {
					copied++
				}
				if !full {
					return err
				}
				// The endpoint's table is full: the shared one keeps it.
			}
		}
		if move {
			return nil // already there
		}
		added, full, err := putCT(d.objs.FnCt, k, v)
		if added {
			copied++
		}
		if full {
			dropped++
		}
		return err
	})
	for i := range moved {
		_ = src.Delete(&moved[i])
	}
	return copied, dropped, err
}

// orphans are the interface indexes of forgotten endpoints whose connections in the
// shared table are not deleted yet. Deleting them means walking the whole table
// (262,144 entries by default: 0.6-0.9 s key by key here), which DetachEndpoint must
// not do under d.mu, held meanwhile by the enforcer's lock too: every attach and
// policy write of the node would wait. They are harmless until their interface index
// is attached again (the kernel hands indexes out cyclically, so rarely), and
// AttachEndpoint purges them first then; otherwise ExpireConnections does, off the
// lock. Guarded by Datapath.mu.
type orphans map[uint32]struct{}

func (o *orphans) add(ifindex uint32) {
	if *o == nil {
		*o = orphans{}
	}
	(*o)[ifindex] = struct{}{}
}

// purgeOrphansOf deletes the connections forgotten endpoints left on the
// interfaces of eps, about to be attached again, before their programs could take
// them for their own: one walk of the shared table for all of them. It returns
// each one's error. Call with d.mu held.
func (d *Datapath) purgeOrphansOf(eps []endpointPolicy) []error {
	errs := make([]error, len(eps))
	gone := orphans{}
	for _, ep := range eps {
		if _, ok := d.orphans[uint32(ep.ifindex)]; ok {
			gone[uint32(ep.ifindex)] = struct{}{}
		}
	}
	if len(gone) == 0 {
		return errs
	}
	victims, err := orphanedConnections(d.objs.FnCt, gone)
	if err == nil {
		err = deleteKeys(d.objs.FnCt, victims)
	}
	for i, ep := range eps {
		if _, ok := gone[uint32(ep.ifindex)]; !ok {
			continue
		}
		if err != nil {
			errs[i] = fmt.Errorf("deleting the connections the previous endpoint on interface %d left: %w", ep.ifindex, err)
			continue
		}
		delete(d.orphans, uint32(ep.ifindex))
	}
	return errs
}

// purgeOrphans deletes the connections forgotten endpoints left in the shared table:
// the walk runs without d.mu, only the deletion holds it. It returns how many it
// deleted.
func (d *Datapath) purgeOrphans() (int, error) {
	d.mu.Lock()
	gone := maps.Clone(d.orphans)
	d.mu.Unlock()
	if len(gone) == 0 {
		return 0, nil
	}
	victims, err := orphanedConnections(d.objs.FnCt, gone)
	if err != nil {
		return 0, fmt.Errorf("walking the shared connection table for those of detached endpoints: %w", err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	// An index attached again since (AttachEndpoint purged it) may have connections
	// of its new endpoint under the same address by now: leave it alone.
	victims = slices.DeleteFunc(victims, func(k datapathCtKey) bool {
		_, orphaned := d.orphans[k.Ifindex]
		return !orphaned
	})
	if err := deleteKeys(d.objs.FnCt, victims); err != nil {
		return 0, fmt.Errorf("deleting the connections of detached endpoints: %w", err)
	}
	for ifindex := range gone {
		delete(d.orphans, ifindex)
	}
	return len(victims), nil
}

// orphanedConnections lists the connections of m whose interface index is in gone.
func orphanedConnections(m *ebpf.Map, gone orphans) ([]datapathCtKey, error) {
	var victims []datapathCtKey
	err := walkCT(m, func(k *datapathCtKey, _ *datapathCtVal) error {
		if _, ok := gone[k.Ifindex]; ok {
			victims = append(victims, *k)
		}
		return nil
	})
	return victims, err
}
