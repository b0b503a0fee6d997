package bpf

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/cilium/ebpf"

	"github.com/flatnet/flatnet/dataplane/compile"
	"github.com/flatnet/flatnet/dataplane/ipv4"
)

// ApplyError lists what Apply could not write; everything else was written. A
// failure is contained to what caused it: one endpoint's policy, one prefix.
type ApplyError struct {
	// Endpoints maps "namespace/name" to why its policy is not in its map. Each
	// such endpoint fails closed: its map was replaced by a deny-all one (both
	// directions enforced, no entries) or, if even that failed, Isolated is false
	// for it and its previous map stays.
	Endpoints map[string]*EndpointWriteError
	// CIDRs are CIDR-rule prefixes not written (or not deleted).
	CIDRs map[ipv4.Prefix]error
	// Other are identity and IP cache writes that failed.
	Other []error
}

// EndpointWriteError is why one endpoint's policy could not be written.
type EndpointWriteError struct {
	Err      error
	Isolated bool // the deny-all map is in place
}

func (e *EndpointWriteError) Error() string { return e.Err.Error() }
func (e *EndpointWriteError) Unwrap() error { return e.Err }

func (e *ApplyError) Error() string {
	var parts []string
	for _, k := range sortedKeys(e.Endpoints) {
		parts = append(parts, fmt.Sprintf("pod %s: %v", k, e.Endpoints[k].Err))
	}
	for p, err := range e.CIDRs {
		parts = append(parts, fmt.Sprintf("CIDR %s: %v", p, err))
	}
	for _, err := range e.Other {
		parts = append(parts, err.Error())
	}
	return "writing the datapath (everything else was written): " + strings.Join(parts, "; ")
}

func (e *ApplyError) empty() bool {
	return len(e.Endpoints) == 0 && len(e.CIDRs) == 0 && len(e.Other) == 0
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// DenyAll is the policy an endpoint falls back to when its own cannot be written:
// both directions enforced, nothing allowed (the pod still reaches its own node).
func DenyAll() *compile.EndpointPolicy {
	return &compile.EndpointPolicy{Enforce: [2]bool{true, true}, Entries: map[compile.Key]compile.Verdict{}}
}

// Apply writes a compiler update in the order compile.Update prescribes. ifindexOf
// maps a local pod to its endpoint's interface; pods without one (not attached yet)
// are skipped: AttachEndpoint will carry their policy. A failed write never stops
// the others: Apply writes everything it can and returns an *ApplyError naming what
// failed (see there for the state a failed endpoint is left in).
func (d *Datapath) Apply(ctx context.Context, up compile.Update, ifindexOf func(namespace, name string) (int, bool)) error {
	fail := &ApplyError{Endpoints: map[string]*EndpointWriteError{}, CIDRs: map[ipv4.Prefix]error{}}
	for _, u := range up.Identities {
		var err error
		if u.Delete {
			err = d.DeleteIdentity(ctx, u.Sum)
		} else {
			err = d.SaveIdentity(ctx, u.Sum, u.ID)
		}
		if err != nil {
			fail.Other = append(fail.Other, err)
		}
	}
	for _, u := range up.IPCache {
		if u.Delete {
			if err := d.DeletePrefix(ctx, u.Prefix); err != nil {
				fail.Other = append(fail.Other, err)
			}
		}
	}
	for _, u := range up.CIDRs {
		if u.Delete {
			if err := d.DeleteCIDR(ctx, u.Prefix); err != nil {
				fail.CIDRs[u.Prefix] = err
			}
		}
	}
	if err := d.applyEndpoints(ctx, up.Endpoints, ifindexOf, fail); err != nil {
		return err
	}
	for _, u := range up.IPCache {
		if !u.Delete {
			if err := d.UpsertPrefix(ctx, u.Prefix, u.Identity, false); err != nil {
				fail.Other = append(fail.Other, err)
			}
		}
	}
	for _, u := range up.CIDRs {
		if !u.Delete {
			if err := d.UpsertCIDR(ctx, u.Prefix, u.Identity); err != nil {
				fail.CIDRs[u.Prefix] = err
			}
		}
	}
	if fail.empty() {
		return nil
	}
	return fail
}

// applyEndpoints writes the endpoints' policies, all swapped in at once (see
// syncPolicies), and then their identities; failures go into fail.
func (d *Datapath) applyEndpoints(ctx context.Context, eps []compile.EndpointUpdate, ifindexOf func(namespace, name string) (int, bool), fail *ApplyError) error {
	var write []endpointPolicy
	var written []compile.EndpointUpdate
	for _, e := range eps {
		if e.Policy == nil {
			continue // the endpoint goes away with DetachEndpoint
		}
		if ifindex, ok := ifindexOf(e.Namespace, e.Name); ok {
			write = append(write, endpointPolicy{ifindex, e.Policy})
			written = append(written, e)
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	d.mu.Lock()
	errs := d.syncPolicies(write)
	d.mu.Unlock()
	for i, e := range written {
		key := e.Namespace + "/" + e.Name
		ifindex := write[i].ifindex
		if errs[i] != nil {
			fail.Endpoints[key] = &EndpointWriteError{Err: errs[i], Isolated: d.SyncEndpointPolicy(ctx, ifindex, DenyAll()) == nil}
		}
		if e.IP.Is4() {
			// The identity flows report as the endpoint's (its labels may have changed).
			info := datapathEndpointInfo{Addr: addrBE(e.IP), Identity: uint32(e.Identity)}
			if err := d.objs.FnEndpoints.Update(uint32(ifindex), &info, ebpf.UpdateExist); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				fail.Other = append(fail.Other, fmt.Errorf("pod %s: updating endpoint %d: %w", key, ifindex, err))
			}
		}
	}
	return nil
}

// EndpointPolicy reads back the policy the endpoint on ifindex enforces, from its map.
func (d *Datapath) EndpointPolicy(_ context.Context, ifindex int) (*compile.EndpointPolicy, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.readPolicy(ifindex)
}
