package compile

import (
	"fmt"
	"maps"
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
type Compiler struct {
	alloc *identity.Allocator

	namespaces map[string]map[string]string
	nsPods     map[string]map[string]*podState
	pods       map[string]*podState // by namespace/name
	idents     map[identity.ID]*identState
	nsIdents   map[string]map[identity.ID]*identState

	selectors   map[string]*selState
	nsSelectors map[string]map[*selState]struct{} // selectors pinned to a namespace
	anySelector map[*selState]struct{}            // selectors that may match any namespace

	policies  map[string][]*polEntry
	ruleIDs   map[string]map[string]RuleID // policy key -> spec/rule index -> id, stable across updates
	rules     map[RuleID]RuleInfo
	nextRule  RuleID
	cidrs     map[ipv4.Prefix]*cidrState
	cidrPeers map[string]*cidrPeerState

	clusterUsers map[*polEntry]struct{} // policies naming the cluster entity
	namedAny     map[*polEntry]struct{} // policies with named egress ports resolved cluster-wide
	globalNamed  map[NamedPort]int

	nodes     map[string]nodeState
	apiServer []netip.Addr
	ipOwner   map[netip.Addr]map[string]identity.ID // owner ("pod/ns/name", "node/name") -> identity

	// Incremental state.
	dirtyIDs  map[identity.ID]struct{}
	dirtyPods map[string]struct{}
	dirtyIPs  map[netip.Addr]struct{}
	dirtyPfx  map[ipv4.Prefix]struct{}
	identUps  map[identity.Sum]IdentityUpdate
	memo      map[identity.ID]map[string]*EndpointPolicy // by identity, then named-port signature
	emitted   map[string]*EndpointPolicy                 // last policy sent per local pod
	emittedID map[string]identity.ID                     // and the identity sent with it
	localByID map[identity.ID]map[string]*podState       // local pods by identity
	emitIP    map[netip.Addr]identity.ID
	emitPfx   map[ipv4.Prefix]identity.ID

	published publisher // the snapshot of the last Flush (snapshot.go)
}

type podState struct {
	key  string
	pod  Pod
	id   identity.ID
	sig  string // named-port signature
	hasI bool   // holds an identity reference
}

type identState struct {
	id     identity.ID
	labels map[string]string
	ns     string
	pods   int
	named  map[NamedPort]int
	sels   map[*selState]struct{} // selectors matching this identity
}

type selState struct {
	key       string
	sel       policy.Selector
	ns        []string // namespaces it is pinned to; nil when any
	ids       map[identity.ID]struct{}
	subjectOf map[*polEntry]struct{}
	peerOf    map[*polEntry]struct{}
}

type cidrState struct {
	id   identity.ID
	refs int
}

type cidrPeerState struct {
	key   string
	cidr  policy.CIDR
	ids   map[identity.ID]struct{}
	users map[*polEntry]struct{}
}

type nodeState struct {
	ips   []netip.Addr
	local bool
}

type polEntry struct {
	key       string
	pol       *policy.Policy
	ruleIDs   []RuleID
	subject   *selState
	peerSels  []*selState
	cidrPeers []*cidrPeerState
	prefixes  []ipv4.Prefix
	namedEg   bool
}

// New returns an empty compiler allocating identities from alloc.
func New(alloc *identity.Allocator) *Compiler {
	return &Compiler{
		alloc:        alloc,
		namespaces:   map[string]map[string]string{},
		nsPods:       map[string]map[string]*podState{},
		pods:         map[string]*podState{},
		idents:       map[identity.ID]*identState{},
		nsIdents:     map[string]map[identity.ID]*identState{},
		selectors:    map[string]*selState{},
		nsSelectors:  map[string]map[*selState]struct{}{},
		anySelector:  map[*selState]struct{}{},
		policies:     map[string][]*polEntry{},
		ruleIDs:      map[string]map[string]RuleID{},
		localByID:    map[identity.ID]map[string]*podState{},
		rules:        map[RuleID]RuleInfo{},
		cidrs:        map[ipv4.Prefix]*cidrState{},
		cidrPeers:    map[string]*cidrPeerState{},
		clusterUsers: map[*polEntry]struct{}{},
		namedAny:     map[*polEntry]struct{}{},
		globalNamed:  map[NamedPort]int{},
		nodes:        map[string]nodeState{},
		ipOwner:      map[netip.Addr]map[string]identity.ID{},
		dirtyIDs:     map[identity.ID]struct{}{},
		dirtyPods:    map[string]struct{}{},
		dirtyIPs:     map[netip.Addr]struct{}{},
		dirtyPfx:     map[ipv4.Prefix]struct{}{},
		identUps:     map[identity.Sum]IdentityUpdate{},
		memo:         map[identity.ID]map[string]*EndpointPolicy{},
		emitted:      map[string]*EndpointPolicy{},
		emittedID:    map[string]identity.ID{},
		emitIP:       map[netip.Addr]identity.ID{},
		emitPfx:      map[ipv4.Prefix]identity.ID{},
	}
}

// Rule names a rule ID for flows ("which policy dropped this").
func (c *Compiler) Rule(id RuleID) (RuleInfo, bool) {
	r, ok := c.rules[id]
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
	return c.emitted[namespace+"/"+name]
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
		err := c.assignIdentity(ps)
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
	if ps.hasI {
		c.indexLocal(ps, false) // Local may change
	}
	ps.pod = p
	ps.pod.Labels = copyMap(p.Labels)
	ps.pod.Ports = slices.Clone(p.Ports)
	ps.sig = portSignature(p.Ports)
	if err := c.assignIdentity(ps); err != nil {
		return err
	}
	c.namedPorts(ps, +1)
	c.setPodIP(ps, p.IP)
	c.dirtyPods[key] = struct{}{}
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
		c.indexLocal(ps, false)
		c.dropIdentity(ps.id)
		ps.hasI = false
	}
	delete(c.pods, key)
	delete(c.nsPods[namespace], key)
	if len(c.nsPods[namespace]) == 0 {
		delete(c.nsPods, namespace)
	}
	c.dirtyPods[key] = struct{}{}
}

