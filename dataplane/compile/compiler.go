package compile

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"

	"github.com/flatnet/flatnet/dataplane/identity"
	"github.com/flatnet/flatnet/dataplane/ipv4"
	"github.com/flatnet/flatnet/dataplane/policy"
)

// Compiler holds the cluster state relevant to policy and what it last emitted. It is
// not safe for concurrent use: the agent drives it from one reconcile loop.
//
// It keeps the pods and namespaces as given and routes each change to the parts that
// own the derived state, in this order of dependency:
//
//	ids   identities: label sets <-> numbers, named ports per identity
//	sels  selector cache: selector -> the identities it selects, kept incrementally
//	pfx   CIDR prefixes: prefix -> local identity, CIDR peer -> prefix identities
//	repo  policy repository: objects -> rules and rule IDs, which subjects are dirty
//	ipc   IP cache: address -> identity, from pods, nodes and the API server
//	emit  emitter: per-endpoint policies and Flush
//
// The selector cache and the prefixes tell the repository when a selection changes;
// the repository alone decides which identities that makes dirty.
type Compiler struct {
	ids  *identities
	sels *selectorCache
	pfx  *prefixes
	repo *repository
	ipc  *ipCache
	emit *emitter

	namespaces map[string]map[string]string    // labels by namespace
	pods       map[string]*podState            // by namespace/name
	nsPods     map[string]map[string]*podState // by namespace, then namespace/name
	workloads  *workloadTable                  // the pods' workloads, shared (workloads.go)

	published publisher // the snapshot of the last Flush (snapshot.go)

	// Policy changes held back until the prefixes they name are written (stage.go):
	// held since the last Flush, ready once a Flush emitted their prefixes.
	held, ready []heldChange
	flushed     bool // a Flush went out: changes meet rules in force
}

type podState struct {
	key  string
	pod  Pod
	id   identity.ID
	sig  string // named-port signature
	hasI bool   // holds an identity reference
}

// New returns an empty compiler allocating identities from alloc.
func New(alloc *identity.Allocator) *Compiler {
	ids := newIdentities(alloc)
	repo := newRepository()
	sels := newSelectorCache(ids, repo.selectionChanged)
	pfx := newPrefixes(ids, repo.cidrPeerChanged)
	repo.sels, repo.pfx = sels, pfx
	return &Compiler{
		ids:        ids,
		sels:       sels,
		pfx:        pfx,
		repo:       repo,
		ipc:        newIPCache(),
		emit:       newEmitter(),
		namespaces: map[string]map[string]string{},
		pods:       map[string]*podState{},
		nsPods:     map[string]map[string]*podState{},
		workloads:  newWorkloadTable(),
	}
}

// Rule names a rule ID for flows ("which policy dropped this").
func (c *Compiler) Rule(id RuleID) (RuleInfo, bool) {
	r, ok := c.repo.rules[id]
	return r, ok
}

// IdentityOf returns the identity of a pod known to the compiler.
func (c *Compiler) IdentityOf(namespace, name string) (identity.ID, bool) {
	ps, ok := c.pods[namespace+"/"+name]
	if !ok || !ps.hasI {
		return 0, false
	}
	return ps.id, true
}

// EndpointPolicy returns the policy last emitted for a local pod.
func (c *Compiler) EndpointPolicy(namespace, name string) *EndpointPolicy {
	return c.emit.emitted[namespace+"/"+name]
}

// ---- namespaces, pods, nodes ----

// UpsertNamespace adds or updates a namespace; its pods change identity when its
// labels do.
func (c *Compiler) UpsertNamespace(ns Namespace) error {
	old, had := c.namespaces[ns.Name]
	if had && maps2Equal(old, ns.Labels) {
		return nil
	}
	c.namespaces[ns.Name] = copyMap(ns.Labels)
	return c.reassign(ns.Name)
}

// DeleteNamespace forgets a namespace's labels (its pods keep the namespace name).
func (c *Compiler) DeleteNamespace(name string) error {
	if _, ok := c.namespaces[name]; !ok {
		return nil
	}
	delete(c.namespaces, name)
	return c.reassign(name)
}

func (c *Compiler) reassign(ns string) error {
	for _, ps := range sortedPods(c.nsPods[ns]) {
		c.namedPorts(ps, -1)
		err := c.assignIdentity(ps, ps.pod.Ports)
		c.namedPorts(ps, +1)
		if err != nil {
			return err
		}
	}
	return nil
}

