package agent

import (
	"log/slog"
	"net"
	"runtime/debug"
	"strconv"

	observerpb "github.com/cilium/cilium/api/v1/observer"
	"k8s.io/client-go/informers"

	"github.com/flatnet/flatnet/dataplane/hubble/peer"
	hubbleserver "github.com/flatnet/flatnet/dataplane/hubble/server"
)

// HubbleConfig is the agent's Hubble API: Cilium's gRPC services on the node.
type HubbleConfig struct {
	// Server's Observer and Peer are set by Run.
	Server hubbleserver.Options
	// ClusterName names the cluster in peer and TLS server names.
	ClusterName string
}

// startHubble serves the Hubble API with observer (nil: no Observer service)
// and a Peer service on factory's node informer, which the caller starts. A
// server that cannot listen is logged, not fatal: observability must not take
// the node's networking down with it. The returned func stops it.
func startHubble(cfg HubbleConfig, log *slog.Logger, factory informers.SharedInformerFactory, observer observerpb.ObserverServer) func() {
	o := cfg.Server
	if o.ListenAddress == "" && o.SocketPath == "" {
		return func() {}
	}
	// Peers are announced at the port this agent listens on: every agent of
	// the DaemonSet runs with the same flags.
	port := 0
	if _, p, err := net.SplitHostPort(o.ListenAddress); err == nil {
		port, _ = strconv.Atoi(p)
	}
	o.Peer = peer.New(factory.Core().V1().Nodes().Informer(), peer.Options{ClusterName: cfg.ClusterName, Port: port, WithoutTLS: o.DisableTLS})
	o.Observer = observer
	o.Version = hubbleAPIVersion
	s, err := hubbleserver.Start(o, log)
	if err != nil {
		log.Error("hubble server not started: no Hubble API on this node until the agent restarts", "error", err)
		return func() {}
	}
	return s.Stop
}

// version names this build as Hubble's servers name theirs ("cilium
// v1.19.4+g<commit>"): ServerStatus and GetNodes report it.
func version() string {
	v, rev := "(devel)", ""
	if bi, ok := debug.ReadBuildInfo(); ok {
		v = bi.Main.Version
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 10 {
				rev = "+g" + s.Value[:10]
			}
		}
	}
	return "flatnet " + v + rev
}

// hubbleAPIVersion is what the Hubble server sends in hubble-server-version:
// the Cilium release whose Hubble API this build serves (go.mod's
// github.com/cilium/cilium, which a test holds this to), as a Cilium agent of
// that release sends its own. The hubble CLI parses the header as a semantic
// version and warns when it is older than the server: flatnet's own name
// (version()) would not parse, and no skew would be told. A constant, not the
// build's module list: test binaries record no modules.
const hubbleAPIVersion = "1.19.4"
