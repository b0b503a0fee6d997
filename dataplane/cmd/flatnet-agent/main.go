// Command flatnet-agent is the flatnet node agent (one per node, a
// DaemonSet). All logic lives in dataplane/agent.
package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/flatnet/flatnet/dataplane/agent"
	"github.com/flatnet/flatnet/dataplane/bpf"
	"github.com/flatnet/flatnet/dataplane/endpointapi"
	"github.com/flatnet/flatnet/dataplane/enforce"
	"github.com/flatnet/flatnet/dataplane/flows"
	"github.com/flatnet/flatnet/dataplane/hubble/exporter"
	hubblemetrics "github.com/flatnet/flatnet/dataplane/hubble/metrics"
	"github.com/flatnet/flatnet/dataplane/hubble/peer"
	hubbleserver "github.com/flatnet/flatnet/dataplane/hubble/server"
	"github.com/flatnet/flatnet/dataplane/ipv4"
)

// DefaultHubbleTLSDir is where the DaemonSet mounts the hubble-server-certs
// Secret (flatnet-certgen writes it).
const DefaultHubbleTLSDir = "/etc/flatnet/hubble-tls"

// DefaultAPIAddr is where the flows and explain API listen: the host's loopback,
// which no pod reaches; flatnetctl's --agent-port must name the same port.
const DefaultAPIAddr = "127.0.0.1:9970"

func main() {
	if err := command().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "flatnet-agent:", err)
		os.Exit(1)
	}
}

