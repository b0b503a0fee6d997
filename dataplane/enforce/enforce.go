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
// version stays in force.
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
	"time"

	"github.com/prometheus/client_golang/prometheus"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/flatnet/flatnet/dataplane/bpf"
	"github.com/flatnet/flatnet/dataplane/compile"
	"github.com/flatnet/flatnet/dataplane/endpointapi"
	"github.com/flatnet/flatnet/dataplane/identity"
	"github.com/flatnet/flatnet/dataplane/policy"
)

// Config of an Enforcer.
type Config struct {
	NodeName string
	PinDir   string // bpffs directory; bpf.DefaultPinDir when empty
	// ServiceCIDRs are the cluster's Service ranges (ClusterIPs): egress to them is
	// judged on the backend kube-proxy picks.
	ServiceCIDRs []netip.Prefix
	// HostRouting routes traffic between two pods of the node through the host
	// stack instead of delivering it directly (bpf.Datapath.SetHostRouting).
	HostRouting bool
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
	getPod   func(ctx context.Context, namespace, name string) (*corev1.Pod, error)

	metrics *Metrics
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
	d, err := bpf.Load(ctx, cfg.PinDir)
	if err != nil {
		return nil, err
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
		metrics:  NewMetrics(),
	}, nil
}

// Metrics are the enforcer's latency histograms.
type Metrics struct {
	Compile, Sync prometheus.Histogram
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
	}
}

// Collectors lists the histograms for a registry.
func (m *Metrics) Collectors() []prometheus.Collector {
	return []prometheus.Collector{m.Compile, m.Sync}
}

// Metrics are the enforcer's compile and map-sync latency histograms.
func (e *Enforcer) Metrics() *Metrics { return e.metrics }

// LocalPods names the attached endpoints: "namespace/name" by host ifindex.
func (e *Enforcer) LocalPods() map[int]string {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make(map[int]string, len(e.attached))
	for key, ep := range e.attached {
		out[ep.HostIfIndex] = key
	}
	return out
}

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
	for _, p := range e.cfg.ServiceCIDRs {
		if err := e.d.UpsertPrefix(ctx, p, identity.World, true); err != nil {
			return err
		}
	}
	if err := e.flushApply(ctx); err != nil {
		return err
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
// (pods and CIDR rules deleted while no agent ran, Service ranges no longer configured).
func (e *Enforcer) pruneLocked(ctx context.Context) error {
	wantIP, wantCIDR := e.c.Emitted()
	services := map[netip.Prefix]bool{}
	for _, p := range e.cfg.ServiceCIDRs {
		services[p.Masked()] = true
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

// flushApply writes the compiler's changes. After a failed write the datapath may be
// behind the compiler, so the next attempt rewrites the complete state.
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
	e.resync = err != nil
	return err
}

// retry rewrites the complete state if the last write failed.
func (e *Enforcer) retry(ctx context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.synced || !e.resync {
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
		return fmt.Errorf("attaching %s: %w", key, err)
	}
	id, _ := e.c.IdentityOf(ep.PodNamespace, ep.PodName)
	pol := e.c.EndpointPolicy(ep.PodNamespace, ep.PodName)
	if pol == nil {
		return fmt.Errorf("attaching %s: no policy compiled", key)
	}
	// A missing or malformed MAC only costs direct delivery's fast way in.
	mac, _ := net.ParseMAC(ep.MAC)
	if err := e.d.AttachEndpoint(ctx, bpf.Endpoint{IfIndex: ep.HostIfIndex, IP: ep.IP, Identity: id, MAC: mac}, pol); err != nil {
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
	p, err := policy.FromNetworkPolicy(np)
	if err != nil {
		return e.reject(ref, err)
	}
	return e.upsertPolicy(ctx, ref, []*policy.Policy{p})
}

// UpsertCiliumPolicy feeds a CNP or CCNP as the dynamic informer delivers it.
func (e *Enforcer) UpsertCiliumPolicy(ctx context.Context, u *unstructured.Unstructured) error {
	ref := policy.Ref{Kind: policy.KindCNP, Namespace: u.GetNamespace(), Name: u.GetName()}
	if u.GetKind() == string(policy.KindCCNP) {
		ref = policy.Ref{Kind: policy.KindCCNP, Name: u.GetName()}
	}
	c, err := policy.CiliumFromUnstructured(u)
	if err != nil {
		return e.reject(ref, err)
	}
	pols, err := policy.FromCilium(c)
	if err != nil {
		return e.reject(ref, err)
	}
	return e.upsertPolicy(ctx, ref, pols)
}

// DeletePolicy removes a policy object of any kind.
func (e *Enforcer) DeletePolicy(ctx context.Context, ref policy.Ref) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	key := compile.PolicyKey(ref)
	delete(e.rejected, key)
	e.c.DeletePolicy(key)
	return e.applyLocked(ctx)
}

func (e *Enforcer) upsertPolicy(ctx context.Context, ref policy.Ref, pols []*policy.Policy) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	key := compile.PolicyKey(ref)
	delete(e.rejected, key)
	if err := e.c.UpsertPolicy(key, pols); err != nil {
		return err
	}
	return e.applyLocked(ctx)
}

func (e *Enforcer) reject(ref policy.Ref, err error) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.rejected[compile.PolicyKey(ref)] = err
	e.log.Warn("policy rejected; its previous valid version (if any) stays in force", "policy", ref.String(), "error", err)
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

// Explain decides a new connection for a local pod as the datapath would.
func (e *Enforcer) Explain(namespace, name string, dir policy.Direction, remote netip.Addr, proto policy.Protocol, port uint16) (compile.Decision, compile.RuleInfo, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	d, err := e.c.Explain(namespace, name, dir, remote, proto, port)
	if err != nil {
		return d, compile.RuleInfo{}, err
	}
	ri, _ := e.c.Rule(d.RuleID)
	return d, ri, nil
}

// LookupMaps reads what the datapath's maps hold for a new connection of a local
// pod (bpf.Datapath.Lookup), with the rule its entry names.
func (e *Enforcer) LookupMaps(namespace, name string, dir policy.Direction, remote netip.Addr, proto policy.Protocol, port uint16) (bpf.MapDecision, compile.RuleInfo, error) {
	e.mu.Lock()
	ifindex, ok := e.ifindexOf(namespace, name)
	e.mu.Unlock()
	if !ok {
		return bpf.MapDecision{}, compile.RuleInfo{}, fmt.Errorf("%s/%s has no interface attached on this node", namespace, name)
	}
	md, err := e.d.Lookup(context.Background(), ifindex, dir, remote, proto, port)
	if err != nil {
		return md, compile.RuleInfo{}, err
	}
	ri, _ := e.RuleName(md.RuleID)
	return md, ri, nil
}

// RuleName names the rule of a flow event.
func (e *Enforcer) RuleName(id compile.RuleID) (compile.RuleInfo, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.c.Rule(id)
}
