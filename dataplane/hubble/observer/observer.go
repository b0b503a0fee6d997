// Package observer serves Hubble's Observer gRPC service (observer.Observer of
// github.com/cilium/cilium/api/v1/observer) over the agent's flow history, as the
// Cilium agent's local observer does, so that hubble-relay and the hubble CLI read
// flatnet's flows unchanged: GetFlows with Hubble's request semantics, filters and
// field masks, ServerStatus, GetNodes and GetNamespaces.
//
// GetFlows reads flows.Store by sequence number, never through a subscription
// the agent feeds: adding a flow costs the agent the same with any number of
// clients, and a client that reads slower than flows arrive is lapped by the
// store's ring and told how many flows it missed (LostEvent from
// HUBBLE_RING_BUFFER), exactly as Hubble's ring reader does. A client that stops
// reading altogether is disconnected after Config.StallTimeout.
//
// The gRPC server, its listeners and TLS are package server's; this package is
// the service only (observertest serves it for tests).
package observer

import (
	"context"
	"log/slog"
	"sync"
	"time"

	observerpb "github.com/cilium/cilium/api/v1/observer"
	relaypb "github.com/cilium/cilium/api/v1/relay"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flatnet/flatnet/dataplane/flows"
)

// Config is what the service reports about its node and how it bounds clients.
// Zero fields take the defaults below.
type Config struct {
	// NodeName is this agent's node, reported in lost events and GetNodes
	// (flows carry their own).
	NodeName string
	// Version is ServerStatus's and GetNodes' version string. Hubble's reads
	// "cilium v1.19.4+g<commit>"; flatnet's should name flatnet the same way.
	Version string
	// Address is where this node's Observer is served (host:port), for GetNodes;
	// empty when unknown.
	Address string
	// TLSServerName, when the service is served over TLS, is the name its
	// certificate carries (GetNodes reports TLS enabled with it).
	TLSServerName string
	// MaxFollowers bounds the GetFlows streams that follow at once; beyond it a
	// follow request gets ResourceExhausted. Each holds a goroutine pair and a
	// read buffer.
	MaxFollowers int
	// StallTimeout disconnects a client that accepts no response for this long
	// while responses wait for it: it then holds no agent resources. What it does
	// not read meanwhile is lost to it, never queued.
	StallTimeout time.Duration
	// LostEventSendInterval is how often at most a stream reports the flows it
	// missed (one LostEvent summing them), Hubble's
	// --hubble-lost-event-send-interval.
	LostEventSendInterval time.Duration
	// Log receives what the service cannot tell its clients; nil discards it.
	Log *slog.Logger
}

// Defaults of Config.
const (
	DefaultMaxFollowers          = 64
	DefaultStallTimeout          = 10 * time.Second
	DefaultLostEventSendInterval = time.Second // Hubble's default
)

