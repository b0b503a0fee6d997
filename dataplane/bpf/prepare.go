package bpf

import (
	"context"
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// PreparedPolicyEntries is how many policy entries the policy map of a prepared
// interface holds; a pod whose policy needs more gets a map of its own on attach
// (the ordinary way, one grace period more).
const PreparedPolicyEntries = 512

// PrepareInterfaces readies host interfaces of a warm pool before any pod has
// them: the programs attached (they drop everything of an interface with no
// endpoint entry, so an unclaimed interface passes nothing), an empty policy map
// and a table of established connections installed; it returns each one's error,
// and an interface that failed has nothing of it left. Attaching a tcx link and
// updating a map-in-map from user space each wait for an RCU grace period (links
// one after another under the kernel's rtnl lock): paid here, in the background,
// AttachEndpoints of a prepared interface only writes map entries.
func (d *Datapath) PrepareInterfaces(ctx context.Context, ifindexes []int) []error {
	errs := make([]error, len(ifindexes))
	ifs, idx, maps, perrs := d.prepareMaps(ifindexes, errs)
	// The links without d.mu: their waits, under the kernel's rtnl lock, must not
	// hold up the attaches of pods starting meanwhile. Nothing else knows these
	// interfaces yet.
	lerrs := make([]error, len(ifs))
	all := make([]int, len(ifs))
	for j := range all {
		all[j] = j
	}
	concurrently(all, lerrs, func(j int) error { return d.attachLinks(ctx, ifs[j]) })
	d.mu.Lock()
	defer d.mu.Unlock()
	for j, ifindex := range ifs {
		i := idx[j]
		if errs[i] = errors.Join(perrs[j], lerrs[j]); errs[i] == nil {
			if d.prepared == nil {
				d.prepared = map[int]*ebpf.Map{}
			}
			d.prepared[ifindex] = maps[j]
			continue
		}
		if maps[j] != nil {
			maps[j].Close()
		}
		errs[i] = errors.Join(errs[i], d.detachLocked(ifindex))
	}
	return errs
}

// prepareMaps checks the interfaces (errs gets the refused ones' errors) and
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
			errs[i] = fmt.Errorf("preparing interface %d: not an interface index", ifindex)
		case d.objs.FnEndpoints.Lookup(uint32(ifindex), &info) == nil:
			errs[i] = fmt.Errorf("preparing interface %d: an endpoint has it", ifindex)
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
// interface is prepared and whose policy fits its map, and returns the others. Its
// policy entries are written into the installed map, and its endpoint entry last:
// the programs drop everything of the interface until then, so its first packet
// is judged by its whole policy. No link is attached and no map-in-map updated.
// Call with d.mu held.
func (d *Datapath) attachPrepared(eps []Endpoint, write []endpointPolicy, idx []int, errs []error) ([]endpointPolicy, []int) {
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
