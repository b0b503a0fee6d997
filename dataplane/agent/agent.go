// Package agent is the flatnet node agent: it owns the node's block of the
// node subnet (an IPBlock object), installs the CNI plugin and its conflist,
// answers the plugin's endpoint API (handing endpoints to the EndpointHook),
// reconciles leaked addresses against the pods that really exist, reports
// the block's use in the IPBlock's status, and serves health and metrics.
//
// Run is the whole process the flatnet-agent command starts: the Agent and, with
// policy on, the enforcer (dataplane/enforce) as its EndpointHook with its flows
// (dataplane/flows), API and metrics, all fed by one informer factory.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/flatnet/flatnet/dataplane/cniconf"
	"github.com/flatnet/flatnet/dataplane/endpointapi"
	"github.com/flatnet/flatnet/dataplane/ipam"
	"github.com/flatnet/flatnet/dataplane/ipam/cluster"
	"github.com/flatnet/flatnet/dataplane/ipam/nodealloc"
	"github.com/flatnet/flatnet/dataplane/podnet"
)

// Config is everything the agent is told.
type Config struct {
	NodeName string
	// Subnet, Gateway and DockerRange describe the node subnet (ipam.Layout
	// without the block size).
	Subnet      netip.Prefix
	Gateway     netip.Addr
	DockerRange netip.Prefix
	// Reserved are ranges of the subnet never handed to a pod (ipam.Layout).
	Reserved []netip.Prefix
	// BlockSize forces the block size; 0 takes the Node's capacity.pods.
	BlockSize int
	// Uplink is the node's interface on the subnet; "" finds the one holding
	// the Node's InternalIP.
	Uplink string
	MTU    int
	// PluginSrcDir holds the plugin binaries in the agent image; CNIBinDir and
	// CNIConfDir are the node's (mounted) CNI directories.
	PluginSrcDir, CNIBinDir, CNIConfDir string
	// StateDir is /var/lib/flatnet: ipam/ for the allocator, endpoints/ for records.
	StateDir string
	// Socket is the endpoint API's unix socket.
	Socket string
	// HTTPAddr serves /healthz, /readyz and /metrics and nothing else: the agent
	// is host-network, so every pod of the node reaches it there.
	HTTPAddr string
	// APIAddr serves API. It must be a loopback address: no pod reaches it, and
	// clients come through the API server's pods/portforward (kubelet to the
	// host's loopback), so RBAC on pods/portforward decides who reads flows.
	APIAddr string
	// Reconcile is the period of the leak reconciler and status reporter;
	// LeakGrace how long an address must be unexplained before it is freed.
	Reconcile, LeakGrace time.Duration
	// Hook receives the node's endpoints; nil means NoPolicy.
	Hook EndpointHook
	// PoolSize is how many host interface indexes the warm pool keeps ready for
	// pods (0: none); the pool needs Preparer (the policy datapath) to prepare them.
	PoolSize int
	Preparer IndexPreparer
	// API, when set, is served on APIAddr (flows and explain).
	API http.Handler
}

// Agent runs on one node.
type Agent struct {
	cfg       Config
	log       *slog.Logger
	kube      kubernetes.Interface
	blocks    *cluster.Client
	metrics   *Metrics
	endpoints *Endpoints

	ready  atomic.Bool
	uplink string
	block  cluster.IPBlock
	nodes  corelisters.NodeLister
	pods   cache.Indexer          // every pod the informer holds, indexed by node (localPods)
	synced []cache.InformerSynced // the pod and node informers'
	kick   chan struct{}
	leaks  LeakFinder
	pool   *Pool // nil: none
	lastSt *cluster.IPBlockStatus
	warned string
}