// UpsertPod adds or updates a pod.
func (c *Compiler) UpsertPod(p Pod) error {
	if p.Namespace == "" || p.Name == "" {
		return fmt.Errorf("upserting pod %q/%q: namespace and name are required", p.Namespace, p.Name)
	}
	key := p.Namespace + "/" + p.Name
	ps, ok := c.pods[key]
	if !ok {
		ps = &podState{key: key}
		c.pods[key] = ps
		if c.nsPods[p.Namespace] == nil {
			c.nsPods[p.Namespace] = map[string]*podState{}
		}
		c.nsPods[p.Namespace][key] = ps
	} else {
		c.setPodIP(ps, netip.Addr{})
		c.namedPorts(ps, -1)
	}
	oldPorts := ps.pod.Ports
	if ps.hasI {
		c.emit.index(ps, false) // Local may change
	}
	ws := c.workloads.acquire(p.Workloads)
	c.workloads.release(ps.pod.Workloads)
	ps.pod = p
	ps.pod.Labels = copyMap(p.Labels)
	ps.pod.Ports = slices.Clone(p.Ports)
	ps.pod.Workloads = ws
	ps.sig = portSignature(p.Ports)
	if err := c.assignIdentity(ps, oldPorts); err != nil {
		return err
	}
	c.namedPorts(ps, +1)
	c.setPodIP(ps, p.IP)
	c.emit.touch(key)
	return nil
}

// DeletePod forgets a pod; a local pod's endpoint gets a nil policy in the next Flush.
func (c *Compiler) DeletePod(namespace, name string) {
	key := namespace + "/" + name
	ps, ok := c.pods[key]
	if !ok {
		return
	}
	c.setPodIP(ps, netip.Addr{})
	c.namedPorts(ps, -1)
	if ps.hasI {
		c.emit.index(ps, false)
		c.dropIdentity(ps.id, ps.pod.Ports)
		ps.hasI = false
	}
	c.workloads.release(ps.pod.Workloads)
	delete(c.pods, key)
	delete(c.nsPods[namespace], key)
	if len(c.nsPods[namespace]) == 0 {
		delete(c.nsPods, namespace)
	}
	c.emit.touch(key)
}

// UpsertNode records a node's addresses: the local node's get identity.Host, the
// others identity.RemoteNode.
func (c *Compiler) UpsertNode(name string, ips []netip.Addr, local bool) {
	c.ipc.upsertNode(name, ips, local)
}

// DeleteNode forgets a node's addresses.
func (c *Compiler) DeleteNode(name string) { c.ipc.deleteNode(name) }

// SetAPIServer records the addresses the kube-apiserver answers on (the endpoints of
// the default/kubernetes Service): they get identity.KubeAPIServer, which the
// kube-apiserver entity selects and, as those are node addresses, remote-node too.
// On the local node the address stays identity.Host (always allowed).
func (c *Compiler) SetAPIServer(ips []netip.Addr) { c.ipc.setAPIServer(ips) }

func (c *Compiler) setPodIP(ps *podState, ip netip.Addr) {
	if ps.pod.IP.IsValid() && !ps.pod.HostNetwork {
		c.ipc.del(ps.pod.IP, podOwner(ps.key))
	}
	ps.pod.IP = ip
	if ip.IsValid() && !ps.pod.HostNetwork && ps.hasI {
		c.ipc.add(ip, podOwner(ps.key), ps.id)
	}
}

// assignIdentity (re)computes a pod's label set and moves it to that identity;
// oldPorts are the ports it had on its old one (already uncounted).
func (c *Compiler) assignIdentity(ps *podState, oldPorts []NamedPort) error {
	labels := policy.IdentityLabels(ps.pod.Namespace, ps.pod.Labels, c.namespaces[ps.pod.Namespace], ps.pod.ServiceAccount)
	is, created, err := c.ids.acquire(labels, ps.pod.Namespace)
	if err != nil {
		return fmt.Errorf("pod %s: %w", ps.key, err)
	}
	if created {
		c.sels.identityAdded(is)
		c.repo.identitiesChanged()
	}
	if ps.hasI {
		if ps.id == is.id {
			c.ids.unref(is.id) // keep exactly one reference
			c.emit.index(ps, true)
			return nil
		}
		c.emit.index(ps, false)
		c.dropIdentity(ps.id, oldPorts)
	}
	ps.id, ps.hasI = is.id, true
	if c.ids.hold(is.id) {
		c.repo.namedPortsChanged(is, true, false)
	}
	c.emit.index(ps, true)
	if ps.pod.IP.IsValid() && !ps.pod.HostNetwork {
		c.ipc.add(ps.pod.IP, podOwner(ps.key), is.id)
	}
	c.emit.touch(ps.key)
	return nil
}

