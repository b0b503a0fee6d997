package bpf

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"

	"github.com/flatnet/flatnet/dataplane/identity"
	"github.com/flatnet/flatnet/dataplane/ipv4"
)

// UpsertIPIdentity maps one address to an identity in the IP cache.
func (d *Datapath) UpsertIPIdentity(ctx context.Context, ip netip.Addr, id identity.ID) error {
	p, err := ipv4.HostPrefix(ip)
	if err != nil {
		return fmt.Errorf("writing ipcache %v -> %d: %w", ip, id, err)
	}
	return d.UpsertPrefix(ctx, p, id, false)
}

// DeleteIP removes one address from the IP cache (it becomes world).
func (d *Datapath) DeleteIP(ctx context.Context, ip netip.Addr) error {
	p, err := ipv4.HostPrefix(ip)
	if err != nil {
		return fmt.Errorf("deleting ipcache %v: %w", ip, err)
	}
	return d.DeletePrefix(ctx, p)
}

// UpsertPrefix maps a prefix to an identity in the IP cache. service instead marks
// a Service address (or range) whatever its identity (world when it has none): egress
// to it is judged after kube-proxy's DNAT, on the backend.
func (d *Datapath) UpsertPrefix(_ context.Context, p ipv4.Prefix, id identity.ID, service bool) error {
	d.ipMu.Lock()
	defer d.ipMu.Unlock()
	if service {
		d.services[p] = true
	} else {
		d.ipIDs[p] = id
	}
	return d.written(d.writeIPCache(p))
}

// UpsertService marks a Service address so that egress to it is judged on the
// backend kube-proxy picks.
func (d *Datapath) UpsertService(ctx context.Context, ip netip.Addr) error {
	p, err := ipv4.HostPrefix(ip)
	if err != nil {
		return fmt.Errorf("marking Service address %v: %w", ip, err)
	}
	return d.UpsertPrefix(ctx, p, identity.World, true)
}

// SetServices makes exactly these prefixes the Service addresses; an address that
// stops being one keeps the identity the compiler gave it (or leaves the cache).
func (d *Datapath) SetServices(_ context.Context, prefixes []ipv4.Prefix) error {
	want := make(map[ipv4.Prefix]bool, len(prefixes))
	for _, p := range prefixes {
		want[p] = true
	}
	d.ipMu.Lock()
	defer d.ipMu.Unlock()
	var errs []error
	for p := range d.services {
		if !want[p] {
			delete(d.services, p)
			if err := d.writeIPCache(p); err != nil {
				d.services[p] = true // the next call tries again
				errs = append(errs, err)
			}
		}
	}
	for p := range want {
		if !d.services[p] {
			d.services[p] = true
			if err := d.writeIPCache(p); err != nil {
				delete(d.services, p) // the next call tries again
				errs = append(errs, err)
			}
		}
	}
	return d.written(errors.Join(errs...))
}

// DeletePrefix removes a prefix's identity from the IP cache; a Service address
// stays in it, as world.
func (d *Datapath) DeletePrefix(_ context.Context, p ipv4.Prefix) error {
	d.ipMu.Lock()
	defer d.ipMu.Unlock()
	delete(d.ipIDs, p)
	return d.written(d.writeIPCache(p))
}

// writeIPCache writes p's entry from both layers. Call with ipMu held.
func (d *Datapath) writeIPCache(p ipv4.Prefix) error {
	k := ipcacheKey(p)
	id, known := d.ipIDs[p]
	service := d.services[p]
	if !known && !service {
		if err := d.objs.FnIpcache.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("deleting ipcache %s: %w", p, err)
		}
		return nil
	}
	v := datapathIpcacheVal{Identity: uint32(identity.World)}
	if known {
		v.Identity = uint32(id)
	}
	if service {
		v.Flags = ipcacheFlagService
	}
	if err := d.objs.FnIpcache.Put(&k, &v); err != nil {
		return fmt.Errorf("writing ipcache %s -> %d (service %t): %w", p, v.Identity, service, err)
	}
	return nil
}

// ipcacheFlagService is IPCACHE_F_SERVICE.
const ipcacheFlagService = 1

// UpsertCIDR maps a CIDR-rule prefix to its local identity.
func (d *Datapath) UpsertCIDR(_ context.Context, p ipv4.Prefix, id identity.ID) error {
	k := ipcacheKey(p)
	v := datapathIpcacheVal{Identity: uint32(id)}
	if err := d.objs.FnCidrcache.Put(&k, &v); err != nil {
		return d.written(fmt.Errorf("writing CIDR %s -> %d: %w", p, id, err))
	}
	return d.written(nil)
}

// DeleteCIDR removes a CIDR-rule prefix.
func (d *Datapath) DeleteCIDR(_ context.Context, p ipv4.Prefix) error {
	k := ipcacheKey(p)
	if err := d.objs.FnCidrcache.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return d.written(fmt.Errorf("deleting CIDR %s: %w", p, err))
	}
	return d.written(nil)
}

// ipcacheKey cannot fail: ipv4.Prefix is a masked IPv4 prefix by construction.
func ipcacheKey(p ipv4.Prefix) datapathIpcacheKey {
	return datapathIpcacheKey{Prefixlen: uint32(p.Bits()), Addr: addrBE(p.Addr())}
}

// PrefixEntry is one IP cache entry as stored.
type PrefixEntry struct {
	Identity identity.ID
	Service  bool
}

// IPCache returns the IP cache as stored (a restarted agent removes what it no longer
// wants).
func (d *Datapath) IPCache(_ context.Context) (map[ipv4.Prefix]PrefixEntry, error) {
	out := map[ipv4.Prefix]PrefixEntry{}
	err := readPrefixes(d.objs.FnIpcache, "the IP cache", func(p ipv4.Prefix, v datapathIpcacheVal) {
		out[p] = PrefixEntry{Identity: identity.ID(v.Identity), Service: v.Flags&ipcacheFlagService != 0}
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// CIDRs returns the CIDR-rule prefixes as stored.
func (d *Datapath) CIDRs(_ context.Context) (map[ipv4.Prefix]identity.ID, error) {
	out := map[ipv4.Prefix]identity.ID{}
	err := readPrefixes(d.objs.FnCidrcache, "the CIDR prefixes", func(p ipv4.Prefix, v datapathIpcacheVal) {
		out[p] = identity.ID(v.Identity)
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// readPrefixes calls fn for each entry of m, an LPM map of the IP cache's layout
// (fn_ipcache, fn_cidrcache); what names m in errors.
func readPrefixes(m *ebpf.Map, what string, fn func(ipv4.Prefix, datapathIpcacheVal)) error {
	var k datapathIpcacheKey
	var v datapathIpcacheVal
	it := m.Iterate()
	for it.Next(&k, &v) {
		p, err := ipv4.From4(addrFromBE(k.Addr).As4(), int(k.Prefixlen))
		if err != nil {
			return fmt.Errorf("reading %s: a key of %d bits: %w", what, k.Prefixlen, err)
		}
		fn(p, v)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("reading %s: %w", what, err)
	}
	return nil
}