// UpsertNode records a node's addresses: the local node's get identity.Host, the
// others identity.RemoteNode.
func (c *Compiler) UpsertNode(name string, ips []netip.Addr, local bool) {
	c.DeleteNode(name)
	id := identity.RemoteNode
	if local {
		id = identity.Host
	}
	for _, ip := range ips {
		c.addIPOwner(ip, "node/"+name, id)
	}
	c.nodes[name] = nodeState{ips: slices.Clone(ips), local: local}
}

// DeleteNode forgets a node's addresses.
func (c *Compiler) DeleteNode(name string) {
	n, ok := c.nodes[name]
	if !ok {
		return
	}
	for _, ip := range n.ips {
		c.delIPOwner(ip, "node/"+name)
	}
	delete(c.nodes, name)
}

func (c *Compiler) setPodIP(ps *podState, ip netip.Addr) {
	if ps.pod.IP.IsValid() && !ps.pod.HostNetwork {
		c.delIPOwner(ps.pod.IP, "pod/"+ps.key)
	}
	ps.pod.IP = ip
	if ip.IsValid() && !ps.pod.HostNetwork && ps.hasI {
		c.addIPOwner(ip, "pod/"+ps.key, ps.id)
	}
}

func (c *Compiler) addIPOwner(ip netip.Addr, owner string, id identity.ID) {
	if !ip.Is4() {
		return // the datapath is IPv4-only: no other address can be keyed or seen
	}
	if c.ipOwner[ip] == nil {
		c.ipOwner[ip] = map[string]identity.ID{}
	}
	c.ipOwner[ip][owner] = id
	c.dirtyIPs[ip] = struct{}{}
}

