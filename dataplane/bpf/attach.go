package bpf

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/flatnet/flatnet/dataplane/compile"
	"github.com/flatnet/flatnet/dataplane/identity"
)

// linkPinPath is the path of a link pinned under the pin directory.
func (d *Datapath) linkPinPath(name string) string { return filepath.Join(d.pinDir, "links", name) }

// resumeLinks points every endpoint's hook at the programs just loaded, each in
// one atomic step. The endpoints are those of the endpoint map (and, in an
// upgrade, of the previous version's) and those with a pinned tcx link. Each keeps
// its hook: a tcx link, or a filter (to be moved later, MoveToTCX). An endpoint
// whose interface is gone, or is not the one attached (no datapath filter and no
// tcx link on it: its index was reused while no agent ran),
// is forgotten. In an upgrade an endpoint on the previous programs stays there
// until AttachEndpoint has written it into the new maps.
func (d *Datapath) resumeLinks(ctx context.Context) error {
	ifindexes, err := d.resumable()
	if err != nil {
		return err
	}
	for _, ifindex := range ifindexes {
		if err := ctx.Err(); err != nil {
			return err
		}
		var progs []ebpf.ProgramID
		gone := false
		for _, dir := range []int{dirIngress, dirEgress} {
			id, err := d.hookRunning(ifindex, dir)
			if errors.Is(err, os.ErrNotExist) {
				gone = true
				break
			}
			if err != nil {
				return err
			}
			if id != 0 {
				progs = append(progs, id)
			}
		}
		if gone || len(progs) == 0 {
			for _, dir := range []int{dirIngress, dirEgress} {
				_ = d.dropTCXLink(ifindex, dir)
			}
			if err := d.forget(ifindex); err != nil {
				return fmt.Errorf("forgetting the endpoint of vanished interface %d: %w", ifindex, err)
			}
			continue
		}
		if d.up != nil && slices.ContainsFunc(progs, d.up.runsPrevious) {
			// An upgrade: the previous programs keep this endpoint until
			// AttachEndpoint has written it into the new maps.
			d.up.pending[ifindex] = true
			continue
		}
		if err := d.attachLinks(ctx, ifindex); err != nil {
			return fmt.Errorf("moving endpoint %d to the new programs: %w", ifindex, err)
		}
	}
	return nil
}

// resumable lists the interface indexes resumeLinks looks at, in order.
func (d *Datapath) resumable() ([]int, error) {
	set := map[int]bool{}
	for _, m := range []*ebpf.Map{d.objs.FnEndpoints, d.retiredEndpoints()} {
		if m == nil {
			continue
		}
		var k uint32
		var v datapathEndpointInfo
		it := m.Iterate()
		for it.Next(&k, &v) {
			set[int(k)] = true
		}
		if err := it.Err(); err != nil {
			return nil, fmt.Errorf("listing endpoints to resume: %w", err)
		}
	}
	entries, err := os.ReadDir(filepath.Join(d.pinDir, "links"))
	if err != nil {
		return nil, fmt.Errorf("listing pinned links: %w", err)
	}
	for _, e := range entries {
		ifs, side, ok := strings.Cut(e.Name(), "-")
		ifindex, convErr := strconv.Atoi(ifs)
		if ok && convErr == nil && (side == "ingress" || side == "egress") {
			set[ifindex] = true
		}
	}
	return slices.Sorted(maps.Keys(set)), nil
}

// retiredEndpoints is the previous version's endpoint map in an upgrade, else nil.
func (d *Datapath) retiredEndpoints() *ebpf.Map {
	if d.up == nil {
		return nil
	}
	return d.up.retired[datapathMapFnEndpoints]
}

// AttachEndpoint makes an endpoint enforce pol: its identity and policy are written
// and the programs attached to its host veth in both directions, which drop all of
// its traffic until its policy is in place; all is done before it returns, so the
// first packet the pod sends is already under policy. Calling it again for an
// attached endpoint updates it in place.
func (d *Datapath) AttachEndpoint(ctx context.Context, ep Endpoint, pol *compile.EndpointPolicy) error {
	return d.AttachEndpoints(ctx, []Endpoint{ep}, []*compile.EndpointPolicy{pol})[0]
}