func command() *cobra.Command {
	var (
		cfg                          agent.RunConfig
		subnet, gateway, dockerRange string
		reserved                     []string
		hubbleMetrics                string
		serviceCIDRs                 []string
	)
	cmd := &cobra.Command{
		Use:           "flatnet-agent",
		Short:         "flatnet node agent: node address block, CNI plugin install, endpoint API, metrics",
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var err error
			if cfg.Subnet, err = netip.ParsePrefix(subnet); err != nil {
				return fmt.Errorf("--subnet %q: not a CIDR, e.g. 10.224.0.0/16", subnet)
			}
			if gateway != "" {
				if cfg.Gateway, err = netip.ParseAddr(gateway); err != nil {
					return fmt.Errorf("--gateway %q: not an IP address", gateway)
				}
			}
			if dockerRange != "" {
				if cfg.DockerRange, err = netip.ParsePrefix(dockerRange); err != nil {
					return fmt.Errorf("--docker-range %q: not a CIDR", dockerRange)
				}
			}
			for _, r := range reserved {
				p, err := netip.ParsePrefix(r)
				if err != nil {
					return fmt.Errorf("--reserved-range %q: not a CIDR, e.g. 10.224.255.0/24 (TEST_WORLD_CIDR)", r)
				}
				cfg.Reserved = append(cfg.Reserved, p)
			}
			if cfg.Policy {
				for _, c := range serviceCIDRs {
					p, err := ipv4.ParsePrefix(c)
					if err != nil {
						return fmt.Errorf("--service-cidr %q: not an IPv4 CIDR, e.g. 10.96.0.0/16: %w", c, err)
					}
					cfg.Enforce.ServiceCIDRs = append(cfg.Enforce.ServiceCIDRs, p)
				}
			}
			if cfg.HubbleMetrics, err = hubblemetrics.ParseSpecs(hubbleMetrics); err != nil {
				return fmt.Errorf("--hubble-metrics %q: %w", hubbleMetrics, err)
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return agent.Run(ctx, cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.NodeName, "node-name", os.Getenv("NODE_NAME"), "this node's name (default $NODE_NAME)")
	f.StringVar(&cfg.Kubeconfig, "kubeconfig", "", "kubeconfig file; empty = in-cluster")
	f.StringVar(&subnet, "subnet", "10.224.0.0/16", "node subnet (the kind docker network)")
	f.StringVar(&gateway, "gateway", "10.224.0.1", "docker's gateway on the node subnet (never handed out)")
	f.StringVar(&dockerRange, "docker-range", "10.224.0.0/27", "docker's --ip-range for node containers (never handed out)")
	f.StringSliceVar(&reserved, "reserved-range", nil, "a range of the subnet never handed to a pod (repeatable; the test world's TEST_WORLD_CIDR)")
	f.IntVar(&cfg.BlockSize, "block-size", 0, "addresses per node, 10..250; 0 = the Node's capacity.pods (the kubelet's maxPods)")
	f.StringVar(&cfg.Uplink, "uplink", "", "node interface on the subnet; empty = the one holding the Node's InternalIP")
	f.IntVar(&cfg.MTU, "mtu", 0, "pod interface MTU; 0 = the uplink's")
	f.IntVar(&cfg.PoolSize, "pool-size", agent.DefaultPoolSize, "host interface indexes kept ready for pods with the datapath's maps in place (a CNI ADD creates its host veth on one instead of waiting for the kernel to install the maps); 0 = no warm pool (with --policy only)")
	f.StringVar(&cfg.PluginSrcDir, "plugin-src-dir", "/flatnet/cni", "where the image keeps the CNI binaries to install")
	f.StringVar(&cfg.CNIBinDir, "cni-bin-dir", "/opt/cni/bin", "node CNI binary dir")
	f.StringVar(&cfg.CNIConfDir, "cni-conf-dir", "/etc/cni/net.d", "node CNI config dir")
	f.StringVar(&cfg.StateDir, "state-dir", "/var/lib/flatnet", "node state dir (allocator under ipam/, endpoint records under endpoints/)")
	f.StringVar(&cfg.Socket, "socket", endpointapi.DefaultSocket, "endpoint API unix socket")
	f.StringVar(&cfg.HTTPAddr, "http-addr", ":9969", "address for /healthz, /readyz and /metrics (every pod of the node reaches it: nothing else is served there)")
	f.StringVar(&cfg.APIAddr, "api-addr", DefaultAPIAddr, "loopback address for the flows and explain API (flatnetctl reaches it through the API server's pods/portforward; empty = off)")
	f.DurationVar(&cfg.Reconcile, "reconcile-interval", 30*time.Second, "period of the leak reconciler and block status report")
	f.StringSliceVar(&serviceCIDRs, "service-cidr", []string{"10.96.0.0/16"}, "the cluster's Service (ClusterIP) ranges: egress to them is judged on the backend")
	f.BoolVar(&cfg.Enforce.HostRouting, "host-routing", false, "route traffic between two pods of this node through the host stack (netfilter, IP forwarding) instead of delivering it from veth to veth; policy is the same either way")
	f.IntVar(&cfg.Enforce.CT.CTEntries, "ct-entries", bpf.DefaultCTEntries, "new and closing connections tracked at once on this node (one LRU table shared by all pods)")
	f.IntVar(&cfg.Enforce.CT.CTEstablishedPerEndpoint, "ct-established-per-endpoint", bpf.DefaultCTEstablishedPerEndpoint, "established connections tracked per pod in its own table, which no other pod's traffic can evict; a pod's further ones are kept in the shared table")
	f.DurationVar(&cfg.Enforce.CTGCInterval, "ct-gc-interval", enforce.DefaultCTGCInterval, "how often expired established connections are deleted from the pods' tables")
	f.DurationVar(&cfg.Enforce.HookMoveQuiet, "hook-move-quiet", enforce.DefaultHookMoveQuiet, "endpoints are attached with clsact filters (quick to attach) and moved to tcx links (which no tc command deletes) once no pod has been attached for this long")
	f.BoolVar(&cfg.Policy, "policy", true, "enforce NetworkPolicy and CiliumNetworkPolicy with the eBPF datapath (false: networking only)")
	f.IntVar(&cfg.FlowHistory, "flow-history", flows.DefaultCapacity, "recent flows kept for GET /v1/flows (flatnetctl flows)")
	f.StringVar(&hubbleMetrics, "hubble-metrics", hubblemetrics.DefaultSpec, "Hubble metrics counted from the flows and served on --http-addr's /metrics, as Cilium's --hubble-metrics: space-separated, each name[:option;option], e.g. \"flow:sourceContext=namespace;destinationContext=namespace drop tcp policy\"; served: drop, flow, flows-to-world, policy, port-distribution, tcp; empty = none (with --policy only)")
	f.StringVar(&cfg.FlowExport.ConfigFile, "flow-export-config", "", "flow log config (Hubble's dynamic exporter format: flowLogs: [...]; a mounted ConfigMap), applied again whenever it changes; empty = no flow logs")
	f.StringVar(&cfg.FlowExport.Dir, "flow-export-dir", "/var/log/flatnet/flows", "the only directory flow logs may be written to (and under)")
	f.IntVar(&cfg.FlowExport.QueueLength, "flow-export-queue", exporter.DefaultQueueLength, "flows each flow log exporter holds for its writer; beyond, flows are dropped and counted")
	f.DurationVar(&cfg.LeakGrace, "leak-grace", 2*time.Minute, "how long an address must belong to no pod before it is freed")
	// Hubble's API, with the Cilium agent's option names.
	h := &cfg.Hubble.Server
	f.StringVar(&h.ListenAddress, "hubble-listen-address", hubbleserver.DefaultListenAddress, "address of the Hubble gRPC API (Observer, Peer, health) that hubble-relay dials, with mutual TLS; empty = off")
	f.StringVar(&h.SocketPath, "hubble-socket-path", hubbleserver.DefaultSocketPath, "unix socket of the Hubble gRPC API for node-local use (plaintext, root only); empty = off")
	f.StringVar(&h.TLS.CertFile, "hubble-tls-cert-file", filepath.Join(DefaultHubbleTLSDir, "tls.crt"), "the Hubble server's certificate (PEM), reloaded when it changes")
	f.StringVar(&h.TLS.KeyFile, "hubble-tls-key-file", filepath.Join(DefaultHubbleTLSDir, "tls.key"), "the Hubble server certificate's key (PEM), reloaded when it changes")
	f.StringSliceVar(&h.TLS.ClientCAFiles, "hubble-tls-client-ca-files", []string{filepath.Join(DefaultHubbleTLSDir, "ca.crt")}, "CAs (PEM) whose client certificates the Hubble server accepts (mutual TLS), reloaded when they change")
	f.BoolVar(&h.DisableTLS, "hubble-disable-tls", false, "serve --hubble-listen-address in plaintext, with no client authentication: whoever reaches it reads every namespace's flows")
	f.StringVar(&cfg.Hubble.ClusterName, "cluster-name", peer.DefaultClusterName, "this cluster's name, in Hubble peer names and TLS server names (<node>.<cluster-name>.hubble-grpc.cilium.io)")
	return cmd
}
