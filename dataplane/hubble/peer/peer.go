// Package peer is Hubble's Peer service (peerpb.PeerServer) for flatnet: it tells
// a client such as hubble-relay which nodes run a Hubble server and how to reach
// them, from the agent's node informer. Notify sends PEER_ADDED for every node
// known when the client subscribes, then PEER_ADDED, PEER_UPDATED and
// PEER_DELETED as nodes come, change address and go — the semantics of Cilium's
// pkg/hubble/peer, whose names (cluster-qualified peer names, TLS server names
// <node>.<cluster>.hubble-grpc.cilium.io) the relay relies on.
package peer

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	peerpb "github.com/cilium/cilium/api/v1/peer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/cache"
)

// DefaultClusterName is Cilium's default cluster name: a peer of that cluster is
// named by its node name alone.
const DefaultClusterName = "default"

// DefaultMaxBuffered bounds the notifications queued for one client, as Cilium's
// default send buffer: enough for the initial burst of a large cluster's nodes.
const DefaultMaxBuffered = 65536

// Options configure the Service.
type Options struct {
	// ClusterName qualifies peer and TLS server names; "" is DefaultClusterName.
	ClusterName string
	// Port is the port of every node's Hubble server (4244).
	Port int
	// WithoutTLS leaves out the TLS server name, telling clients the servers are
	// plaintext (the agents run with --hubble-disable-tls).
	WithoutTLS bool
	// MaxBuffered is how many notifications a client may fall behind before it
	// is disconnected; 0 is DefaultMaxBuffered.
	MaxBuffered int
}

// Service implements peerpb.PeerServer over a node informer.
type Service struct {
	peerpb.UnimplementedPeerServer
	nodes cache.SharedInformer
	opts  Options
}

var _ peerpb.PeerServer = (*Service)(nil)

// New returns the Peer service for the nodes nodes holds. The informer is the
// caller's (the agent's shared node informer): each Notify adds a handler to it
// for as long as its stream lasts.
func New(nodes cache.SharedInformer, opts Options) *Service {
	if opts.ClusterName == "" {
		opts.ClusterName = DefaultClusterName
	}
	if opts.MaxBuffered <= 0 {
		opts.MaxBuffered = DefaultMaxBuffered
	}
	return &Service{nodes: nodes, opts: opts}
}

// Notify implements peerpb.PeerServer. A handler on the node informer replays
// every known node as added, then every change, into a bounded queue the stream
// drains; a client that falls MaxBuffered notifications behind is disconnected
// (ResourceExhausted) rather than holding the agent's memory.
func (s *Service) Notify(_ *peerpb.NotifyRequest, stream peerpb.Peer_NotifyServer) error {
	q := newQueue(s.opts.MaxBuffered)
	reg, err := s.nodes.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(o any) {
			if n, ok := o.(*corev1.Node); ok {
				q.push(s.notification(n, peerpb.ChangeNotificationType_PEER_ADDED))
			}
		},
		UpdateFunc: func(o, n any) {
			on, ok1 := o.(*corev1.Node)
			nn, ok2 := n.(*corev1.Node)
			if !ok1 || !ok2 {
				return
			}
			// Only what a client sees counts: a status heartbeat is no change. The
			// name (and so the TLS server name) is the same; only the address can differ.
			oip, _ := NodeIP(on)
			nip, _ := NodeIP(nn)
			if oip != nip {
				q.push(s.notification(nn, peerpb.ChangeNotificationType_PEER_UPDATED))
			}
		},
		DeleteFunc: func(o any) {
			if t, ok := o.(cache.DeletedFinalStateUnknown); ok {
				o = t.Obj
			}
			if n, ok := o.(*corev1.Node); ok {
				q.push(s.notification(n, peerpb.ChangeNotificationType_PEER_DELETED))
			}
		},
	})
	if err != nil {
		return status.Errorf(codes.Unavailable, "peer service: watching nodes: %v", err)
	}
	defer func() { _ = s.nodes.RemoveEventHandler(reg) }()
	for {
		cn, err := q.pop(stream.Context())
		if err != nil {
			return err
		}
		if err := stream.Send(cn); err != nil {
			return err
		}
	}
}

// notification describes node n to a client, as Cilium's peer handler does.
func (s *Service) notification(n *corev1.Node, t peerpb.ChangeNotificationType) *peerpb.ChangeNotification {
	cn := &peerpb.ChangeNotification{Name: n.Name, Type: t}
	if s.opts.ClusterName != DefaultClusterName {
		cn.Name = s.opts.ClusterName + "/" + n.Name
	}
	if ip, ok := NodeIP(n); ok {
		cn.Address = net.JoinHostPort(ip.String(), strconv.Itoa(s.opts.Port))
	}
	if !s.opts.WithoutTLS {
		cn.Tls = &peerpb.TLS{ServerName: TLSServerName(n.Name, s.opts.ClusterName)}
	}
	return cn
}

// NodeIP is the address a node's Hubble server is reached at, chosen as Cilium
// chooses it: IPv4 before IPv6, and within a family an InternalIP, else an
// ExternalIP, else any other address the node reports.
func NodeIP(n *corev1.Node) (netip.Addr, bool) {
	for _, v4 := range []bool{true, false} {
		var backup netip.Addr
		for _, a := range n.Status.Addresses {
			ip, err := netip.ParseAddr(a.Address)
			if err != nil || ip.Unmap().Is4() != v4 {
				continue
			}
			ip = ip.Unmap()
			switch a.Type {
			case corev1.NodeInternalIP:
				return ip, true
			case corev1.NodeExternalIP:
				backup = ip
			default:
				if !backup.IsValid() {
					backup = ip
				}
			}
		}
		if backup.IsValid() {
			return backup, true
		}
	}
	return netip.Addr{}, false
}

// TLSServerName is the name a node's Hubble server certificate is checked
// against: <node>.<cluster>.hubble-grpc.cilium.io, dots in either name turned to
// hyphens so that every node sits at the same DNS level, under the one wildcard
// *.<cluster>.hubble-grpc.cilium.io the server certificate carries.
func TLSServerName(nodeName, clusterName string) string {
	if nodeName == "" {
		return ""
	}
	if clusterName == "" {
		clusterName = DefaultClusterName
	}
	return fmt.Sprintf("%s.%s", strings.ReplaceAll(nodeName, ".", "-"), ServerNameDomain(clusterName))
}

// ServerNameDomain is the domain under which every node of clusterName is named
// (the server certificate's wildcard without its "*.").
func ServerNameDomain(clusterName string) string {
	if clusterName == "" {
		clusterName = DefaultClusterName
	}
	return strings.ReplaceAll(clusterName, ".", "-") + ".hubble-grpc.cilium.io"
}