// New checks cfg, loads the endpoint records and registers the agent's pod and node
// informers in factory, which the caller starts (once every user registered) before Run.
func New(cfg Config, log *slog.Logger, kube kubernetes.Interface, dyn dynamic.Interface, factory informers.SharedInformerFactory) (*Agent, error) {
	if cfg.NodeName == "" {
		return nil, errors.New("node name: missing; pass --node-name or set NODE_NAME (the DaemonSet sets it from spec.nodeName)")
	}
	l := ipam.Layout{Subnet: cfg.Subnet, Gateway: cfg.Gateway, DockerRange: cfg.DockerRange, Reserved: cfg.Reserved, BlockSize: ipam.DefaultBlockSize}
	if err := l.Validate(); err != nil {
		return nil, fmt.Errorf("node subnet: %w", err)
	}
	if err := checkLoopback(cfg.APIAddr); err != nil {
		return nil, err
	}
	if cfg.PoolSize < 0 {
		return nil, fmt.Errorf("pool size %d: must be 0 (no warm pool) or more; pass --pool-size", cfg.PoolSize)
	}
	if cfg.Reconcile <= 0 {
		cfg.Reconcile = 30 * time.Second
	}
	if cfg.LeakGrace <= 0 {
		cfg.LeakGrace = 2 * time.Minute
	}
	m := NewMetrics()
	eps, err := NewEndpoints(filepath.Join(cfg.StateDir, "endpoints"), cfg.Hook, m)
	if err != nil {
		return nil, err
	}
	a := &Agent{
		cfg: cfg, log: log, kube: kube, blocks: cluster.New(dyn), metrics: m, endpoints: eps,
		kick: make(chan struct{}, 1), leaks: LeakFinder{Grace: cfg.LeakGrace},
	}
	eps.OnChange = a.poke
	if cfg.PoolSize > 0 && cfg.Preparer != nil {
		a.pool = NewPool(podnet.PoolDir(a.allocDir()), cfg.PoolSize, cfg.Preparer, log, m)
		eps.pool = a.pool
	}
	if err := a.watch(factory); err != nil {
		return nil, err
	}
	return a, nil
}

// Metrics exposes the agent's metrics (the datapath registers its own there).
func (a *Agent) Metrics() *Metrics { return a.metrics }

func (a *Agent) allocDir() string { return filepath.Join(a.cfg.StateDir, "ipam") }

// Run serves until ctx ends, once the informer factory given to New is started.
// The order matters: the endpoint socket first, the conflist last, because the
// runtime starts sending ADDs the moment the conflist appears.
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 2)
	stopSock, err := a.serveSocket(errc)
	if err != nil {
		return err
	}
	defer stopSock()
	stopHTTP, err := a.serveHTTP(errc)
	if err != nil {
		return err
	}
	defer stopHTTP()
	stopAPI, err := a.serveAPI(errc)
	if err != nil {
		return err
	}
	defer stopAPI()

	if !cache.WaitForCacheSync(ctx.Done(), a.synced...) {
		return fmt.Errorf("sync pod and node informers: %w", ctx.Err())
	}

	if err := a.setup(ctx); err != nil {
		return err
	}
	a.ready.Store(true)
	if a.pool != nil {
		poolDone := make(chan struct{})
		go func() {
			defer close(poolDone)
			if err := a.pool.Run(ctx); err != nil {
				a.log.Error("warm pool stopped: pods are attached the slow way", "err", err)
			}
		}()
		// Emptied before Run returns, while the datapath is still open.
		defer func() { cancel(); <-poolDone }()
	}
	a.log.Info("node network ready", "node", a.cfg.NodeName, "block", a.block.Name, "first", a.block.Spec.First, "size", a.block.Spec.Size, "uplink", a.uplink)

	t := time.NewTicker(a.cfg.Reconcile)
	defer t.Stop()
	for {
		a.reconcile(ctx)
		select {
		case <-ctx.Done():
			return nil
		case err := <-errc:
			return err
		case <-t.C:
		case <-a.kick:
			// Coalesce a burst of pod changes into one pass.
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(a.cfg.Reconcile / 10):
			}
		}
	}
}