func (c *Compiler) delIPOwner(ip netip.Addr, owner string) {
	if o := c.ipOwner[ip]; o != nil {
		delete(o, owner)
		if len(o) == 0 {
			delete(c.ipOwner, ip)
		}
	}
	c.dirtyIPs[ip] = struct{}{}
}

// assignIdentity (re)computes a pod's label set and moves it to that identity.
func (c *Compiler) assignIdentity(ps *podState) error {
	labels := policy.IdentityLabels(ps.pod.Namespace, ps.pod.Labels, c.namespaces[ps.pod.Namespace], ps.pod.ServiceAccount)
	id, created, err := c.alloc.Acquire(labels)
	if err != nil {
		return fmt.Errorf("pod %s: %w", ps.key, err)
	}
	if created {
		c.addIdentity(id, labels, ps.pod.Namespace)
		c.recordIdentity(id, false)
	}
	if ps.hasI {
		if ps.id == id {
			c.alloc.Release(id) // keep exactly one reference
			c.indexLocal(ps, true)
			return nil
		}
		c.indexLocal(ps, false)
		c.dropIdentity(ps.id)
	}
	ps.id, ps.hasI = id, true
	c.idents[id].pods++
	c.indexLocal(ps, true)
	if ps.pod.IP.IsValid() && !ps.pod.HostNetwork {
		c.addIPOwner(ps.pod.IP, "pod/"+ps.key, id)
	}
	c.dirtyPods[ps.key] = struct{}{}
	return nil
}

// indexLocal adds (or removes) a local pod to the index by identity.
func (c *Compiler) indexLocal(ps *podState, add bool) {
	if !add {
		if m := c.localByID[ps.id]; m != nil {
			delete(m, ps.key)
			if len(m) == 0 {
				delete(c.localByID, ps.id)
			}
		}
		return
	}
	if !ps.pod.Local || ps.pod.HostNetwork {
		return
	}
	m := c.localByID[ps.id]
	if m == nil {
		m = map[string]*podState{}
		c.localByID[ps.id] = m
	}
	m[ps.key] = ps
}

// recordIdentity queues an identity for Update.Identities (before its release: the
// allocator forgets the Sum with it).
func (c *Compiler) recordIdentity(id identity.ID, del bool) {
	if s, ok := c.alloc.SumOf(id); ok {
		c.identUps[s] = IdentityUpdate{Sum: s, ID: id, Delete: del}
	}
}

func (c *Compiler) dropIdentity(id identity.ID) {
	if is := c.idents[id]; is != nil {
		is.pods--
		if is.pods == 0 {
			c.recordIdentity(id, true)
		}
	}
	if c.alloc.Release(id) {
		c.removeIdentity(id)
	}
}

func (c *Compiler) addIdentity(id identity.ID, labels map[string]string, ns string) {
	is := &identState{id: id, labels: labels, ns: ns, named: map[NamedPort]int{}, sels: map[*selState]struct{}{}}
	c.idents[id] = is
	if c.nsIdents[ns] == nil {
		c.nsIdents[ns] = map[identity.ID]*identState{}
	}
	c.nsIdents[ns][id] = is
	for s := range c.nsSelectors[ns] {
		c.matchOne(s, is)
	}
	for s := range c.anySelector {
		c.matchOne(s, is)
	}
	for u := range c.clusterUsers {
		c.dirtySubjects(u)
	}
}

func (c *Compiler) removeIdentity(id identity.ID) {
	is := c.idents[id]
	if is == nil {
		return
	}
	for s := range is.sels {
		delete(s.ids, id)
		c.selectorChanged(s, id)
	}
	delete(c.idents, id)
	delete(c.nsIdents[is.ns], id)
	if len(c.nsIdents[is.ns]) == 0 {
		delete(c.nsIdents, is.ns)
	}
	delete(c.memo, id)
	for u := range c.clusterUsers {
		c.dirtySubjects(u)
	}
}

