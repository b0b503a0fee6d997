// Package enforce ties the policy packages to the cluster for the node agent: it
// watches pods, namespaces, nodes, NetworkPolicies, CNPs and CCNPs, compiles them
// (dataplane/compile) and keeps the datapath (dataplane/bpf) in step. It implements
// the agent's EndpointHook (Attach/Detach), so a pod's policy is in its maps before
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
	"log/slog"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/flatnet/flatnet/dataplane/bpf"
	"github.com/flatnet/flatnet/dataplane/compile"
	"github.com/flatnet/flatnet/dataplane/endpointapi"
	"github.com/flatnet/flatnet/dataplane/identity"
	"github.com/flatnet/flatnet/dataplane/ipv4"
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
	// HookMoveQuiet is how long the node must have attached no endpoint before
	// endpoints move from filters to tcx links (0: DefaultHookMoveQuiet). See
	// RunHookMover.
	HookMoveQuiet time.Duration
}

// Enforcer is the policy side of the node agent. Its methods are safe for concurrent
// use; informer handlers and the endpoint API may call them from any goroutine.
type Enforcer struct {
	cfg   Config
	log   *slog.Logger
	d     *bpf.Datapath
	alloc *identity.Allocator

	// wmu orders datapath writes; taken before mu (write.go).
	wmu sync.Mutex
	// kick wakes the writer (Run) for changes the informers made.
	kick chan struct{}

	mu       sync.Mutex
	c        *compile.Compiler
	pending  int              // changes of the state not written yet
	arrivals []time.Time      // when each pending change arrived (write.go)
	attachQ  []*attachRequest // Attach calls waiting (endpoints.go)
	detachQ  []*detachRequest // Detach calls waiting (endpoints.go)
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

	// watching is what Watch registered for Run.
	watching struct {
		synced []cache.InformerSynced // every informer the Enforcer is fed from
		own    []ownFactory           // the factories only the Enforcer uses: Run starts them
	}

	metrics *Metrics

	// wrote, when set (tests), sees each update once it is written, e.mu held.
	wrote func(compile.Update)

	// ifindexes is attached's host interfaces, republished at each change for
	// readers that must not wait for mu (flows.go).
	ifindexes atomic.Pointer[map[string]int]

	// Attaches in flight and when the last began or ended (unix ns), for the hook
	// mover (hooks.go).
	attaching  atomic.Int32
	lastAttach atomic.Int64
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
		kick:     make(chan struct{}, 1),
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

// Metrics are the enforcer's compile and map-sync latency histograms.
func (e *Enforcer) Metrics() *Metrics { return e.metrics }

// Datapath gives access to counters and flow events.
func (e *Enforcer) Datapath() *bpf.Datapath { return e.d }

// Close releases the datapath handles; pinned programs and maps keep enforcing.
func (e *Enforcer) Close() error { return e.d.Close() }
