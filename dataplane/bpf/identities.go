package bpf

import (
	"context"
	"errors"
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/flatnet/flatnet/dataplane/identity"
)

// SaveIdentity stores an identity allocation (see identity.Allocator.Remember).
func (d *Datapath) SaveIdentity(_ context.Context, s identity.Sum, id identity.ID) error {
	if err := d.objs.FnIdentities.Put(datapathIdentitySum{Sum: s}, uint32(id)); err != nil {
		return fmt.Errorf("saving identity %d: %w", id, err)
	}
	return nil
}

// DeleteIdentity forgets a stored identity allocation.
func (d *Datapath) DeleteIdentity(_ context.Context, s identity.Sum) error {
	if err := d.objs.FnIdentities.Delete(datapathIdentitySum{Sum: s}); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("deleting a stored identity: %w", err)
	}
	return nil
}

// Identities returns the stored identity allocations, for a restarted agent to hand
// to identity.Allocator.Remember before it compiles anything.
func (d *Datapath) Identities(_ context.Context) (map[identity.Sum]identity.ID, error) {
	out := map[identity.Sum]identity.ID{}
	var k datapathIdentitySum
	var v uint32
	it := d.objs.FnIdentities.Iterate()
	for it.Next(&k, &v) {
		out[k.Sum] = identity.ID(v)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("reading stored identities: %w", err)
	}
	return out, nil
}