func (c *Compiler) matchOne(s *selState, is *identState) {
	if !s.sel.Matches(is.labels) {
		return
	}
	s.ids[is.id] = struct{}{}
	is.sels[s] = struct{}{}
	c.selectorChanged(s, is.id)
}

// selectorChanged marks what depends on s after identity id entered or left it.
func (c *Compiler) selectorChanged(s *selState, id identity.ID) {
	if len(s.subjectOf) > 0 {
		c.dirtyIDs[id] = struct{}{}
	}
	for u := range s.peerOf {
		c.dirtySubjects(u)
	}
}

func (c *Compiler) dirtySubjects(u *polEntry) {
	for id := range u.subject.ids {
		c.dirtyIDs[id] = struct{}{}
	}
}

// namedPorts adds (sign +1) or removes (-1) a pod's named ports from its identity's
// and the cluster's sets; when a set changes, policies resolving names there recompile.
func (c *Compiler) namedPorts(ps *podState, sign int) {
	if !ps.hasI || len(ps.pod.Ports) == 0 {
		return
	}
	is := c.idents[ps.id]
	changed, globalChanged := false, false
	for _, np := range ps.pod.Ports {
		if np.Name == "" {
			continue
		}
		if bump(is.named, np, sign) {
			changed = true
		}
		if bump(c.globalNamed, np, sign) {
			globalChanged = true
		}
	}
	if changed {
		for s := range is.sels {
			for u := range s.peerOf {
				if u.namedEg {
					c.dirtySubjects(u)
				}
			}
		}
	}
	if globalChanged {
		for u := range c.namedAny {
			c.dirtySubjects(u)
		}
	}
}

// bump adjusts a count and reports whether the key appeared or disappeared.
func bump(m map[NamedPort]int, k NamedPort, sign int) bool {
	n := m[k] + sign
	if n <= 0 {
		delete(m, k)
		return n == 0
	}
	m[k] = n
	return n == 1 && sign > 0
}

// ---- policies ----

// UpsertPolicy sets the policies a source object converted to (policy.FromNetworkPolicy
// or policy.FromCilium), under a key unique per object such as "cnp/ns/name". It
// replaces whatever the key held; a rejected object should be passed to DeletePolicy
// or kept at its last good version by the caller.
func (c *Compiler) UpsertPolicy(key string, pols []*policy.Policy) error {
	c.rulesChanging(key)
	c.removePolicy(key)
	var entries []*polEntry
	used := map[string]bool{}
	ids := c.ruleIDs[key]
	if ids == nil {
		ids = map[string]RuleID{}
		c.ruleIDs[key] = ids
	}
	for si, p := range pols {
		e := &polEntry{key: key, pol: p}
		for ri, r := range p.Rules {
			rk := fmt.Sprintf("%d#%d", si, ri)
			id, ok := ids[rk]
			if !ok {
				c.nextRule++
				id = c.nextRule
				ids[rk] = id
			}
			used[rk] = true
			c.rules[id] = RuleInfo{Policy: p.Ref, Rule: r.Name}
			e.ruleIDs = append(e.ruleIDs, id)
		}
		e.subject = c.useSelector(p.Subject)
		e.subject.subjectOf[e] = struct{}{}
		for _, r := range p.Rules {
			named := false
			for _, port := range r.Ports {
				named = named || port.Name != ""
			}
			if named && r.Direction == policy.Egress {
				e.namedEg = true
				if r.AnyPeer {
					c.namedAny[e] = struct{}{}
				}
			}
			for _, peer := range r.Peers {
				switch {
				case peer.Endpoints != nil:
					s := c.useSelector(*peer.Endpoints)
					s.peerOf[e] = struct{}{}
					e.peerSels = append(e.peerSels, s)
				case peer.CIDR != nil:
					e.cidrPeers = append(e.cidrPeers, c.useCIDRPeer(*peer.CIDR, e))
					if named && r.Direction == policy.Egress {
						c.namedAny[e] = struct{}{}
					}
				case peer.Entity == policy.EntityCluster:
					c.clusterUsers[e] = struct{}{}
					if named && r.Direction == policy.Egress {
						c.namedAny[e] = struct{}{}
					}
				default:
					if named && r.Direction == policy.Egress {
						c.namedAny[e] = struct{}{}
					}
				}
			}
		}
		c.dirtySubjects(e)
		entries = append(entries, e)
	}
	// Prefixes last: a new prefix re-evaluates the CIDR peers registered above.
	for _, e := range entries {
		for _, r := range e.pol.Rules {
			for _, peer := range r.Peers {
				if peer.CIDR != nil {
					c.usePrefix(peer.CIDR.Prefix)
					e.prefixes = append(e.prefixes, peer.CIDR.Prefix)
					for _, ex := range peer.CIDR.Except {
						c.usePrefix(ex)
						e.prefixes = append(e.prefixes, ex)
					}
				}
			}
		}
	}
	c.policies[key] = entries
	for rk, id := range ids {
		if !used[rk] {
			delete(ids, rk)
			delete(c.rules, id)
		}
	}
	return nil
}

