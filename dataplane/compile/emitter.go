package compile

import (
	"slices"
	"sort"
	"strings"

	"github.com/flatnet/flatnet/dataplane/identity"
	"github.com/flatnet/flatnet/dataplane/ipv4"
)

// emitter turns the identities the repository marked dirty, and the pods that
// changed, into the policies of this node's endpoints. Policies are computed once
// per (identity, named-port signature) and shared by the endpoints that have both.
//
// Invariants: local holds every local, non-host-network pod with an identity, by
// that identity; memo holds only policies computed since their identity was last
// dirty (Flush drops the dirty ones first); emitted and emittedID are what the
// datapath holds per endpoint; pods holds every endpoint whose policy or identity
// may differ from them, besides the endpoints of the dirty identities.
type emitter struct {
	memo      map[identity.ID]map[string]*EndpointPolicy // by identity, then named-port signature
	emitted   map[string]*EndpointPolicy                 // last policy sent per local pod
	emittedID map[string]identity.ID                     // and the identity sent with it
	pods      map[string]struct{}                        // pods to look at again, by key
	local     map[identity.ID]map[string]*podState       // local pods by identity
}

func newEmitter() *emitter {
	return &emitter{
		memo:      map[identity.ID]map[string]*EndpointPolicy{},
		emitted:   map[string]*EndpointPolicy{},
		emittedID: map[string]identity.ID{},
		pods:      map[string]struct{}{},
		local:     map[identity.ID]map[string]*podState{},
	}
}

// touch makes the next Flush look at a pod again.
func (em *emitter) touch(key string) { em.pods[key] = struct{}{} }

// index adds (or removes) a pod to the local endpoints of its identity.
func (em *emitter) index(ps *podState, add bool) {
	if !add {
		if m := em.local[ps.id]; m != nil {
			delete(m, ps.key)
			if len(m) == 0 {
				delete(em.local, ps.id)
			}
		}
		return
	}
	if !ps.pod.Local || ps.pod.HostNetwork {
		return
	}
	m := em.local[ps.id]
	if m == nil {
		m = map[string]*podState{}
		em.local[ps.id] = m
	}
	m[ps.key] = ps
}

// forget drops the policies computed for a gone identity.
func (em *emitter) forget(id identity.ID) { delete(em.memo, id) }

// flush recomputes the endpoints of the dirty identities and the touched pods
// (looked up in pods) and returns those whose policy or identity changed, and
// the keys of every pod it looked at (the snapshot republishes those).
func (em *emitter) flush(dirty map[identity.ID]struct{}, pods map[string]*podState, compute func(*podState) *EndpointPolicy) ([]EndpointUpdate, []string) {
	for id := range dirty {
		delete(em.memo, id)
	}
	affected := map[string]struct{}{}
	for k := range em.pods {
		affected[k] = struct{}{}
	}
	for id := range dirty {
		for k := range em.local[id] {
			affected[k] = struct{}{}
		}
	}
	keys := make([]string, 0, len(affected))
	for k := range affected {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var out []EndpointUpdate
	for _, k := range keys {
		ps, ok := pods[k]
		if !ok || !ps.pod.Local || ps.pod.HostNetwork || !ps.hasI {
			if _, had := em.emitted[k]; had {
				delete(em.emitted, k)
				delete(em.emittedID, k)
				ns, name, _ := strings.Cut(k, "/")
				out = append(out, EndpointUpdate{Namespace: ns, Name: name})
			}
			continue
		}
		pol := em.policyFor(ps, compute)
		if old, had := em.emitted[k]; had && old.Equal(pol) && em.emittedID[k] == ps.id {
			continue
		}
		em.emittedID[k] = ps.id
		em.emitted[k] = pol
		out = append(out, EndpointUpdate{Namespace: ps.pod.Namespace, Name: ps.pod.Name, IP: ps.pod.IP, Identity: ps.id, Policy: pol})
	}
	clear(em.pods)
	return out, keys
}

func (em *emitter) policyFor(ps *podState, compute func(*podState) *EndpointPolicy) *EndpointPolicy {
	byID := em.memo[ps.id]
	if p, ok := byID[ps.sig]; ok {
		return p
	}
	p := compute(ps)
	if byID == nil {
		byID = map[string]*EndpointPolicy{}
		em.memo[ps.id] = byID
	}
	byID[ps.sig] = p
	return p
}

// retry makes the next Flush emit a pod's policy again (its write failed).
func (em *emitter) retry(key string) {
	delete(em.emitted, key)
	delete(em.emittedID, key)
	em.touch(key)
}

// invalidate forgets what was emitted; the next Flush emits every local pod in pods.
func (em *emitter) invalidate(pods map[string]*podState) {
	clear(em.emitted)
	clear(em.emittedID)
	for k, ps := range pods {
		if ps.pod.Local {
			em.touch(k)
		}
	}
}

// Flush recomputes what changed since the last Flush and returns it.
func (c *Compiler) Flush() Update {
	var up Update
	var flushed []string
	up.Endpoints, flushed = c.emit.flush(c.repo.dirty, c.pods, c.compute)
	c.repo.flushed()
	up.IPCache = c.ipc.flush(c.published.peerChanged)
	up.CIDRs = c.pfx.flush()
	up.Identities = c.ids.flush()
	up.Retiring = append(c.ids.retiringIDs(), c.pfx.retiringIDs()...)
	slices.Sort(up.Retiring)
	// The changes held until now have their prefixes in this update.
	c.ready = append(c.ready, c.held...)
	c.held = nil
	up.Held = len(c.ready)
	c.flushed = true
	c.publish(flushed, up.CIDRs)
	return up
}

// FlushSettled flushes until nothing is held or retiring, for a caller that writes
// no datapath between flushes (benchmarks, tests, a compile with no node): the
// updates in order, each to be written before the next.
func (c *Compiler) FlushSettled() []Update {
	ups := []Update{c.Flush()}
	for ups[len(ups)-1].Unsettled() {
		c.Written(ups[len(ups)-1])
		ups = append(ups, c.Flush())
	}
	return ups
}

// Emitted returns the IP cache and CIDR prefixes as emitted so far: after the first
// Flush of a restarted agent, what the datapath should hold and nothing more.
func (c *Compiler) Emitted() (ipcache, cidrs map[ipv4.Prefix]identity.ID) {
	return c.ipc.out.entries(), c.pfx.out.entries()
}

// Invalidate forgets what was emitted, so the next Flush returns the complete state
// (after a failed write left the datapath behind the compiler).
func (c *Compiler) Invalidate() {
	c.emit.invalidate(c.pods)
	c.ipc.invalidate()
	c.pfx.invalidate()
	c.ids.recordAll()
}

// Retry makes the next Flush emit a local pod's policy again (its last write failed).
func (c *Compiler) Retry(namespace, name string) { c.emit.retry(namespace + "/" + name) }

// RetryPrefix makes the next Flush emit a CIDR-rule prefix again.
func (c *Compiler) RetryPrefix(p ipv4.Prefix) { c.pfx.out.retry(p) }
