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
	keys, vals := policyEntries(pol)
	if len(keys) > int(d.inner.MaxEntries) {
		return fmt.Errorf("endpoint %d: %w: %d entries, the map holds %d", ifindex, ErrPolicyTooLarge, len(keys), d.inner.MaxEntries)
	}
	// Size the map to the policy: the kernel allocates and zeroes a bucket per
	// possible entry, and at POLICY_MAX that alone took 10 ms per endpoint here,
	// paid on every policy change. Inner hash maps may differ in max_entries.
	spec := d.inner.Copy()
	spec.MaxEntries = innerMapSize(len(keys), d.inner.MaxEntries)
	m, err := ebpf.NewMap(spec)
	if err != nil {
		return fmt.Errorf("creating policy map of endpoint %d: %w", ifindex, err)
	}
	defer m.Close()
	if len(keys) > 0 {
		if _, err := m.BatchUpdate(keys, vals, nil); err != nil {
			// Fall back to one by one where batch updates are not supported.
			for i := range keys {
				if err := m.Put(&keys[i], &vals[i]); err != nil {
					return fmt.Errorf("filling policy map of endpoint %d: %w", ifindex, err)
				}
			}
		}
	}
	if err := d.objs.FnPolicy.Put(uint32(ifindex), m); err != nil {
		return fmt.Errorf("installing policy map of endpoint %d: %w", ifindex, err)
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