// DeletePolicy removes everything a key held.
func (c *Compiler) DeletePolicy(key string) {
	c.rulesChanging(key)
	c.removePolicy(key)
	for _, id := range c.ruleIDs[key] {
		delete(c.rules, id)
	}
	delete(c.ruleIDs, key)
}

func (c *Compiler) removePolicy(key string) {
	entries, ok := c.policies[key]
	if !ok {
		return
	}
	delete(c.policies, key)
	for _, e := range entries {
		c.dirtySubjects(e)
		delete(e.subject.subjectOf, e)
		c.dropSelector(e.subject)
		for _, s := range e.peerSels {
			delete(s.peerOf, e)
			c.dropSelector(s)
		}
		for _, cp := range e.cidrPeers {
			delete(cp.users, e)
			if len(cp.users) == 0 {
				delete(c.cidrPeers, cp.key)
			}
		}
		for _, p := range e.prefixes {
			c.dropPrefix(p)
		}
		delete(c.clusterUsers, e)
		delete(c.namedAny, e)
	}
}

func (c *Compiler) useSelector(sel policy.Selector) *selState {
	key := sel.String()
	if s, ok := c.selectors[key]; ok {
		return s
	}
	s := &selState{key: key, sel: sel, ids: map[identity.ID]struct{}{},
		subjectOf: map[*polEntry]struct{}{}, peerOf: map[*polEntry]struct{}{}}
	s.ns = pinnedNamespaces(sel)
	c.selectors[key] = s
	if s.ns == nil {
		c.anySelector[s] = struct{}{}
		for _, is := range c.idents {
			c.matchSilently(s, is)
		}
	} else {
		for _, ns := range s.ns {
			if c.nsSelectors[ns] == nil {
				c.nsSelectors[ns] = map[*selState]struct{}{}
			}
			c.nsSelectors[ns][s] = struct{}{}
			for _, is := range c.nsIdents[ns] {
				c.matchSilently(s, is)
			}
		}
	}
	return s
}

// matchSilently matches a new selector: it has no users yet, so nothing is dirtied.
func (c *Compiler) matchSilently(s *selState, is *identState) {
	if s.sel.Matches(is.labels) {
		s.ids[is.id] = struct{}{}
		is.sels[s] = struct{}{}
	}
}

func (c *Compiler) dropSelector(s *selState) {
	if len(s.subjectOf) > 0 || len(s.peerOf) > 0 {
		return
	}
	delete(c.selectors, s.key)
	delete(c.anySelector, s)
	for _, ns := range s.ns {
		delete(c.nsSelectors[ns], s)
		if len(c.nsSelectors[ns]) == 0 {
			delete(c.nsSelectors, ns)
		}
	}
	for id := range s.ids {
		if is := c.idents[id]; is != nil {
			delete(is.sels, s)
		}
	}
}