// AttachEndpoints attaches several endpoints, eps[i] enforcing pols[i], as
// AttachEndpoint does each, and returns each one's error. A burst of pods starting
// together would otherwise wait for the kernel's grace periods in turn (a policy
// map and a connection table installed, each waits for one): their policy maps go
// in with one batch update and their connection tables with another, while the
// filters go on. Indexes of the warm pool (PrepareIndexes) wait for none.
func (d *Datapath) AttachEndpoints(ctx context.Context, eps []Endpoint, pols []*compile.EndpointPolicy) []error {
	errs := make([]error, len(eps))
	var write []endpointPolicy
	var idx []int // eps index of each write
	for i, ep := range eps {
		switch {
		case ep.IfIndex <= 0 || !ep.IP.Is4():
			errs[i] = fmt.Errorf("attaching endpoint: need an interface index and an IPv4 address, got %d and %v", ep.IfIndex, ep.IP)
		case pols[i] == nil:
			errs[i] = fmt.Errorf("attaching endpoint %d: a policy is required (an empty one allows everything)", ep.IfIndex)
		default:
			write = append(write, endpointPolicy{ep.IfIndex, pols[i]})
			idx = append(idx, i)
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	// An index attached again loses what its previous endpoint left first, before
	// its programs could take those connections for their own.
	for j, err := range d.purgeOrphansOf(write) {
		if err != nil {
			errs[idx[j]] = err
		}
	}
	write, idx = keepUnfailed(write, idx, errs)
	// Interface indexes of the warm pool have their maps: entries and filters only.
	write, idx = d.attachPrepared(ctx, eps, write, idx, errs)
	// The policy maps' and the tables' batch updates each wait for a grace
	// period: the filters go on meanwhile. Until its policy is in place the
	// programs drop all of an endpoint's traffic, and nothing returns before all
	// is done.
	tables := make(chan []error, 1)
	go func() { tables <- d.writeTables(write) }()
	d.attachAllPrograms(ctx, eps, idx, errs)
	for j, err := range <-tables {
		errs[idx[j]] = errors.Join(errs[idx[j]], err)
	}
	for _, i := range idx {
		if errs[i] == nil {
			errs[i] = d.attachedLocked(eps[i])
		}
	}
	return errs
}

// writeTables installs the policy maps and the connection tables of eps, the two
// batch updates side by side so that their waits overlap, and returns each one's
// error. Call with d.mu held.
func (d *Datapath) writeTables(eps []endpointPolicy) []error {
	ifindexes := make([]int, len(eps))
	for j, ep := range eps {
		ifindexes[j] = ep.ifindex
	}
	estErrs := make(chan []error, 1)
	go func() { estErrs <- d.ensureEstTables(ifindexes) }()
	errs := d.syncPolicies(eps)
	for j, err := range <-estErrs {
		errs[j] = errors.Join(errs[j], err)
	}
	return errs
}

// keepUnfailed drops from write (and idx, its eps indexes) the endpoints that
// already have an error.
func keepUnfailed(write []endpointPolicy, idx []int, errs []error) ([]endpointPolicy, []int) {
	var w []endpointPolicy
	var k []int
	for j, e := range write {
		if errs[idx[j]] == nil {
			w = append(w, e)
			k = append(k, idx[j])
		}
	}
	return w, k
}

// attachAllPrograms runs attachPrograms for the endpoints eps[idx...] without an
// error yet, concurrently. errs gets each one's error.
func (d *Datapath) attachAllPrograms(ctx context.Context, eps []Endpoint, idx []int, errs []error) {
	var todo []int
	for _, i := range idx {
		if errs[i] == nil {
			todo = append(todo, i)
		}
	}
	concurrently(todo, errs, func(i int) error { return d.attachPrograms(ctx, eps[i]) })
}

// concurrently runs fn(i) for every i of todo at once, each in the caller's network
// namespace (interface indexes are its), and sets errs[i] to its error.
func concurrently(todo []int, errs []error, fn func(i int) error) {
	if len(todo) == 1 { // on this thread: it is in the caller's namespace
		errs[todo[0]] = fn(todo[0])
		return
	}
	here, err := ns.GetCurrentNS()
	if err != nil {
		err = fmt.Errorf("attaching endpoints: opening the current network namespace: %w", err)
		for _, i := range todo {
			errs[i] = err
		}
		return
	}
	defer here.Close()
	var wg sync.WaitGroup
	for _, i := range todo {
		wg.Go(func() { errs[i] = here.Do(func(ns.NetNS) error { return fn(i) }) })
	}
	wg.Wait()
}

// attachPrograms gives ep its endpoint entry and attaches the programs. It touches only ep's entries: endpoints are
// attached concurrently. Call with d.mu held.
func (d *Datapath) attachPrograms(ctx context.Context, ep Endpoint) error {
	info := datapathEndpointInfo{Addr: addrBE(ep.IP), Identity: uint32(ep.Identity)}
	if err := d.objs.FnEndpoints.Put(uint32(ep.IfIndex), &info); err != nil {
		return fmt.Errorf("writing endpoint %d: %w", ep.IfIndex, err)
	}
	return d.attachLinks(ctx, ep.IfIndex)
}

// attachLinks attaches the programs to the interface in both directions.
func (d *Datapath) attachLinks(ctx context.Context, ifindex int) error {
	for _, dir := range []int{dirIngress, dirEgress} {
		if err := ctx.Err(); err != nil {
			return err
		}
		filtered, err := d.attach(ifindex, dir)
		if err != nil {
			return err
		}
		if filtered {
			d.setFiltered(ifindex, true)
		}
	}
	return nil
}

// attachedLocked finishes attaching ep once its programs run. Call with d.mu held.
func (d *Datapath) attachedLocked(ep Endpoint) error {
	if err := d.movedEndpoint(ep.IfIndex, addrBE(ep.IP)); err != nil {
		return err
	}
	// Last: other pods' traffic is delivered here directly from now on, and only
	// an endpoint whose programs judge it may receive it that way (to_pod runs on
	// the veth the packets are handed to).
	if err := d.objs.FnLocalIps.Put(addrBE(ep.IP), localEndpoint(ep)); err != nil {
		return fmt.Errorf("writing local address of endpoint %d: %w", ep.IfIndex, err)
	}
	return nil
}

// localEndpoint is ep's entry for direct delivery. The MACs are left zero (delivery
// through the host veth) unless both are known: the pod's, and its host veth's,
// read from the interface in the current netns (the node's).
func localEndpoint(ep Endpoint) *datapathLocalEp {
	le := &datapathLocalEp{Ifindex: uint32(ep.IfIndex)}
	if len(ep.MAC) != 6 {
		return le
	}
	l, err := netlink.LinkByIndex(ep.IfIndex)
	if err != nil || len(l.Attrs().HardwareAddr) != 6 {
		return le
	}
	copy(le.PodMac[:], ep.MAC)
	copy(le.HostMac[:], l.Attrs().HardwareAddr)
	return le
}

// DetachEndpoint removes the programs from an endpoint's veth and forgets it; an
// unknown endpoint is not an error.
func (d *Datapath) DetachEndpoint(ctx context.Context, ifindex int) error {
	return d.DetachEndpoints(ctx, []int{ifindex})
}

// DetachEndpoints is DetachEndpoint for the endpoints of a burst of pod
// deletions at once: each map-in-map's entries go in one batch (one grace
// period for the burst, where one at a time took two per pod) and the counters
// are read once.
func (d *Datapath) DetachEndpoints(ctx context.Context, ifindexes []int) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.detachLocked(ifindexes)
}

// detachLocked is DetachEndpoints with d.mu held.
func (d *Datapath) detachLocked(ifindexes []int) error {
	var errs []error
	for _, ifindex := range ifindexes {
		for _, dir := range []int{dirIngress, dirEgress} {
			if err := d.detach(ifindex, dir); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := d.forget(ifindexes...); err != nil {
		errs = append(errs, err)
	}
	if d.up != nil {
		for _, ifindex := range ifindexes {
			delete(d.up.pending, ifindex)
		}
		if err := d.finishUpgrade(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// forget removes everything the maps hold for the interface indexes. Call with
// d.mu held (or before d is shared).
func (d *Datapath) forget(ifindexes ...int) error {
	var errs []error
	keys := make([]uint32, 0, len(ifindexes))
	gone := make(map[uint32]bool, len(ifindexes))
	for _, ifindex := range ifindexes {
		key := uint32(ifindex)
		keys = append(keys, key)
		gone[key] = true
		d.unprepare(ifindex)
		d.setFiltered(ifindex, false)
		// First: no more traffic delivered directly to an interface being forgotten.
		var info datapathEndpointInfo
		if err := d.objs.FnEndpoints.Lookup(key, &info); err == nil {
			var owner datapathLocalEp
			if err := d.objs.FnLocalIps.Lookup(info.Addr, &owner); err == nil && owner.Ifindex == key {
				if err := d.objs.FnLocalIps.Delete(info.Addr); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
					errs = append(errs, fmt.Errorf("deleting local address of endpoint %d: %w", ifindex, err))
				}
			}
		}
		if err := d.objs.FnEndpoints.Delete(key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("deleting endpoint %d: %w", ifindex, err))
		}
	}
	if err := deleteKeys(d.objs.FnPolicy, keys); err != nil {
		errs = append(errs, fmt.Errorf("deleting the policies of endpoints %v: %w", ifindexes, err))
	}
	// Counters and tracked connections of the interface indexes must not carry
	// over to the next pods that get them; the node's sums keep the counts.
	if err := d.retireCounters(gone); err != nil {
		errs = append(errs, fmt.Errorf("retiring the counters of endpoints %v: %w", ifindexes, err))
	}
	if err := deleteKeys(d.objs.FnCtEst, keys); err != nil {
		errs = append(errs, fmt.Errorf("deleting the connection tables of endpoints %v: %w", ifindexes, err))
	}
	// Their connections in the shared table are deleted later, off the lock (orphans).
	for _, key := range keys {
		d.orphans.add(key)
	}
	return errors.Join(errs...)
}

// retireCounters moves the counters of the gone interface indexes onto
// RetiredIfIndex's, so that the node's sums (Prometheus counters) never go back
// when a pod is deleted. Call with d.mu held and the endpoints' programs
// detached: nothing else writes RetiredIfIndex's keys or the gone ones then.
func (d *Datapath) retireCounters(gone map[uint32]bool) error {
	moved := map[datapathCounterKey]datapathCounterVal{} // summed over CPUs
	var victims []datapathCounterKey
	var k datapathCounterKey
	var per []datapathCounterVal
	it := d.objs.FnCounters.Iterate()
	for it.Next(&k, &per) {
		if !gone[k.Ifindex] {
			continue
		}
		victims = append(victims, k)
		rk := datapathCounterKey{Ifindex: RetiredIfIndex, Dir: k.Dir, Code: k.Code}
		s := moved[rk]
		for _, v := range per {
			s.Packets += v.Packets
			s.Bytes += v.Bytes
		}
		moved[rk] = s
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("reading counters: %w", err)
	}
	// Added before the endpoints' keys go: a failure in between counts twice
	// rather than losing counts (a counter may not go back).
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		return fmt.Errorf("counting the possible CPUs: %w", err)
	}
	for rk, s := range moved {
		if err := d.objs.FnCounters.Lookup(&rk, &per); err != nil {
			if !errors.Is(err, ebpf.ErrKeyNotExist) {
				return fmt.Errorf("reading the retired counter %+v: %w", rk, err)
			}
			per = make([]datapathCounterVal, ncpu)
		}
		// Per-CPU values: the sum goes on the first CPU's (readers add them up).
		per[0].Packets += s.Packets
		per[0].Bytes += s.Bytes
		if err := d.objs.FnCounters.Put(&rk, per); err != nil {
			return fmt.Errorf("writing the retired counter %+v: %w", rk, err)
		}
	}
	return deleteKeys(d.objs.FnCounters, victims)
}

// deleteKeys deletes keys from m in batches where the kernel can (a map-in-map
// waits for one grace period per batch, not per key); a key already gone
// (evicted, closed, never written) is skipped.
func deleteKeys[K any](m *ebpf.Map, keys []K) error {
	for len(keys) > 0 {
		n, err := m.BatchDelete(keys, nil)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, ebpf.ErrKeyNotExist):
			keys = keys[n+1:] // the batch stopped at key n, which is gone
		case errors.Is(err, ebpf.ErrNotSupported):
			for i := range keys {
				if err := m.Delete(&keys[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
					return err
				}
			}
			return nil
		default:
			return err
		}
	}
	return nil
}

// Endpoints returns the endpoints the datapath enforces (a restarted agent matches them
// to pods by IP), by host interface index.
func (d *Datapath) Endpoints(_ context.Context) (map[int]Endpoint, error) {
	out := map[int]Endpoint{}
	var k uint32
	var v datapathEndpointInfo
	it := d.objs.FnEndpoints.Iterate()
	for it.Next(&k, &v) {
		out[int(k)] = Endpoint{IfIndex: int(k), IP: addrFromBE(v.Addr), Identity: identity.ID(v.Identity)}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("reading endpoints: %w", err)
	}
	return out, nil
}
