package enforce

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/flatnet/flatnet/dataplane/bpf"
	"github.com/flatnet/flatnet/dataplane/compile"
	"github.com/flatnet/flatnet/dataplane/endpointapi"
)

// Attach implements agent.EndpointHook: compile the pod's policy, write it, then
// attach the programs to its host veth. It waits for the first sync, so a pod never
// starts with a policy computed from a partial view.
//
// Attaches that arrive together are done together (group commit): each queues its
// endpoint, and whichever holds the write lock first attaches every queued one, with
// one write of the policy state and one batch of policy maps (one grace period
// each) for all of them; the others find theirs done.
func (e *Enforcer) Attach(ctx context.Context, ep endpointapi.Endpoint) error {
	defer e.attachBegins()()
	if err := e.waitSynced(ctx); err != nil {
		return err
	}
	req := &attachRequest{ctx: ctx, ep: ep}
	e.mu.Lock()
	e.attachQ = append(e.attachQ, req)
	e.mu.Unlock()
	e.wmu.Lock()
	defer e.wmu.Unlock()
	e.mu.Lock()
	defer e.mu.Unlock()
	for !req.done {
		e.attachQueuedLocked()
	}
	return req.err
}

// attachRequest is an Attach waiting for its endpoint to be attached.
type attachRequest struct {
	ctx  context.Context // the caller's: its API lookups
	ep   endpointapi.Endpoint
	err  error
	done bool
}

// attachQueuedLocked attaches the queued endpoints. One that shares its pod or
// address with an earlier one stays queued for the next round, where the earlier
// one is attached already (and is replaced, see prepareAttachLocked). Call with
// e.wmu and e.mu held.
func (e *Enforcer) attachQueuedLocked() {
	batch := e.attachQ
	e.attachQ = nil
	// The writes are shared: one caller giving up must not fail the others'.
	ctx := context.WithoutCancel(batch[0].ctx)
	var ready []*attachRequest
	pods, addrs := map[string]bool{}, map[netip.Addr]bool{}
	for _, r := range batch {
		key := r.ep.PodNamespace + "/" + r.ep.PodName
		if pods[key] || addrs[r.ep.IP] {
			e.attachQ = append(e.attachQ, r)
			continue
		}
		pods[key], addrs[r.ep.IP] = true, true
		if err := e.prepareAttachLocked(r.ctx, r.ep); err != nil {
			r.err, r.done = err, true
			continue
		}
		ready = append(ready, r)
	}
	if len(ready) == 0 {
		return
	}
	if err := e.flushApply(ctx); err != nil {
		// Not these pods': other writes failed and are retried. Their own
		// policies are written below.
		e.log.Error("datapath write failed; retrying", "attaching", len(ready), "error", err)
	}
	var attach []*attachRequest
	var beps []bpf.Endpoint
	var pols []*compile.EndpointPolicy
	for _, r := range ready {
		id, _ := e.c.IdentityOf(r.ep.PodNamespace, r.ep.PodName)
		pol := e.c.EndpointPolicy(r.ep.PodNamespace, r.ep.PodName)
		if pol == nil {
			r.err, r.done = fmt.Errorf("attaching %s/%s: no policy compiled", r.ep.PodNamespace, r.ep.PodName), true
			continue
		}
		// A missing or malformed MAC only costs direct delivery's fast way in.
		mac, _ := net.ParseMAC(r.ep.MAC)
		attach = append(attach, r)
		beps = append(beps, bpf.Endpoint{IfIndex: r.ep.HostIfIndex, IP: r.ep.IP, Identity: id, MAC: mac})
		pols = append(pols, pol)
	}
	errs := e.d.AttachEndpoints(ctx, beps, pols)
	for i, r := range attach {
		r.err, r.done = e.attachedLocked(ctx, r.ep, beps[i], errs[i]), true
	}
	e.publishIfindexesLocked()
}