// poke asks for a reconcile soon (a pod went away, an endpoint came or went).
func (a *Agent) poke() {
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

// setup claims the block and installs the plugin, retrying what depends on
// the cluster (the Node may not be registered yet).
func (a *Agent) setup(ctx context.Context) error {
	node, err := a.waitNode(ctx)
	if err != nil {
		return err
	}
	capacity := node.Status.Capacity.Pods().Value()
	size, _, err := BlockSizeFor(a.cfg.BlockSize, capacity)
	if err != nil {
		return err
	}
	var nodeIPs []netip.Addr
	all, err := a.nodes.List(labels.Everything())
	if err != nil {
		return fmt.Errorf("list nodes: %w", err)
	}
	for _, n := range all {
		if ip, ok := nodeInternalIP(n); ok {
			nodeIPs = append(nodeIPs, ip)
		}
	}
	layout := ipam.Layout{Subnet: a.cfg.Subnet, Gateway: a.cfg.Gateway, DockerRange: a.cfg.DockerRange, Reserved: a.cfg.Reserved, BlockSize: size}
	for {
		blk, created, err := a.blocks.EnsureNodeBlock(ctx, layout, a.cfg.NodeName, nodeIPs)
		if err == nil {
			a.block = blk
			a.log.Info("node block", "name", blk.Name, "first", blk.Spec.First, "size", blk.Spec.Size, "claimed", created)
			break
		}
		if errors.Is(err, ipam.ErrExhausted) {
			return err
		}
		a.log.Error("claim node block; retrying", "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Second):
		}
	}
	if a.block.Spec.Size != size {
		a.log.Warn("node keeps the block it already owns, of another size", "owned", a.block.Spec.Size, "wanted", size,
			"fix", "drain the node and delete its IPBlock to get a block of the new size")
	}
	a.checkMaxPods(ctx, node)

	nodeIP, _ := nodeInternalIP(node)
	if a.uplink, err = podnet.UplinkName(a.cfg.Uplink, nodeIP); err != nil {
		return err
	}
	if err := podnet.EnsureHostForwarding(a.uplink); err != nil {
		return err
	}
	if nodeIP.IsValid() {
		// A restarted node may have come back with another MAC (Docker gives a
		// kind node a new one): the other nodes learn it for the node and its pods.
		if err := podnet.AnnounceNode(a.uplink, nodeIP); err != nil {
			a.log.Warn("gratuitous ARP for the node and its pods", "err", err)
		}
	}
	// The pods' addresses are announced here, from one socket, once their
	// endpoints are registered (the plugin announcing from a socket of its own
	// waited for a grace period on every ADD).
	if announce, err := startAnnouncer(ctx, a.uplink, a.log); err != nil {
		a.log.Warn("no gratuitous ARP for new pods", "err", err)
	} else {
		a.endpoints.SetAnnounce(announce)
	}
	if err := a.endpoints.Resync(ctx, linkExists); err != nil {
		a.log.Warn("re-attach endpoints after restart", "err", err)
	}
	conf, err := cniconf.Conflist(cniconf.NetConf{
		NodeName: a.cfg.NodeName, Uplink: a.uplink,
		Subnet: a.cfg.Subnet.String(), Gateway: addrString(a.cfg.Gateway), DockerRange: prefixString(a.cfg.DockerRange),
		Block: cniconf.BlockConf{First: a.block.Spec.First, Size: a.block.Spec.Size}, MTU: a.cfg.MTU,
		DataDir: a.allocDir(), AgentSocket: a.cfg.Socket,
	})
	if err != nil {
		return fmt.Errorf("render conflist for block %s: %w", a.block.Name, err)
	}
	if err := InstallPlugins(a.cfg.PluginSrcDir, a.cfg.CNIBinDir); err != nil {
		return err
	}
	if _, err := InstallConflist(a.cfg.CNIConfDir, conf); err != nil {
		return err
	}
	return nil
}

// waitNode waits for the kubelet to register this node and report its
// pod capacity and address.
func (a *Agent) waitNode(ctx context.Context) (*corev1.Node, error) {
	for {
		n, err := a.nodes.Get(a.cfg.NodeName)
		if err != nil && !apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("get node %s: %w", a.cfg.NodeName, err)
		}
		// The block size comes from capacity.pods and the uplink from the
		// InternalIP: both are set by the kubelet, shortly after registering.
		if err == nil && n.Status.Capacity.Pods().Value() > 0 {
			if _, ok := nodeInternalIP(n); ok || a.cfg.Uplink != "" {
				return n, nil
			}
		}
		a.log.Info("waiting for the node to register with its capacity and InternalIP", "node", a.cfg.NodeName)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(2 * time.Second):
		}
	}
}

