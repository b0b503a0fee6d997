// Package enforce ties the policy packages to the cluster for the node agent: it
// watches pods, namespaces, nodes, NetworkPolicies, CNPs and CCNPs, compiles them
// (dataplane/compile) and keeps the datapath (dataplane/bpf) in step. It implements
// the agent's endpoint hook (Attach/Detach), so a pod's policy is in its maps before
// the CNI ADD that created it returns.
//
// The ordering rules it encodes: nothing is written to the datapath before the first
// full sync of every watched kind (a restarted agent's pinned datapath keeps
// enforcing the previous state meanwhile, and an endpoint attached from a partial view
// could run with too open a policy); identity numbers are restored from the datapath
// before anything is compiled; an invalid policy object is reported and its last valid
// version stays in force; a write that fails is contained to the endpoint or prefix
// it concerns (that endpoint is isolated, deny-all, and the policy blamed is
// reported), so one object can neither stall the node's other writes nor keep its
// pods from starting. Reports go to a Reporter (Events), RejectedPolicies and the
// flatnet_policies_rejected gauge.
package enforce

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/flatnet/flatnet/dataplane/bpf"
	"github.com/flatnet/flatnet/dataplane/compile"
	"github.com/flatnet/flatnet/dataplane/endpointapi"
	"github.com/flatnet/flatnet/dataplane/identity"
	"github.com/flatnet/flatnet/dataplane/ipv4"
	"github.com/flatnet/flatnet/dataplane/policy"
)

// Config of an Enforcer.
type Config struct {
	NodeName string
	PinDir   string // bpffs directory; bpf.DefaultPinDir when empty
	// ServiceCIDRs are the cluster's Service ranges (ClusterIPs): egress to them is
	// judged on the backend kube-proxy picks.
	ServiceCIDRs []ipv4.Prefix
	// HostRouting routes traffic between two pods of the node through the host
	// stack instead of delivering it directly (bpf.Datapath.SetHostRouting).
	HostRouting bool
	// CT sizes connection tracking (bpf.Options: the shared table of new and
	// closing connections, each pod's table of established ones); CTGCInterval is
	// how often expired established connections are deleted (0:
	// DefaultCTGCInterval). See RunConntrackGC.
	CT           bpf.Options
	CTGCInterval time.Duration
}

// Enforcer is the policy side of the node agent. Its methods are safe for concurrent
// use; informer handlers and the endpoint API may call them from any goroutine.
type Enforcer struct {
	cfg   Config
	log   *slog.Logger
	d     *bpf.Datapath
	alloc *identity.Allocator

	mu       sync.Mutex
	c        *compile.Compiler
	synced   bool
	resync   bool // the last write failed: rewrite everything next time
	syncedCh chan struct{}
	pods     map[string]*corev1.Pod          // ns/name, as last seen from the API
	attached map[string]endpointapi.Endpoint // ns/name -> endpoint on this node
	byCID    map[string]string               // container ID -> ns/name
	rejected map[string]error                // policy key -> why its current version is not applied
	services map[string][]ipv4.Prefix        // ns/name -> addresses kube-proxy DNATs for it
	epFail   map[string]endpointFailure      // ns/name -> why its compiled policy is not in its map
	objects  map[string]ObjectRef            // policy key -> the object version last seen
	reported map[string]string               // policy key -> version+reason already reported
	reporter Reporter
	getPod   func(ctx context.Context, namespace, name string) (*corev1.Pod, error)

	metrics *Metrics

	// ifindexes is attached's host interfaces, republished at each change for
	// readers that must not wait for mu (flows.go).
	ifindexes atomic.Pointer[map[string]int]
}