// dropIdentity releases a pod's identity (ports: the pod's, already uncounted);
// when it was the last pod, the identity retires: still selected, with those
// named ports, until Written.
func (c *Compiler) dropIdentity(id identity.ID, ports []NamedPort) {
	if changed := c.ids.drop(id, ports); changed {
		c.repo.namedPortsChanged(c.ids.byID[id], true, false)
	}
}

// Written tells the compiler that up, its last Flush, is in the datapath (its IP
// cache and prefix moves included). The identities up listed as retiring (of pods,
// or of CIDR prefixes) go: every part forgets them, and the next Flush takes them
// out of the policies and the CIDR prefixes; identities held or named again since
// are kept. The policy changes held for the prefixes up staged apply (stage.go).
// Flush again and write that at once: see Update.Unsettled.
func (c *Compiler) Written(up Update) {
	for _, id := range up.Retiring {
		if c.pfx.retire(id) {
			continue
		}
		if is := c.ids.retire(id); is != nil {
			c.sels.identityRemoved(is)
			c.emit.forget(id)
			c.repo.identityGone(id)
			c.repo.identitiesChanged()
		}
	}
	if up.Held > 0 {
		c.applyReady()
	}
}

// namedPorts adds (sign +1) or removes (-1) a pod's named ports from its identity's
// and the cluster's sets; when a set changes, policies resolving names there recompile.
func (c *Compiler) namedPorts(ps *podState, sign int) {
	if !ps.hasI || len(ps.pod.Ports) == 0 {
		return
	}
	is := c.ids.byID[ps.id]
	changed, clusterChanged := c.ids.countNamed(is, ps.pod.Ports, sign)
	c.repo.namedPortsChanged(is, changed, clusterChanged)
}

// ---- policies ----

// UpsertPolicy sets the policies a source object converted to (policy.FromNetworkPolicy
// or policy.FromCilium), under a key unique per object such as "cnp/ns/name". It
// replaces whatever the key held; a rejected object should be passed to DeletePolicy
// or kept at its last good version by the caller.
//
// A change naming a CIDR prefix the datapath does not hold yet applies a write
// later (stage.go): the Flush after it stages the prefix under the rules in
// force, and Written applies it.
func (c *Compiler) UpsertPolicy(key string, pols []*policy.Policy) error {
	if !c.stage(heldChange{key: key, pols: pols}) {
		c.applyRules(key, pols, false)
	}
	return nil
}

// DeletePolicy removes everything a key held (after the key's held changes).
func (c *Compiler) DeletePolicy(key string) {
	if !c.stage(heldChange{key: key, del: true}) {
		c.applyRules(key, nil, true)
	}
}

// applyRules sets key's rules to pols, or deletes them, rule IDs included.
func (c *Compiler) applyRules(key string, pols []*policy.Policy, del bool) {
	c.rulesChanging(key)
	if del {
		c.repo.delete(key)
		return
	}
	c.repo.upsert(key, pols)
}

// PrefixUsers names the policies whose CIDR peers use prefix p (as block or
// exception) and the local pods those policies select: the endpoints whose policy
// is wrong while p is missing from the datapath.
func (c *Compiler) PrefixUsers(p ipv4.Prefix) (refs []policy.Ref, pods []string) {
	seenRef, seenPod := map[policy.Ref]bool{}, map[string]bool{}
	for _, e := range c.repo.usingPrefix(p) {
		if !seenRef[e.pol.Ref] {
			seenRef[e.pol.Ref] = true
			refs = append(refs, e.pol.Ref)
		}
		for id := range e.subject.ids {
			for k := range c.emit.local[id] {
				if !seenPod[k] {
					seenPod[k] = true
					pods = append(pods, k)
				}
			}
		}
	}
	sort.Strings(pods)
	return refs, pods
}

// EntriesByPolicy counts a policy's entries by the policy object whose rule produced
// them: which object makes an endpoint's policy too large.
func (c *Compiler) EntriesByPolicy(pol *EndpointPolicy) map[policy.Ref]int {
	out := map[policy.Ref]int{}
	for _, v := range pol.Entries {
		if r, ok := c.repo.rules[v.RuleID]; ok {
			out[r.Policy]++
		}
	}
	return out
}

// ---- helpers ----

func portSignature(ports []NamedPort) string {
	var parts []string
	for _, p := range ports {
		if p.Name != "" {
			parts = append(parts, fmt.Sprintf("%s/%d/%d", p.Name, p.Protocol, p.Port))
		}
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}

func copyMap(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func maps2Equal(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func sortedPods(m map[string]*podState) []*podState {
	out := make([]*podState, 0, len(m))
	for _, ps := range m {
		out = append(out, ps)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].key < out[j].key })
	return out
}