// checkMaxPods compares the kubelet's maxPods with the block and reports a
// disagreement once per distinct message (log, metric, Node event).
func (a *Agent) checkMaxPods(ctx context.Context, node *corev1.Node) {
	capacity := node.Status.Capacity.Pods().Value()
	a.metrics.maxPods.Set(float64(capacity))
	a.metrics.blockSize.Set(float64(a.block.Spec.Size))
	msg := maxPodsMismatch(a.block.Spec.Size, capacity)
	if msg == "" {
		a.metrics.mismatch.Set(0)
		a.warned = ""
		return
	}
	a.metrics.mismatch.Set(1)
	if msg == a.warned {
		return
	}
	a.warned = msg
	typ, reason := corev1.EventTypeWarning, "MaxPodsExceedsBlock"
	if capacity < int64(a.block.Spec.Size) {
		typ, reason = corev1.EventTypeNormal, "MaxPodsBelowBlock"
	}
	a.log.Warn("maxPods and block size disagree", "node", a.cfg.NodeName, "detail", msg)
	a.event(ctx, node, typ, reason, msg)
}

// event records an Event on the Node (best effort).
func (a *Agent) event(ctx context.Context, node *corev1.Node, typ, reason, msg string) {
	now := metav1.Now()
	ev := &corev1.Event{
		ObjectMeta: metav1.ObjectMeta{GenerateName: node.Name + ".flatnet-", Namespace: metav1.NamespaceDefault},
		InvolvedObject: corev1.ObjectReference{
			Kind: "Node", Name: node.Name, UID: node.UID, APIVersion: "v1",
		},
		Reason: reason, Message: msg, Type: typ,
		Source:         corev1.EventSource{Component: "flatnet-agent", Host: node.Name},
		FirstTimestamp: now, LastTimestamp: now, Count: 1,
	}
	if _, err := a.kube.CoreV1().Events(metav1.NamespaceDefault).Create(ctx, ev, metav1.CreateOptions{}); err != nil {
		a.log.Warn("record node event", "reason", reason, "err", err)
	}
}

// reconcile frees leaks and publishes the block's status.
func (a *Agent) reconcile(ctx context.Context) {
	if node, err := a.nodes.Get(a.cfg.NodeName); err == nil {
		a.checkMaxPods(ctx, node)
	}
	store := nodealloc.New(a.allocDir())
	eps := a.endpoints.List() // before the allocations: see Collect
	allocs, err := store.List(ctx)
	if err != nil {
		a.log.Error("list allocations", "err", err)
		return
	}
	gone, err := a.endpoints.Collect(ctx, eps, allocs, linkExists)
	if err != nil {
		a.log.Error("collect endpoints without an address", "err", err)
	}
	for _, id := range gone {
		a.log.Info("collected an endpoint whose address was released without its DEL reaching the agent", "containerID", id)
	}
	pods, err := a.localPods()
	if err != nil {
		a.log.Error("list pods", "err", err)
		return
	}
	if leaked := a.leaks.Find(time.Now(), allocs, pods, a.endpoints.Get); len(leaked) > 0 {
		if err := a.releaseLeaks(ctx, leaked); err != nil {
			a.log.Error("release leaked addresses", "err", err)
		}
		if allocs, err = store.List(ctx); err != nil {
			a.log.Error("list allocations", "err", err)
			return
		}
	}
	a.metrics.blockUsed.Set(float64(len(allocs)))
	var maxPods int64
	if node, err := a.nodes.Get(a.cfg.NodeName); err == nil {
		maxPods = node.Status.Capacity.Pods().Value()
	}
	st := a.blockStatus(allocs, maxPods)
	if a.lastSt != nil && sameStatus(*a.lastSt, st) {
		return
	}
	if err := a.blocks.UpdateStatus(ctx, a.block.Name, st); err != nil {
		a.log.Error("update block status", "block", a.block.Name, "err", err)
		return
	}
	a.lastSt = &st
}

// linkExists reports whether the agent's network namespace has the interface.
func linkExists(name string) bool {
	_, err := netlink.LinkByName(name)
	return err == nil
}

func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

func prefixString(p netip.Prefix) string {
	if !p.IsValid() {
		return ""
	}
	return p.String()
}

var _ endpointapi.Handler = (*Endpoints)(nil)