// prepareAttachLocked puts ep's pod in the compiler as a local endpoint: the pod
// as the API has it (asked for if the informer has not delivered it yet), on
// ep's address, which stale holders give up.
func (e *Enforcer) prepareAttachLocked(ctx context.Context, ep endpointapi.Endpoint) error {
	key := ep.PodNamespace + "/" + ep.PodName
	pod := e.pods[key]
	if pod == nil && e.getPod != nil {
		// The informer has not delivered it yet: ask the API server.
		p, err := e.getPod(ctx, ep.PodNamespace, ep.PodName)
		if err != nil {
			return fmt.Errorf("attaching %s: getting the pod: %w", key, err)
		}
		e.pods[key] = p
		pod = p
	}
	if pod == nil {
		return fmt.Errorf("attaching %s: pod not known yet; retry", key)
	}
	// The allocator hands out an address only once its previous holder's
	// allocation is released, so another endpoint still attached with it is
	// stale (its DEL never reached the agent): it goes in the same write,
	// before ep's identity takes the address.
	for k, other := range e.attached {
		if k != key && other.IP == ep.IP {
			if err := e.evictLocked(ctx, k, other); err != nil {
				return fmt.Errorf("attaching %s: %w", key, err)
			}
		}
	}
	// A pod not attached here whose API status still names the address (its
	// sandbox is gone, the status lags) gives it up now, not on its next update.
	addr := ep.IP.String()
	for k, p := range e.pods {
		if _, attached := e.attached[k]; k == key || attached || (p.Status.PodIP != addr && !slices.ContainsFunc(p.Status.PodIPs, func(pi corev1.PodIP) bool { return pi.IP == addr })) {
			continue
		}
		other := compile.PodFromCore(p, false)
		if other.IP == ep.IP {
			other.IP = netip.Addr{}
			if err := e.c.UpsertPod(other); err != nil {
				return fmt.Errorf("attaching %s: %w", key, err)
			}
		}
	}
	cp := compile.PodFromCore(pod, true)
	cp.IP = ep.IP // the API learns the IP only after ADD returns
	cp.HostNetwork = false
	if err := e.c.UpsertPod(cp); err != nil {
		return fmt.Errorf("attaching %s: %w", key, err)
	}
	return nil
}

// attachedLocked records ep attached (bep, by bpf.AttachEndpoints with err). A
// pod whose policy does not fit its map starts isolated (fail closed) and the
// policy is reported; it gets its policy once the policies selecting it fit.
func (e *Enforcer) attachedLocked(ctx context.Context, ep endpointapi.Endpoint, bep bpf.Endpoint, err error) error {
	key := ep.PodNamespace + "/" + ep.PodName
	if errors.Is(err, bpf.ErrPolicyTooLarge) {
		e.attached[key] = ep
		f := e.blame(key, err, true)
		if err := e.d.AttachEndpoint(ctx, bep, bpf.DenyAll()); err != nil {
			delete(e.attached, key)
			return fmt.Errorf("attaching %s isolated (its policy does not fit: %v): %w", key, f.err, err)
		}
		e.epFail[key] = f // its policy is written once it changes and fits
		e.reportAll()
	} else if err != nil {
		return fmt.Errorf("attaching %s: %w", key, err)
	}
	e.attached[key] = ep
	e.byCID[ep.ContainerID] = key
	return nil
}

// evictLocked forgets the stale endpoint of pod key, whose address another
// endpoint is taking: its programs and map entries go, and its pod (if the API
// still has it) stays known without that address.
func (e *Enforcer) evictLocked(ctx context.Context, key string, stale endpointapi.Endpoint) error {
	e.log.Warn("replacing a stale endpoint whose address was handed to another pod (its CNI DEL never arrived)",
		"pod", key, "containerID", stale.ContainerID, "ip", stale.IP)
	delete(e.attached, key)
	delete(e.byCID, stale.ContainerID)
	e.publishIfindexesLocked()
	if stale.HostIfIndex > 0 && !e.ifindexAttachedLocked(stale.HostIfIndex) {
		if err := e.d.DetachEndpoint(ctx, stale.HostIfIndex); err != nil {
			return fmt.Errorf("detaching the stale endpoint of %s: %w", key, err)
		}
	}
	if p := e.pods[key]; p != nil {
		if err := e.c.UpsertPod(e.remotePod(p)); err != nil {
			return err
		}
		return nil
	}
	ns, name, _ := strings.Cut(key, "/")
	e.c.DeletePod(ns, name)
	return nil
}

// remotePod is p as a pod not attached here. An address that an endpoint of
// another pod holds on this node is that endpoint's (the allocator gave it
// out after p's sandbox released it); p's API status lags behind, so it does
// not keep the address.
func (e *Enforcer) remotePod(p *corev1.Pod) compile.Pod {
	cp := compile.PodFromCore(p, false)
	if cp.IP.IsValid() {
		for k, ep := range e.attached {
			if ep.IP == cp.IP && k != p.Namespace+"/"+p.Name {
				cp.IP = netip.Addr{}
				break
			}
		}
	}
	return cp
}