// New loads (or adopts) the pinned datapath and restores the identity numbers it uses.
// Call Synced once every watched kind has been fed in full (Run does this).
func New(ctx context.Context, cfg Config, log *slog.Logger) (*Enforcer, error) {
	if cfg.NodeName == "" {
		return nil, errors.New("enforce: NodeName is required")
	}
	if cfg.PinDir == "" {
		cfg.PinDir = bpf.DefaultPinDir
	}
	if err := bpf.EnsureBPFFS(filepath.Dir(cfg.PinDir)); err != nil {
		return nil, err
	}
	d, err := bpf.LoadWith(ctx, cfg.PinDir, cfg.CT)
	if err != nil {
		return nil, err
	}
	if u := d.Upgrade(); len(u.Converted)+len(u.Dropped) > 0 || u.Pending > 0 {
		// Pinned maps of another layout (an upgrade): the previous programs enforce
		// each endpoint until it is re-attached.
		log.Info("taking over pinned datapath maps of another layout", "retired", u.Retired,
			"converted", u.Converted, "dropped", u.Dropped, "endpoints_pending", u.Pending)
	}
	if err := d.SetHostRouting(ctx, cfg.HostRouting); err != nil {
		d.Close()
		return nil, err
	}
	stored, err := d.Identities(ctx)
	if err != nil {
		d.Close()
		return nil, err
	}
	alloc := identity.NewAllocator()
	for s, id := range stored {
		alloc.Remember(s, id)
	}
	return &Enforcer{
		cfg: cfg, log: log, d: d, alloc: alloc, c: compile.New(alloc),
		syncedCh: make(chan struct{}),
		pods:     map[string]*corev1.Pod{},
		attached: map[string]endpointapi.Endpoint{},
		byCID:    map[string]string{},
		rejected: map[string]error{},
		services: map[string][]ipv4.Prefix{},
		epFail:   map[string]endpointFailure{},
		objects:  map[string]ObjectRef{},
		reported: map[string]string{},
		metrics:  NewMetrics(),
	}, nil
}

// Metrics are the enforcer's latency histograms and rejected-policy gauge.
type Metrics struct {
	Compile, Sync prometheus.Histogram
	// Rejected counts the policy objects not (fully) in force, by kind and reason.
	Rejected *prometheus.GaugeVec
}

// NewMetrics makes the (unregistered) histograms.
func NewMetrics() *Metrics {
	// 100 µs .. ~3 s: a node's incremental update is well under a millisecond,
	// a full rewrite of a large cluster's state seconds.
	b := prometheus.ExponentialBuckets(0.0001, 2, 16)
	return &Metrics{
		Compile: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "flatnet_policy_compile_duration_seconds",
			Help:    "Time to compute the datapath update for a change (compile.Compiler.Flush).",
			Buckets: b,
		}),
		Sync: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "flatnet_policy_map_sync_duration_seconds",
			Help:    "Time to write a compiled update into the datapath maps (bpf.Datapath.Apply), failed writes included.",
			Buckets: b,
		}),
		Rejected: newRejectedGauge(),
	}
}

// Collectors lists the histograms for a registry.
func (m *Metrics) Collectors() []prometheus.Collector {
	return []prometheus.Collector{m.Compile, m.Sync, m.Rejected}
}

// Metrics are the enforcer's compile and map-sync latency histograms.
func (e *Enforcer) Metrics() *Metrics { return e.metrics }

// Datapath gives access to counters and flow events.
func (e *Enforcer) Datapath() *bpf.Datapath { return e.d }

// Close releases the datapath handles; pinned programs and maps keep enforcing.
func (e *Enforcer) Close() error { return e.d.Close() }

