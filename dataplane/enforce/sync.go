package enforce

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/flatnet/flatnet/dataplane/bpf"
	"github.com/flatnet/flatnet/dataplane/compile"
	"github.com/flatnet/flatnet/dataplane/ipv4"
	"github.com/flatnet/flatnet/dataplane/policy"
)

// Synced is called once pods, namespaces, nodes and every policy kind have been fed:
// the Service hook is attached, the whole state is written, and stored identities no
// label set claimed are forgotten. Attach calls wait for it.
func (e *Enforcer) Synced(ctx context.Context) error {
	e.wmu.Lock()
	defer e.wmu.Unlock()
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.synced {
		return nil
	}
	if err := e.d.AttachServiceHook(ctx); err != nil {
		return err
	}
	if err := e.d.SetServices(ctx, e.servicePrefixesLocked()); err != nil {
		return err
	}
	// The first write waits for every informer's list, not for the writer: no
	// change's enforcement delay.
	e.takeArrivalsLocked()
	if err := e.flushApply(ctx); err != nil {
		// Contained to what failed (and retried); failing the sync would keep
		// every new pod of the node from starting and restart the agent in a loop.
		e.log.Error("datapath write failed during the first sync; retrying", "error", err)
	}
	if err := e.pruneLocked(ctx); err != nil {
		return err
	}
	for _, s := range e.alloc.ForgetUnclaimed() {
		if err := e.d.DeleteIdentity(ctx, s); err != nil {
			return err
		}
	}
	e.synced = true
	close(e.syncedCh)
	return nil
}

// pruneLocked removes what a previous agent left in the maps and this one does not want
// (pods, CIDR rules and Services deleted while no agent ran, Service ranges no longer
// configured).
func (e *Enforcer) pruneLocked(ctx context.Context) error {
	wantIP, wantCIDR := e.c.Emitted()
	services := map[ipv4.Prefix]bool{}
	for _, p := range e.servicePrefixesLocked() {
		services[p] = true
	}
	have, err := e.d.IPCache(ctx)
	if err != nil {
		return err
	}
	for p, v := range have {
		if _, ok := wantIP[p]; ok || (v.Service && services[p]) {
			continue
		}
		if err := e.d.DeletePrefix(ctx, p); err != nil {
			return err
		}
	}
	haveCIDR, err := e.d.CIDRs(ctx)
	if err != nil {
		return err
	}
	for p := range haveCIDR {
		if _, ok := wantCIDR[p]; !ok {
			if err := e.d.DeleteCIDR(ctx, p); err != nil {
				return err
			}
		}
	}
	return nil
}

func (e *Enforcer) waitSynced(ctx context.Context) error {
	select {
	case <-e.syncedCh:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting for the policy state to sync: %w", ctx.Err())
	}
}

// flushApply writes every pending change, with e.wmu and e.mu held throughout (see
// writePending for the writer's way, which lets the informers go on meanwhile).
func (e *Enforcer) flushApply(ctx context.Context) error {
	for {
		arrivals := e.takeArrivalsLocked()
		up := e.compileLocked()
		err := e.apply(ctx, up, e.attached)
		if again, err := e.settleLocked(ctx, up, err, arrivals, time.Now()); !again {
			return err
		}
	}
}

// compileLocked takes the compiler's changes since the last write: after a failed
// write that left the datapath behind, all of it. Call with e.wmu and e.mu held.
func (e *Enforcer) compileLocked() compile.Update {
	if e.resync {
		e.c.Invalidate()
	}
	e.metrics.Batch.Observe(float64(e.pending))
	e.pending = 0
	t0 := time.Now()
	up := e.c.Flush()
	e.metrics.Compile.Observe(time.Since(t0).Seconds())
	return up
}