// pinnedNamespaces returns the namespaces a selector can only match in, or nil.
func pinnedNamespaces(sel policy.Selector) []string {
	for _, r := range sel.Requirements {
		if r.Key == policy.NamespaceLabel && r.Operator == policy.OpIn {
			return r.Values
		}
	}
	return nil
}

func cidrKey(c policy.CIDR) string {
	var b strings.Builder
	b.WriteString(c.Prefix.String())
	for _, e := range c.Except {
		b.WriteString(" -")
		b.WriteString(e.String())
	}
	return b.String()
}

func (c *Compiler) useCIDRPeer(cidr policy.CIDR, e *polEntry) *cidrPeerState {
	key := cidrKey(cidr)
	cp, ok := c.cidrPeers[key]
	if !ok {
		cp = &cidrPeerState{key: key, cidr: cidr, ids: map[identity.ID]struct{}{}, users: map[*polEntry]struct{}{}}
		for p, st := range c.cidrs {
			if cidrSelects(cidr, p) {
				cp.ids[st.id] = struct{}{}
			}
		}
		c.cidrPeers[key] = cp
	}
	cp.users[e] = struct{}{}
	return cp
}

// cidrSelects reports whether the CIDR peer selects the identity of prefix p: with
// every rule prefix in the longest-prefix map, an address falls in the peer exactly
// when its longest matching prefix lies inside the block and inside no exception.
func cidrSelects(c policy.CIDR, p ipv4.Prefix) bool {
	if !p.Within(c.Prefix) {
		return false
	}
	for _, e := range c.Except {
		if p.Within(e) {
			return false
		}
	}
	return true
}

func (c *Compiler) usePrefix(p ipv4.Prefix) {
	if st, ok := c.cidrs[p]; ok {
		st.refs++
		return
	}
	id, _, err := c.alloc.AcquireLocal("cidr:" + p.String())
	if err != nil {
		// 2^32-2^24 local identities cannot run out in practice; keep the prefix out
		// of the map (its addresses then fall to the enclosing prefix).
		return
	}
	c.recordIdentity(id, false)
	c.cidrs[p] = &cidrState{id: id, refs: 1}
	c.dirtyPfx[p] = struct{}{}
	for _, cp := range c.cidrPeers {
		if cidrSelects(cp.cidr, p) {
			cp.ids[id] = struct{}{}
			for u := range cp.users {
				c.dirtySubjects(u)
			}
		}
	}
}

func (c *Compiler) dropPrefix(p ipv4.Prefix) {
	st, ok := c.cidrs[p]
	if !ok {
		return
	}
	st.refs--
	if st.refs > 0 {
		return
	}
	delete(c.cidrs, p)
	c.recordIdentity(st.id, true)
	c.alloc.Release(st.id)
	c.dirtyPfx[p] = struct{}{}
	for _, cp := range c.cidrPeers {
		if _, ok := cp.ids[st.id]; ok {
			delete(cp.ids, st.id)
			for u := range cp.users {
				c.dirtySubjects(u)
			}
		}
	}
}

// ---- flush ----

// Emitted returns the IP cache and CIDR prefixes as emitted so far: after the first
// Flush of a restarted agent, what the datapath should hold and nothing more.
func (c *Compiler) Emitted() (ipcache, cidrs map[ipv4.Prefix]identity.ID) {
	ipcache = make(map[ipv4.Prefix]identity.ID, len(c.emitIP))
	for ip, id := range c.emitIP {
		if hp, err := ipv4.HostPrefix(ip); err == nil {
			ipcache[hp] = id
		}
	}
	cidrs = make(map[ipv4.Prefix]identity.ID, len(c.emitPfx))
	for p, id := range c.emitPfx {
		cidrs[p] = id
	}
	return ipcache, cidrs
}

