package bpf

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/cilium/ebpf"
)

// PreparedPolicyEntries is how many policy entries the policy map of a prepared
// interface holds; a pod whose policy needs more gets a map of its own on attach
// (the ordinary way, one grace period more).
const PreparedPolicyEntries = 512

// PrepareIndexes readies interface indexes of a warm pool before any interface has
// them: an empty policy map and a table of established connections installed for
// each, so that the pod whose host veth is later created with that index (the CNI
// plugin asks the kernel for it) is attached by writing entries only. Installing a
// map into a map-in-map from user space waits for an RCU grace period: paid here,
// in the background, for the whole batch at once. No program runs for an index
// until AttachEndpoint; it returns each index's error, and an index that failed has
// nothing of it left.
func (d *Datapath) PrepareIndexes(ctx context.Context, ifindexes []int) []error {
	if err := ctx.Err(); err != nil {
		errs := make([]error, len(ifindexes))
		for i := range errs {
			errs[i] = err
		}
		return errs
	}
	errs := make([]error, len(ifindexes))
	ifs, idx, maps, perrs := d.prepareMaps(ifindexes, errs)
	d.mu.Lock()
	defer d.mu.Unlock()
	for j, ifindex := range ifs {
		i := idx[j]
		if errs[i] = perrs[j]; errs[i] == nil {
			if d.prepared == nil {
				d.prepared = map[int]*ebpf.Map{}
			}
			d.prepared[ifindex] = maps[j]
			continue
		}
		if maps[j] != nil {
			maps[j].Close()
		}
		errs[i] = errors.Join(errs[i], d.detachLocked([]int{ifindex}))
	}
	return errs
}

// prepareMaps checks the indexes (errs gets the refused ones' errors) and
// installs the empty policy maps and connection tables of the others, returned
// (ifs, with their ifindexes index) with the maps and each one's error.
func (d *Datapath) prepareMaps(ifindexes []int, errs []error) (ifs, idx []int, maps []*ebpf.Map, perrs []error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var eps []endpointPolicy
	for i, ifindex := range ifindexes {
		var info datapathEndpointInfo
		switch {
		case ifindex <= 0:
			errs[i] = fmt.Errorf("preparing interface index %d: not an interface index", ifindex)
		case d.objs.FnEndpoints.Lookup(uint32(ifindex), &info) == nil:
			errs[i] = fmt.Errorf("preparing interface index %d: an endpoint has it", ifindex)
		default:
			eps = append(eps, endpointPolicy{ifindex: ifindex})
			idx = append(idx, i)
		}
	}
	for j, err := range d.purgeOrphansOf(eps) {
		errs[idx[j]] = err
	}
	eps, idx = keepUnfailed(eps, idx, errs)
	ifs = make([]int, len(eps))
	for j, ep := range eps {
		ifs[j] = ep.ifindex
	}
	// The two batches' waits overlap.
	tables := make(chan []error, 1)
	go func() { tables <- d.ensureEstTables(ifs) }()
	maps, perrs = d.installEmptyPolicyMaps(ifs)
	for j, err := range <-tables {
		perrs[j] = errors.Join(perrs[j], err)
	}
	return ifs, idx, maps, perrs
}

// installEmptyPolicyMaps gives each interface an empty policy map of
// PreparedPolicyEntries, with one batch update (one grace period), and returns
// the maps (nil where it failed) and each one's error. Call with d.mu held.
func (d *Datapath) installEmptyPolicyMaps(ifindexes []int) ([]*ebpf.Map, []error) {
	maps := make([]*ebpf.Map, len(ifindexes))
	errs := make([]error, len(ifindexes))
	spec := d.inner.Copy()
	spec.MaxEntries = innerMapSize(PreparedPolicyEntries, d.inner.MaxEntries)
	var keys, fds []uint32
	var idx []int
	for j, ifindex := range ifindexes {
		m, err := ebpf.NewMap(spec)
		if err != nil {
			errs[j] = fmt.Errorf("creating the policy map of prepared interface %d: %w", ifindex, err)
			continue
		}
		maps[j] = m
		keys, fds, idx = append(keys, uint32(ifindex)), append(fds, uint32(m.FD())), append(idx, j)
	}
	if len(keys) == 0 {
		return maps, errs
	}
	for k, err := range d.installPolicyMaps(keys, fds) {
		if err != nil {
			errs[idx[k]] = fmt.Errorf("installing the policy map of prepared interface %d: %w", keys[k], err)
		}
	}
	return maps, errs
}