// Synced is called once pods, namespaces, nodes and every policy kind have been fed:
// the Service hook is attached, the whole state is written, and stored identities no
// label set claimed are forgotten. Attach calls wait for it.
func (e *Enforcer) Synced(ctx context.Context) error {
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

// applyLocked writes what changed; before the first sync it only compiles (Synced
// writes everything at once).
func (e *Enforcer) applyLocked(ctx context.Context) error {
	if !e.synced {
		return nil
	}
	return e.flushApply(ctx)
}

// flushApply writes the compiler's changes. A failure is contained to what caused it
// (bpf.Apply writes everything else): an endpoint whose policy cannot be written is
// left isolated (deny-all) and retried, and the policy that made it fail is reported
// rejected for it; an endpoint whose policy names a CIDR prefix that could not be
// written is isolated the same way. Only identity and IP cache failures, which
// every endpoint depends on, are returned; the next attempt rewrites everything.
func (e *Enforcer) flushApply(ctx context.Context) error {
	if e.resync {
		e.c.Invalidate()
	}
	t0 := time.Now()
	up := e.c.Flush()
	t1 := time.Now()
	err := e.d.Apply(ctx, up, e.ifindexOf)
	e.metrics.Compile.Observe(t1.Sub(t0).Seconds())
	e.metrics.Sync.Observe(time.Since(t1).Seconds())
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
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.synced || (!e.resync && len(e.epFail) == 0) {
		return nil
	}
	return e.flushApply(ctx)
}

func (e *Enforcer) ifindexOf(ns, name string) (int, bool) {
	ep, ok := e.attached[ns+"/"+name]
	return ep.HostIfIndex, ok
}

// Attach implements the agent's endpoint hook: compile the pod's policy, write it, then
// attach the programs to its host veth. It waits for the first sync, so a pod never
// starts with a policy computed from a partial view.
func (e *Enforcer) Attach(ctx context.Context, ep endpointapi.Endpoint) error {
	if err := e.waitSynced(ctx); err != nil {
		return err
	}
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

// Detach implements the agent's endpoint hook for CNI DEL.
func (e *Enforcer) Detach(ctx context.Context, ep endpointapi.Endpoint) error {
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
	return e.applyLocked(ctx)
}

// UpsertPod feeds a pod of any node.
func (e *Enforcer) UpsertPod(ctx context.Context, p *corev1.Pod) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	key := p.Namespace + "/" + p.Name
	e.pods[key] = p
	cp := e.remotePod(p)
	if ep, ok := e.attached[key]; ok {
		cp.Local, cp.IP, cp.HostNetwork = true, ep.IP, false
	}
	if err := e.c.UpsertPod(cp); err != nil {
		return err
	}
	return e.applyLocked(ctx)
}

// DeletePod forgets a pod. A still attached endpoint keeps its policy until Detach.
func (e *Enforcer) DeletePod(ctx context.Context, namespace, name string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	key := namespace + "/" + name
	delete(e.pods, key)
	if _, ok := e.attached[key]; ok {
		return nil
	}
	e.c.DeletePod(namespace, name)
	return e.applyLocked(ctx)
}

// UpsertNamespace feeds a namespace.
func (e *Enforcer) UpsertNamespace(ctx context.Context, ns *corev1.Namespace) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.c.UpsertNamespace(compile.NamespaceFromCore(ns)); err != nil {
		return err
	}
	return e.applyLocked(ctx)
}

// DeleteNamespace forgets a namespace's labels.
func (e *Enforcer) DeleteNamespace(ctx context.Context, name string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.c.DeleteNamespace(name); err != nil {
		return err
	}
	return e.applyLocked(ctx)
}

// UpsertNode feeds a node's InternalIP/ExternalIP addresses.
func (e *Enforcer) UpsertNode(ctx context.Context, n *corev1.Node) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	var ips []netip.Addr
	for _, a := range n.Status.Addresses {
		if a.Type != corev1.NodeInternalIP && a.Type != corev1.NodeExternalIP {
			continue
		}
		if ip, err := netip.ParseAddr(a.Address); err == nil && ip.Is4() {
			ips = append(ips, ip)
		}
	}
	e.c.UpsertNode(n.Name, ips, n.Name == e.cfg.NodeName)
	return e.applyLocked(ctx)
}

// SetAPIServer records the kube-apiserver's addresses (endpoints of default/kubernetes).
func (e *Enforcer) SetAPIServer(ctx context.Context, ips []netip.Addr) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.c.SetAPIServer(ips)
	return e.applyLocked(ctx)
}

// UpsertService records the addresses kube-proxy DNATs for a Service on every node:
// its ClusterIPs, externalIPs and LoadBalancer IPs. Egress to them is judged on the
// backend. (Every DNATed connection is judged on its backend anyway, see
// dataplane/POLICY.md; marking the address also spares it the judgment as world
// before the DNAT, so a pod allowed to the backend but not to world gets through.)
func (e *Enforcer) UpsertService(ctx context.Context, s *corev1.Service) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.services[s.Namespace+"/"+s.Name] = serviceAddrs(s)
	return e.writeServicesLocked(ctx)
}

// DeleteService forgets a Service's addresses.
func (e *Enforcer) DeleteService(ctx context.Context, namespace, name string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.services, namespace+"/"+name)
	return e.writeServicesLocked(ctx)
}

func (e *Enforcer) writeServicesLocked(ctx context.Context) error {
	if !e.synced {
		return nil // Synced writes them
	}
	return e.d.SetServices(ctx, e.servicePrefixesLocked())
}