// Invalidate forgets what was emitted, so the next Flush returns the complete state
// (after a failed write left the datapath behind the compiler).
func (c *Compiler) Invalidate() {
	clear(c.emitted)
	clear(c.emittedID)
	clear(c.emitIP)
	clear(c.emitPfx)
	for k, ps := range c.pods {
		if ps.pod.Local {
			c.dirtyPods[k] = struct{}{}
		}
	}
	for ip := range c.ipOwner {
		c.dirtyIPs[ip] = struct{}{}
	}
	for p := range c.cidrs {
		c.dirtyPfx[p] = struct{}{}
	}
	for id := range c.idents {
		c.recordIdentity(id, false)
	}
	for _, st := range c.cidrs {
		c.recordIdentity(st.id, false)
	}
}

// Flush recomputes what changed since the last Flush and returns it.
func (c *Compiler) Flush() Update {
	var up Update
	for id := range c.dirtyIDs {
		delete(c.memo, id)
	}
	affected := map[string]struct{}{}
	for k := range c.dirtyPods {
		affected[k] = struct{}{}
	}
	for id := range c.dirtyIDs {
		for k := range c.localByID[id] {
			affected[k] = struct{}{}
		}
	}
	keys := make([]string, 0, len(affected))
	for k := range affected {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		ps, ok := c.pods[k]
		if !ok || !ps.pod.Local || ps.pod.HostNetwork || !ps.hasI {
			if _, had := c.emitted[k]; had {
				delete(c.emitted, k)
				delete(c.emittedID, k)
				ns, name, _ := strings.Cut(k, "/")
				up.Endpoints = append(up.Endpoints, EndpointUpdate{Namespace: ns, Name: name})
			}
			continue
		}
		pol := c.policyFor(ps)
		if old, had := c.emitted[k]; had && old.Equal(pol) && c.emittedID[k] == ps.id {
			continue
		}
		c.emittedID[k] = ps.id
		c.emitted[k] = pol
		up.Endpoints = append(up.Endpoints, EndpointUpdate{Namespace: ps.pod.Namespace, Name: ps.pod.Name, IP: ps.pod.IP, Identity: ps.id, Policy: pol})
	}
	for ip := range c.dirtyIPs {
		hp, err := ipv4.HostPrefix(ip)
		if err != nil {
			continue // addIPOwner keeps non-IPv4 addresses out
		}
		c.published.peerChanged(ip)
		want, ok := c.resolveIP(ip)
		old, had := c.emitIP[ip]
		switch {
		case ok && (!had || old != want):
			c.emitIP[ip] = want
			up.IPCache = append(up.IPCache, PrefixUpdate{Prefix: hp, Identity: want})
		case !ok && had:
			delete(c.emitIP, ip)
			up.IPCache = append(up.IPCache, PrefixUpdate{Prefix: hp, Identity: old, Delete: true})
		}
	}
	for p := range c.dirtyPfx {
		st, ok := c.cidrs[p]
		old, had := c.emitPfx[p]
		switch {
		case ok && (!had || old != st.id):
			c.emitPfx[p] = st.id
			up.CIDRs = append(up.CIDRs, PrefixUpdate{Prefix: p, Identity: st.id})
		case !ok && had:
			delete(c.emitPfx, p)
			up.CIDRs = append(up.CIDRs, PrefixUpdate{Prefix: p, Identity: old, Delete: true})
		}
	}
	for _, u := range c.identUps {
		up.Identities = append(up.Identities, u)
	}
	sort.Slice(up.Identities, func(i, j int) bool { return up.Identities[i].ID < up.Identities[j].ID })
	clear(c.identUps)
	sortPrefixUpdates(up.IPCache)
	sortPrefixUpdates(up.CIDRs)
	c.publish(keys, up.CIDRs)
	clear(c.dirtyIDs)
	clear(c.dirtyPods)
	clear(c.dirtyIPs)
	clear(c.dirtyPfx)
	return up
}

