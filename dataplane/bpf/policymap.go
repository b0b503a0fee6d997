package bpf

import (
	"context"
	"errors"
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/flatnet/flatnet/dataplane/compile"
	"github.com/flatnet/flatnet/dataplane/identity"
	"github.com/flatnet/flatnet/dataplane/policy"
)

// SyncEndpointPolicy replaces an endpoint's policy atomically: a fresh map is filled
// and then swapped in, so no packet sees a mix of old and new entries.
func (d *Datapath) SyncEndpointPolicy(ctx context.Context, ifindex int, pol *compile.EndpointPolicy) error {
	if pol == nil {
		return fmt.Errorf("syncing policy of endpoint %d: nil policy", ifindex)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.syncPolicy(ifindex, pol)
}

func (d *Datapath) syncPolicy(ifindex int, pol *compile.EndpointPolicy) error {
	return d.syncPolicies([]endpointPolicy{{ifindex, pol}})[0]
}

// endpointPolicy is one endpoint's policy to write.
type endpointPolicy struct {
	ifindex int
	pol     *compile.EndpointPolicy
}

// syncPolicies replaces the policies of several endpoints, each atomically (a fresh
// map filled, then swapped in), and returns each one's error (nil: written). Every
// swap of a map-in-map value makes the kernel wait for an RCU grace period (running
// programs to finish) before the syscall returns: milliseconds each on a busy node,
// which one by one added up to the last endpoint of a change being enforced many
// grace periods after the first. All swaps go in one batch update instead, with one
// wait at its end. Call with d.mu held.
func (d *Datapath) syncPolicies(eps []endpointPolicy) []error {
	errs := make([]error, len(eps))
	var keys, fds []uint32
	var idx []int // eps index of each key
	var maps []*ebpf.Map
	defer func() {
		for _, m := range maps {
			m.Close()
		}
	}()
	for i, ep := range eps {
		m, err := d.newPolicyMap(ep.ifindex, ep.pol)
		if err != nil {
			errs[i] = err
			continue
		}
		maps = append(maps, m)
		keys = append(keys, uint32(ep.ifindex))
		fds = append(fds, uint32(m.FD()))
		idx = append(idx, i)
	}
	if len(keys) == 0 {
		return errs
	}
	for j, err := range d.installPolicyMaps(keys, fds) {
		if err != nil {
			errs[idx[j]] = fmt.Errorf("installing policy map of endpoint %d: %w", keys[j], err)
			continue
		}
		// A prepared index got a map of its own: its prepared one is out of force.
		d.unprepare(int(keys[j]))
	}
	if err := d.bumpRevision(); err != nil {
		// The maps are in place, but connections may keep the verdicts of the
		// old ones: fail them all, to be written (and bumped) again.
		for _, i := range idx {
			errs[i] = errors.Join(errs[i], err)
		}
	}
	return errs
}

// installPolicyMaps puts the policy maps fds in force for the interfaces keys, in
// one batch update (one grace period), and returns each one's error.
func (d *Datapath) installPolicyMaps(keys, fds []uint32) []error {
	errs := make([]error, len(keys))
	n, err := d.objs.FnPolicy.BatchUpdate(keys, fds, nil)
	if err != nil {
		// Not supported, or one entry failed: the rest one by one, each with its error.
		for j := n; j < len(keys); j++ {
			errs[j] = d.objs.FnPolicy.Put(keys[j], fds[j])
		}
	}
	return errs
}

// newPolicyMap is a new policy map holding pol, for the endpoint on ifindex.
func (d *Datapath) newPolicyMap(ifindex int, pol *compile.EndpointPolicy) (*ebpf.Map, error) {
	if pol == nil {
		return nil, fmt.Errorf("syncing policy of endpoint %d: nil policy", ifindex)
	}
	keys, vals := policyEntries(pol)
	if len(keys) > int(d.inner.MaxEntries) {
		return nil, fmt.Errorf("endpoint %d: %w: %d entries, the map holds %d", ifindex, ErrPolicyTooLarge, len(keys), d.inner.MaxEntries)
	}
	// Size the map to the policy: the kernel allocates and zeroes a bucket per
	// possible entry, and at POLICY_MAX that alone took 10 ms per endpoint here,
	// paid on every policy change. Inner hash maps may differ in max_entries.
	spec := d.inner.Copy()
	spec.MaxEntries = innerMapSize(len(keys), d.inner.MaxEntries)
	m, err := ebpf.NewMap(spec)
	if err != nil {
		return nil, fmt.Errorf("creating policy map of endpoint %d: %w", ifindex, err)
	}
	if err := fillPolicyMap(m, keys, vals); err != nil {
		m.Close()
		return nil, fmt.Errorf("filling policy map of endpoint %d: %w", ifindex, err)
	}
	return m, nil
}

// fillPolicyMap writes the entries into m (one batch where the kernel can, else
// one by one).
func fillPolicyMap(m *ebpf.Map, keys []datapathPolicyKey, vals []datapathPolicyVal) error {
	if len(keys) == 0 {
		return nil
	}
	if _, err := m.BatchUpdate(keys, vals, nil); err == nil {
		return nil
	}
	for i := range keys {
		if err := m.Put(&keys[i], &vals[i]); err != nil {
			return err
		}
	}
	return nil
}

// innerMapSize is the capacity of a policy map for n entries: the next power of two
// of 2n (hash maps keep a bucket per entry; a half-full table keeps chains short),
// at least 64, at most limit.
func innerMapSize(n int, limit uint32) uint32 {
	size := uint32(64)
	for size < uint32(2*n) && size < limit {
		size <<= 1
	}
	return min(size, limit)
}

// policyMetaIdentity keys the per-direction meta entry (POLICY_META_IDENTITY).
const policyMetaIdentity = 0xffffffff

// policyEntries lays a compiled policy out as hash entries plus, per direction, a
// meta entry with the port prefix lengths to probe, whether the direction is
// enforced (not enforced: what no entry matches is allowed) and whether world remotes
// use the world-only CIDR key space.
func policyEntries(pol *compile.EndpointPolicy) ([]datapathPolicyKey, []datapathPolicyVal) {
	keys := make([]datapathPolicyKey, 0, len(pol.Entries)+2)
	vals := make([]datapathPolicyVal, 0, len(pol.Entries)+2)
	var lens [2]uint32
	var worldCIDR [2]bool
	for k, v := range pol.Entries {
		pk := policyKey(k)
		if pk.Proto != 0 {
			lens[pk.Dir] |= 1 << pk.Plen
		}
		if compile.IsWorldCIDR(k.Identity) {
			worldCIDR[pk.Dir] = true
		}
		keys = append(keys, pk)
		pv := datapathPolicyVal{RuleId: uint32(v.RuleID)}
		if v.Deny {
			pv.Deny = 1
		}
		vals = append(vals, pv)
	}
	for dir, enforced := range pol.Enforce {
		meta := datapathPolicyVal{Lens: lens[dir]}
		if !enforced {
			meta.DefaultAllow = 1
		}
		if worldCIDR[dir] {
			meta.WorldCidr = 1
		}
		keys = append(keys, datapathPolicyKey{Dir: uint8(dir), Identity: policyMetaIdentity})
		vals = append(vals, meta)
	}
	return keys, vals
}

func policyKey(k compile.Key) datapathPolicyKey {
	pk := datapathPolicyKey{Dir: dirIngress, Identity: uint32(k.Identity)}
	if k.Direction == policy.Egress {
		pk.Dir = dirEgress
	}
	if k.Protocol != policy.ProtoAny {
		pk.Proto = uint8(k.Protocol)
		pk.Plen = k.PortPrefixLen
		pk.Dport = htons(k.Port)
	}
	return pk
}

// ErrPolicyTooLarge: an endpoint's compiled policy has more entries than its map holds.
var ErrPolicyTooLarge = errors.New("policy too large for the endpoint's map")

// PolicyLimit is how many entries an endpoint's policy map holds.
func (d *Datapath) PolicyLimit() int { return int(d.inner.MaxEntries) }

// readPolicy reads the policy map of the endpoint on ifindex back into the
// compiler's form: its entries, and per direction whether it is enforced (a
// direction without a meta entry drops what nothing matches, as in the programs).
func (d *Datapath) readPolicy(ifindex int) (*compile.EndpointPolicy, error) {
	var innerID uint32
	if err := d.objs.FnPolicy.Lookup(uint32(ifindex), &innerID); err != nil {
		return nil, fmt.Errorf("endpoint %d has no policy map in the datapath (its packets drop): %w", ifindex, err)
	}
	m, err := ebpf.NewMapFromID(ebpf.MapID(innerID))
	if err != nil {
		return nil, fmt.Errorf("opening the policy map of endpoint %d: %w", ifindex, err)
	}
	defer m.Close()
	pol := &compile.EndpointPolicy{Enforce: [2]bool{true, true}, Entries: map[compile.Key]compile.Verdict{}}
	var key datapathPolicyKey
	var val datapathPolicyVal
	it := m.Iterate()
	for it.Next(&key, &val) {
		dir := policy.Ingress
		if key.Dir == dirEgress {
			dir = policy.Egress
		}
		if key.Identity == policyMetaIdentity {
			pol.Enforce[dir] = val.DefaultAllow == 0
			continue
		}
		k := compile.Key{Direction: dir, Identity: identity.ID(key.Identity)}
		if key.Proto != 0 {
			k.Protocol, k.Port, k.PortPrefixLen = policy.Protocol(key.Proto), htons(key.Dport), key.Plen
		}
		pol.Entries[k] = compile.Verdict{Deny: val.Deny != 0, RuleID: compile.RuleID(val.RuleId)}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("reading the policy map of endpoint %d: %w", ifindex, err)
	}
	return pol, nil
}
