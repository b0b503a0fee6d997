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
func (e *Enforcer) Attach(ctx context.Context, ep endpointapi.Endpoint) error {
	if err := e.waitSynced(ctx); err != nil {
		return err
	}
	e.wmu.Lock()
	defer e.wmu.Unlock()
	e.mu.Lock()
	defer e.mu.Unlock()
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
	if err := e.flushApply(ctx); err != nil {
		// Not this pod's: other writes failed and are retried. Its own policy
		// is written below.
		e.log.Error("datapath write failed; retrying", "attaching", key, "error", err)
	}
	id, _ := e.c.IdentityOf(ep.PodNamespace, ep.PodName)
	pol := e.c.EndpointPolicy(ep.PodNamespace, ep.PodName)
	if pol == nil {
		return fmt.Errorf("attaching %s: no policy compiled", key)
	}
	// A missing or malformed MAC only costs direct delivery's fast way in.
	mac, _ := net.ParseMAC(ep.MAC)
	bep := bpf.Endpoint{IfIndex: ep.HostIfIndex, IP: ep.IP, Identity: id, MAC: mac}
	err := e.d.AttachEndpoint(ctx, bep, pol)
	if errors.Is(err, bpf.ErrPolicyTooLarge) {
		// The pod starts isolated (fail closed) and the policy is reported; it
		// gets its policy once the policies selecting it fit.
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
	e.publishIfindexesLocked()
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
	if stale.HostIfIndex > 0 {
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

// Detach implements agent.EndpointHook for CNI DEL.
func (e *Enforcer) Detach(ctx context.Context, ep endpointapi.Endpoint) error {
	e.wmu.Lock()
	defer e.wmu.Unlock()
	e.mu.Lock()
	defer e.mu.Unlock()
	key, ok := e.byCID[ep.ContainerID]
	if !ok && ep.PodName != "" {
		key, ok = ep.PodNamespace+"/"+ep.PodName, true
	}
	if !ok {
		return nil
	}
	att, had := e.attached[key]
	if had && ep.ContainerID != "" && att.ContainerID != ep.ContainerID {
		// A pod recreated under the same name: the kubelet may tear the old sandbox
		// down after the new one is attached. This DEL is the old sandbox's; the
		// new attachment (and its policy) must stay; only the old veth's entries go.
		delete(e.byCID, ep.ContainerID)
		if ep.HostIfIndex > 0 && ep.HostIfIndex != att.HostIfIndex {
			if err := e.d.DetachEndpoint(ctx, ep.HostIfIndex); err != nil {
				return fmt.Errorf("detaching the old sandbox of %s: %w", key, err)
			}
		}
		return nil
	}
	if !had {
		att = ep
		// A late DEL of an endpoint already evicted: its interface index
		// may have been reused by an endpoint attached since.
		for _, other := range e.attached {
			if other.HostIfIndex == att.HostIfIndex {
				att.HostIfIndex = 0
			}
		}
	}
	delete(e.attached, key)
	delete(e.byCID, ep.ContainerID)
	delete(e.epFail, key)
	e.publishIfindexesLocked()
	if att.HostIfIndex > 0 {
		if err := e.d.DetachEndpoint(ctx, att.HostIfIndex); err != nil {
			return fmt.Errorf("detaching %s: %w", key, err)
		}
	}
	// The pod object may live on (restarting sandbox); it is no longer local.
	if p := e.pods[key]; p != nil {
		if err := e.c.UpsertPod(e.remotePod(p)); err != nil {
			return err
		}
	} else {
		e.c.DeletePod(ep.PodNamespace, ep.PodName)
	}
	if !e.synced {
		return nil // Synced writes everything
	}
	return e.flushApply(ctx)
}