// Detach implements agent.EndpointHook for CNI DEL. Detaches that arrive
// together are done together, as attaches are: whichever holds the write lock
// first forgets every queued endpoint, takes their entries out of the maps in
// one batch and writes the policy state once; the others find theirs done.
func (e *Enforcer) Detach(ctx context.Context, ep endpointapi.Endpoint) error {
	req := &detachRequest{ep: ep}
	e.mu.Lock()
	e.detachQ = append(e.detachQ, req)
	e.mu.Unlock()
	e.wmu.Lock()
	defer e.wmu.Unlock()
	e.mu.Lock()
	defer e.mu.Unlock()
	if !req.done {
		// The writes are shared: one caller giving up must not fail the others'.
		e.detachQueuedLocked(context.WithoutCancel(ctx))
	}
	return req.err
}

// detachRequest is a Detach waiting for its endpoint to be forgotten.
type detachRequest struct {
	ep   endpointapi.Endpoint
	err  error
	done bool
}

// detachQueuedLocked detaches the queued endpoints. Call with e.wmu and e.mu
// held.
func (e *Enforcer) detachQueuedLocked(ctx context.Context) {
	batch := e.detachQ
	e.detachQ = nil
	var ifindexes []int
	flush := false
	for _, r := range batch {
		ifindex, changed, err := e.forgetEndpointLocked(r.ep)
		r.err, r.done = err, true
		if ifindex > 0 {
			ifindexes = append(ifindexes, ifindex)
		}
		flush = flush || changed
	}
	e.publishIfindexesLocked()
	if len(ifindexes) > 0 {
		if err := e.d.DetachEndpoints(ctx, ifindexes); err != nil {
			for _, r := range batch {
				r.err = errors.Join(r.err, fmt.Errorf("detaching endpoints %v: %w", ifindexes, err))
			}
		}
	}
	if !flush || !e.synced {
		return // Synced writes everything
	}
	if err := e.flushApply(ctx); err != nil {
		for _, r := range batch {
			r.err = errors.Join(r.err, err)
		}
	}
}

// forgetEndpointLocked takes ep's endpoint out of the enforcer's state and
// returns the interface index whose datapath entries must go (0: none) and
// whether the policy state changed. Call with e.mu held.
func (e *Enforcer) forgetEndpointLocked(ep endpointapi.Endpoint) (int, bool, error) {
	key, ok := e.byCID[ep.ContainerID]
	if !ok && ep.PodName != "" {
		key, ok = ep.PodNamespace+"/"+ep.PodName, true
	}
	if !ok {
		return 0, false, nil
	}
	att, had := e.attached[key]
	if had && ep.ContainerID != "" && att.ContainerID != ep.ContainerID {
		// A pod recreated under the same name: the kubelet may tear the old sandbox
		// down after the new one is attached. This DEL is the old sandbox's; the
		// new attachment (and its policy) must stay; only the old veth's entries go.
		delete(e.byCID, ep.ContainerID)
		if ep.HostIfIndex > 0 && !e.ifindexAttachedLocked(ep.HostIfIndex) {
			return ep.HostIfIndex, false, nil
		}
		return 0, false, nil
	}
	if !had {
		att = ep
		// A late DEL of an endpoint already evicted: its interface index
		// may have been reused by an endpoint attached since.
		if e.ifindexAttachedLocked(att.HostIfIndex) {
			att.HostIfIndex = 0
		}
	}
	delete(e.attached, key)
	delete(e.byCID, ep.ContainerID)
	delete(e.epFail, key)
	// The pod object may live on (restarting sandbox); it is no longer local.
	if p := e.pods[key]; p != nil {
		if err := e.c.UpsertPod(e.remotePod(p)); err != nil {
			return att.HostIfIndex, true, err
		}
	} else {
		e.c.DeletePod(ep.PodNamespace, ep.PodName)
	}
	return att.HostIfIndex, true, nil
}

// ifindexAttachedLocked reports whether an attached endpoint has the interface
// index. A stale endpoint's index is not always its own any more: the kernel
// hands indexes out again, and after a node restart (a fresh network namespace)
// it counts from the start, so an old sandbox's late DEL, or the agent
// forgetting a vanished veth's endpoint, may name the veth of another pod
// attached since. Call with e.mu held.
func (e *Enforcer) ifindexAttachedLocked(ifindex int) bool {
	for _, other := range e.attached {
		if other.HostIfIndex == ifindex {
			return true
		}
	}
	return false
}