// servicePrefixesLocked is every Service address: the configured ranges and each
// Service's own addresses.
func (e *Enforcer) servicePrefixesLocked() []ipv4.Prefix {
	out := append([]ipv4.Prefix(nil), e.cfg.ServiceCIDRs...)
	for _, addrs := range e.services {
		out = append(out, addrs...)
	}
	return out
}

// serviceAddrs lists the IPv4 addresses kube-proxy DNATs for s.
func serviceAddrs(s *corev1.Service) []ipv4.Prefix {
	var out []ipv4.Prefix
	add := func(a string) {
		if ip, err := netip.ParseAddr(a); err == nil {
			if p, err := ipv4.HostPrefix(ip); err == nil {
				out = append(out, p)
			}
		}
	}
	add(s.Spec.ClusterIP) // "None" (headless) and "" parse as nothing
	for _, a := range s.Spec.ClusterIPs {
		add(a)
	}
	for _, a := range s.Spec.ExternalIPs {
		add(a)
	}
	for _, in := range s.Status.LoadBalancer.Ingress {
		add(in.IP)
	}
	return out
}

// DeleteNode forgets a node.
func (e *Enforcer) DeleteNode(ctx context.Context, name string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.c.DeleteNode(name)
	return e.applyLocked(ctx)
}

// UpsertNetworkPolicy feeds a NetworkPolicy. An invalid one is returned as a
// *policy.Error (and kept in Rejected); its last valid version stays in force.
func (e *Enforcer) UpsertNetworkPolicy(ctx context.Context, np *networkingv1.NetworkPolicy) error {
	ref := policy.Ref{Kind: policy.KindNetworkPolicy, Namespace: np.Namespace, Name: np.Name}
	obj := ObjectRef{Ref: ref, APIVersion: "networking.k8s.io/v1", UID: string(np.UID), ResourceVersion: np.ResourceVersion}
	p, err := policy.FromNetworkPolicy(np)
	if err != nil {
		return e.reject(obj, err)
	}
	return e.upsertPolicy(ctx, obj, []*policy.Policy{p})
}

// UpsertCiliumPolicy feeds a CNP or CCNP as the dynamic informer delivers it.
func (e *Enforcer) UpsertCiliumPolicy(ctx context.Context, u *unstructured.Unstructured) error {
	ref := policy.Ref{Kind: policy.KindCNP, Namespace: u.GetNamespace(), Name: u.GetName()}
	if u.GetKind() == string(policy.KindCCNP) {
		ref = policy.Ref{Kind: policy.KindCCNP, Name: u.GetName()}
	}
	obj := ObjectRef{Ref: ref, APIVersion: u.GetAPIVersion(), UID: string(u.GetUID()), ResourceVersion: u.GetResourceVersion()}
	c, err := policy.CiliumFromUnstructured(u)
	if err != nil {
		return e.reject(obj, err)
	}
	pols, err := policy.FromCilium(c)
	if err != nil {
		return e.reject(obj, err)
	}
	return e.upsertPolicy(ctx, obj, pols)
}

// DeletePolicy removes a policy object of any kind.
func (e *Enforcer) DeletePolicy(ctx context.Context, ref policy.Ref) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	key := compile.PolicyKey(ref)
	delete(e.rejected, key)
	delete(e.objects, key)
	delete(e.reported, key)
	e.c.DeletePolicy(key)
	return e.applyLocked(ctx)
}

func (e *Enforcer) upsertPolicy(ctx context.Context, obj ObjectRef, pols []*policy.Policy) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	key := compile.PolicyKey(obj.Ref)
	delete(e.rejected, key)
	e.objects[key] = obj
	if err := e.c.UpsertPolicy(key, pols); err != nil {
		return err
	}
	return e.applyLocked(ctx)
}

func (e *Enforcer) reject(obj ObjectRef, err error) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	key := compile.PolicyKey(obj.Ref)
	e.rejected[key] = err
	e.objects[key] = obj
	e.log.Warn("policy rejected; its previous valid version (if any) stays in force", "policy", obj.Ref.String(), "error", err)
	e.reportAll()
	return err
}

// Rejected lists the policy objects whose current version is not applied, and why.
func (e *Enforcer) Rejected() []error {
	e.mu.Lock()
	defer e.mu.Unlock()
	keys := make([]string, 0, len(e.rejected))
	for k := range e.rejected {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]error, len(keys))
	for i, k := range keys {
		out[i] = e.rejected[k]
	}
	return out
}