// resolveIP picks the identity of an address: a node wins over pods (a host-network
// pod shares its node's address), then the pod whose key sorts first (two pods hold
// the same IP only briefly, while one is being deleted).
func (c *Compiler) resolveIP(ip netip.Addr) (identity.ID, bool) {
	owners := c.ipOwner[ip]
	if len(owners) == 0 {
		return 0, false
	}
	best, bestRank := "", 99
	for o, id := range owners {
		r := ownerRank(o, id)
		if r < bestRank || (r == bestRank && o < best) {
			best, bestRank = o, r
		}
	}
	return owners[best], true
}

// ownerRank orders the claims on an address: the local node (always allowed), then
// the API server (a node's address that also serves the API), other nodes, pods.
func ownerRank(owner string, id identity.ID) int {
	switch {
	case strings.HasPrefix(owner, "node/") && id == identity.Host:
		return 0
	case strings.HasPrefix(owner, "apiserver/"):
		return 1
	case strings.HasPrefix(owner, "node/"):
		return 2
	}
	return 3
}

// SetAPIServer records the addresses the kube-apiserver answers on (the endpoints of
// the default/kubernetes Service): they get identity.KubeAPIServer, which the
// kube-apiserver entity selects and, as those are node addresses, remote-node too.
// On the local node the address stays identity.Host (always allowed).
func (c *Compiler) SetAPIServer(ips []netip.Addr) {
	for _, ip := range c.apiServer {
		c.delIPOwner(ip, "apiserver/"+ip.String())
	}
	c.apiServer = slices.Clone(ips)
	for _, ip := range ips {
		c.addIPOwner(ip, "apiserver/"+ip.String(), identity.KubeAPIServer)
	}
}

func sortPrefixUpdates(u []PrefixUpdate) {
	sort.Slice(u, func(i, j int) bool { return u[i].Prefix.Compare(u[j].Prefix) < 0 })
}

func (c *Compiler) policyFor(ps *podState) *EndpointPolicy {
	byID := c.memo[ps.id]
	if p, ok := byID[ps.sig]; ok {
		return p
	}
	p := c.compute(ps)
	if byID == nil {
		byID = map[string]*EndpointPolicy{}
		c.memo[ps.id] = byID
	}
	byID[ps.sig] = p
	return p
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

// ---- failed writes ----

// Retry makes the next Flush emit a local pod's policy again (its last write failed).
func (c *Compiler) Retry(namespace, name string) {
	key := namespace + "/" + name
	delete(c.emitted, key)
	delete(c.emittedID, key)
	c.dirtyPods[key] = struct{}{}
}

// RetryPrefix makes the next Flush emit a CIDR-rule prefix again.
func (c *Compiler) RetryPrefix(p ipv4.Prefix) {
	delete(c.emitPfx, p)
	c.dirtyPfx[p] = struct{}{}
}

// PrefixUsers names the policies whose CIDR peers use prefix p (as block or
// exception) and the local pods those policies select: the endpoints whose policy
// is wrong while p is missing from the datapath.
func (c *Compiler) PrefixUsers(p ipv4.Prefix) (refs []policy.Ref, pods []string) {
	seenRef, seenPod := map[policy.Ref]bool{}, map[string]bool{}
	for _, key := range slices.Sorted(maps.Keys(c.policies)) {
		for _, e := range c.policies[key] {
			if !slices.Contains(e.prefixes, p) {
				continue
			}
			if !seenRef[e.pol.Ref] {
				seenRef[e.pol.Ref] = true
				refs = append(refs, e.pol.Ref)
			}
			for id := range e.subject.ids {
				for k := range c.localByID[id] {
					if !seenPod[k] {
						seenPod[k] = true
						pods = append(pods, k)
					}
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
		if r, ok := c.rules[v.RuleID]; ok {
			out[r.Policy]++
		}
	}
	return out
}