// Prepared reports whether the interface is prepared and not yet an endpoint's.
func (d *Datapath) Prepared(ifindex int) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	_, ok := d.prepared[ifindex]
	return ok
}

// unprepare forgets that ifindex was prepared. Call with d.mu held.
func (d *Datapath) unprepare(ifindex int) {
	if m, ok := d.prepared[ifindex]; ok {
		m.Close()
		delete(d.prepared, ifindex)
	}
}

// attachPrepared attaches the endpoints of write (idx: their eps indexes) whose
// interface index is prepared and whose policy fits its map, and returns the
// others. Its policy entries are written into the installed map, then the programs
// go on the interface (a clsact filter each way: no grace period), and its endpoint
// entry last: the programs drop everything of the interface until then, so its
// first packet is judged by its whole policy. No map-in-map is updated. Call with
// d.mu held.
func (d *Datapath) attachPrepared(ctx context.Context, eps []Endpoint, write []endpointPolicy, idx []int, errs []error) ([]endpointPolicy, []int) {
	var rest []endpointPolicy
	var restIdx []int
	for j, w := range write {
		m, ok := d.prepared[w.ifindex]
		if !ok {
			rest, restIdx = append(rest, w), append(restIdx, idx[j])
			continue
		}
		keys, vals := policyEntries(w.pol)
		if len(keys) > int(m.MaxEntries()) {
			// Too large for the prepared map: a map of its own, the ordinary way.
			d.unprepare(w.ifindex)
			rest, restIdx = append(rest, w), append(restIdx, idx[j])
			continue
		}
		i := idx[j]
		if err := fillPolicyMap(m, keys, vals); err != nil {
			errs[i] = fmt.Errorf("writing the policy of endpoint %d: %w", w.ifindex, err)
			continue
		}
		if err := d.attachLinks(ctx, w.ifindex); err != nil {
			errs[i] = err
			continue
		}
		d.unprepare(w.ifindex)
		info := datapathEndpointInfo{Addr: addrBE(eps[i].IP), Identity: uint32(eps[i].Identity)}
		if err := d.objs.FnEndpoints.Put(uint32(w.ifindex), &info); err != nil {
			errs[i] = fmt.Errorf("writing endpoint %d: %w", w.ifindex, err)
			continue
		}
		errs[i] = d.attachedLocked(eps[i])
	}
	return rest, restIdx
}

// UnprepareIndexes forgets the indexes of ifindexes that no endpoint has (their
// policy map, connection table and entries), whether this datapath prepared them
// or an earlier agent did; an endpoint's index is left alone.
func (d *Datapath) UnprepareIndexes(ctx context.Context, ifindexes []int) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	for _, ifindex := range ifindexes {
		if err := ctx.Err(); err != nil {
			return err
		}
		var info datapathEndpointInfo
		if d.objs.FnEndpoints.Lookup(uint32(ifindex), &info) == nil {
			continue
		}
		if err := d.forget(ifindex); err != nil {
			errs = append(errs, fmt.Errorf("forgetting prepared index %d: %w", ifindex, err))
		}
	}
	return errors.Join(errs...)
}

// PreparedIndexes lists the indexes in [lo, hi) with a policy map or a connection
// table but no endpoint: prepared and not attached, by this agent or an earlier one.
func (d *Datapath) PreparedIndexes(lo, hi int) ([]int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	set := map[int]bool{}
	for _, m := range []*ebpf.Map{d.objs.FnPolicy, d.objs.FnCtEst} {
		var k uint32
		var v ebpf.MapID
		it := m.Iterate()
		for it.Next(&k, &v) {
			if int(k) >= lo && int(k) < hi {
				set[int(k)] = true
			}
		}
		if err := it.Err(); err != nil {
			return nil, fmt.Errorf("listing prepared indexes: %w", err)
		}
	}
	var out []int
	for _, ifindex := range slices.Sorted(maps.Keys(set)) {
		var info datapathEndpointInfo
		if d.objs.FnEndpoints.Lookup(uint32(ifindex), &info) != nil {
			out = append(out, ifindex)
		}
	}
	return out, nil
}