func (c Config) withDefaults() Config {
	if c.MaxFollowers <= 0 {
		c.MaxFollowers = DefaultMaxFollowers
	}
	if c.StallTimeout <= 0 {
		c.StallTimeout = DefaultStallTimeout
	}
	if c.LostEventSendInterval <= 0 {
		c.LostEventSendInterval = DefaultLostEventSendInterval
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	return c
}

// Observer implements observerpb.ObserverServer over a flows.Store. Register
// Observe with flows.Run so GetNamespaces knows every namespace flows name.
type Observer struct {
	store      *flows.Store
	cfg        Config
	started    time.Time
	namespaces *namespaces
	// followers is a semaphore: a slot is taken without waiting or refused.
	followers chan struct{}
	// senders counts the goroutines GetFlows starts to send responses: a
	// handler that gives up on a stalled client returns before its sender does.
	senders sync.WaitGroup
}

var _ observerpb.ObserverServer = (*Observer)(nil)

// New serves store's flows; uptime counts from now.
func New(store *flows.Store, cfg Config) *Observer {
	cfg = cfg.withDefaults()
	return &Observer{
		store:      store,
		cfg:        cfg,
		started:    time.Now(),
		namespaces: newNamespaces(),
		followers:  make(chan struct{}, cfg.MaxFollowers),
	}
}

// Observe records the namespaces r's flow names, for GetNamespaces. It is a
// flows.Run observer and, like every observer there, is called from one
// goroutine: a namespace already known costs a map lookup, with no lock, and
// the flow is never converted.
func (o *Observer) Observe(r *flows.Response) {
	o.observeEndpoint(r.Flow.Source, r.Time)
	o.observeEndpoint(r.Flow.Destination, r.Time)
}

func (o *Observer) observeEndpoint(ep *flows.Endpoint, at time.Time) {
	if ep != nil && ep.Namespace != "" {
		o.namespaces.observe(ep.ClusterName, ep.Namespace, at)
	}
}

// ServerStatus reports the store's fill, the flows seen since the agent started
// and the rate of the last minute, as Hubble's local observer does (the relay
// sets the node counts; an agent leaves them unset).
func (o *Observer) ServerStatus(ctx context.Context, _ *observerpb.ServerStatusRequest) (*observerpb.ServerStatusResponse, error) {
	now := time.Now()
	n, capacity, seen := o.store.Stats()
	return &observerpb.ServerStatusResponse{
		NumFlows:  uint64(n),
		MaxFlows:  uint64(capacity),
		SeenFlows: seen,
		UptimeNs:  uint64(now.Sub(o.started).Nanoseconds()),
		Version:   o.cfg.Version,
		FlowsRate: flowsRate(o.store, now),
	}, nil
}

// GetNodes reports this node, connected (Cilium's agent leaves GetNodes to the
// relay; answering it lets a client pointed at one agent list it too).
func (o *Observer) GetNodes(ctx context.Context, _ *observerpb.GetNodesRequest) (*observerpb.GetNodesResponse, error) {
	n, capacity, seen := o.store.Stats()
	node := &observerpb.Node{
		Name:      o.cfg.NodeName,
		Version:   o.cfg.Version,
		Address:   o.cfg.Address,
		State:     relaypb.NodeState_NODE_CONNECTED,
		UptimeNs:  uint64(time.Since(o.started).Nanoseconds()),
		NumFlows:  uint64(n),
		MaxFlows:  uint64(capacity),
		SeenFlows: seen,
	}
	if o.cfg.TLSServerName != "" {
		node.Tls = &observerpb.TLS{Enabled: true, ServerName: o.cfg.TLSServerName}
	}
	return &observerpb.GetNodesResponse{Nodes: []*observerpb.Node{node}}, nil
}

// GetNamespaces lists the namespaces flows named in the last hour, sorted by
// cluster then name, as Cilium's namespace manager does.
func (o *Observer) GetNamespaces(ctx context.Context, _ *observerpb.GetNamespacesRequest) (*observerpb.GetNamespacesResponse, error) {
	return &observerpb.GetNamespacesResponse{Namespaces: o.namespaces.list(time.Now())}, nil
}

// GetAgentEvents is not served: flatnet's agent emits no Cilium agent events.
func (o *Observer) GetAgentEvents(*observerpb.GetAgentEventsRequest, grpc.ServerStreamingServer[observerpb.GetAgentEventsResponse]) error {
	return status.Error(codes.Unimplemented, "GetAgentEvents: flatnet has no Cilium agent events (policy updates, endpoint changes); "+
		"its flows are served by GetFlows, and policy changes are Kubernetes Events on the policies")
}

// GetDebugEvents is not served: flatnet's datapath emits no Cilium debug events.
func (o *Observer) GetDebugEvents(*observerpb.GetDebugEventsRequest, grpc.ServerStreamingServer[observerpb.GetDebugEventsResponse]) error {
	return status.Error(codes.Unimplemented, "GetDebugEvents: flatnet's datapath has no Cilium debug events; "+
		"its flows are served by GetFlows")
}

// flowsRate is Hubble's: the flows of the last minute per second, or, when the
// store holds less than a minute of flows, per second since its oldest.
func flowsRate(store *flows.Store, now time.Time) float64 {
	since := now.Add(-time.Minute)
	count := 0
	var oldestCounted time.Time
	var buf [256]*flows.Response
	_, before := store.Bounds()
	for {
		n, first := store.ReadBefore(before, buf[:])
		if n == 0 {
			// The whole store is within the minute: rate over what it holds.
			if count > 0 {
				since = oldestCounted
			}
			break
		}
		for i := n - 1; i >= 0; i-- {
			if buf[i].Time.Before(since) {
				return float64(count) / now.Sub(since).Seconds()
			}
			count++
			oldestCounted = buf[i].Time
		}
		before = first
	}
	if d := now.Sub(since).Seconds(); d > 0 {
		return float64(count) / d
	}
	return 0
}