// appliedLocked settles what bpf.Apply made of up (err). A failure is contained to
// what caused it (Apply writes everything else): an endpoint whose policy cannot be
// written is left isolated (deny-all) and retried, and the policy that made it fail
// is reported rejected for it; an endpoint whose policy names a CIDR prefix that
// could not be written is isolated the same way. Only identity and IP cache
// failures, which every endpoint depends on, are returned; the next attempt
// rewrites everything. Call with e.wmu and e.mu held.
func (e *Enforcer) appliedLocked(ctx context.Context, up compile.Update, err error) error {
	var ae *bpf.ApplyError
	if err != nil && !errors.As(err, &ae) {
		e.resync = true
		return err
	}
	for _, u := range up.Endpoints {
		key := u.Namespace + "/" + u.Name
		if _, attached := e.attached[key]; !attached || u.Policy == nil {
			delete(e.epFail, key)
			continue
		}
		if ae == nil || ae.Endpoints[key] == nil {
			delete(e.epFail, key)
		}
	}
	e.resync = false
	if ae == nil {
		e.reportAll()
		return nil
	}
	for key, ferr := range ae.Endpoints {
		e.epFail[key] = e.blame(key, ferr.Err, ferr.Isolated) // before Retry forgets the policy
		if errors.Is(ferr.Err, bpf.ErrPolicyTooLarge) && ferr.Isolated {
			// Deterministic: it fits only once its policy changes, which the
			// compiler emits by itself. Rewriting it every retry would only cost.
			continue
		}
		ns, name, _ := strings.Cut(key, "/")
		e.c.Retry(ns, name)
	}
	for p, perr := range ae.CIDRs {
		e.c.RetryPrefix(p)
		refs, pods := e.c.PrefixUsers(p)
		for _, key := range pods {
			ifindex, ok := e.attached[key]
			if !ok {
				continue
			}
			isolated := e.d.SyncEndpointPolicy(ctx, ifindex.HostIfIndex, bpf.DenyAll()) == nil
			ns, name, _ := strings.Cut(key, "/")
			e.c.Retry(ns, name)
			f := endpointFailure{isolated: isolated, reason: ReasonWriteFailed,
				err: fmt.Errorf("CIDR prefix %s of its policy could not be written: %w", p, perr)}
			if len(refs) > 0 {
				f.ref = refs[0]
			}
			e.epFail[key] = f
		}
	}
	e.reportAll()
	if len(ae.Other) > 0 {
		e.resync = true
		return errors.Join(ae.Other...)
	}
	return nil
}

// endpointFailure is why an attached endpoint does not run its compiled policy.
type endpointFailure struct {
	ref      policy.Ref // the policy blamed (the largest contributor); zero if none
	reason   string
	err      error
	isolated bool // deny-all is in place (else its previous map stays)
}

// blame names the policy that makes an endpoint's write fail: for a policy too large
// for the map, the object contributing most of its entries.
func (e *Enforcer) blame(key string, err error, isolated bool) endpointFailure {
	f := endpointFailure{reason: ReasonWriteFailed, err: err, isolated: isolated}
	ns, name, _ := strings.Cut(key, "/")
	pol := e.c.EndpointPolicy(ns, name)
	if pol == nil {
		return f
	}
	best := 0
	byRef := e.c.EntriesByPolicy(pol)
	for ref, n := range byRef {
		if n > best || (n == best && ref.String() < f.ref.String()) {
			f.ref, best = ref, n
		}
	}
	if errors.Is(err, bpf.ErrPolicyTooLarge) {
		f.reason = ReasonTooLarge
		f.err = fmt.Errorf("its policy has %d entries, an endpoint's map holds %d; %s contributes %d of them: "+
			"narrow it (fewer CIDRs x ports, port ranges instead of single ports)", len(pol.Entries), e.d.PolicyLimit(), f.ref, best)
	}
	return f
}

// retry writes again what failed last time: everything after an identity or IP
// cache failure, else the endpoints and prefixes that failed.
func (e *Enforcer) retry(ctx context.Context) error {
	return e.writePending(ctx, true)
}
