// Command flatnet-agent is the flatnet node agent (one per node, a
// DaemonSet). All logic lives in dataplane/agent.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/flatnet/flatnet/dataplane/agent"
	"github.com/flatnet/flatnet/dataplane/bpf"
	"github.com/flatnet/flatnet/dataplane/endpointapi"
	"github.com/flatnet/flatnet/dataplane/enforce"
	"github.com/flatnet/flatnet/dataplane/flows"
	"github.com/flatnet/flatnet/dataplane/ipv4"
	"github.com/flatnet/flatnet/dataplane/metrics"
)

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
		cfg                           agent.Config
		kubeconfig                    string
		subnet, gateway, dockerRange  string
		serviceCIDRs                  []string
		policy, hostRouting           bool
		flowHistory, ctEntries, ctEst int
		ctGC                          time.Duration
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
			rc, err := restConfig(kubeconfig)
			if err != nil {
				return err
			}
			kube, err := kubernetes.NewForConfig(rc)
			if err != nil {
				return fmt.Errorf("kubernetes client: %w", err)
			}
			dyn, err := dynamic.NewForConfig(rc)
			if err != nil {
				return fmt.Errorf("dynamic client: %w", err)
			}
			log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			if !policy {
				a, err := agent.New(cfg, log, kube, dyn)
				if err != nil {
					return err
				}
				return a.Run(ctx)
			}
			var svc []ipv4.Prefix
			for _, c := range serviceCIDRs {
				p, err := ipv4.ParsePrefix(c)
				if err != nil {
					return fmt.Errorf("--service-cidr %q: not an IPv4 CIDR, e.g. 10.96.0.0/16: %w", c, err)
				}
				svc = append(svc, p)
			}
			enf, err := enforce.New(ctx, enforce.Config{NodeName: cfg.NodeName, ServiceCIDRs: svc, HostRouting: hostRouting,
				CT: bpf.Options{CTEntries: ctEntries, CTEstablishedPerEndpoint: ctEst}, CTGCInterval: ctGC}, log)
			if err != nil {
				return fmt.Errorf("loading the policy datapath: %w", err)
			}
			// Close releases our handles only: programs and maps stay pinned and keep
			// enforcing until the next agent adopts them.
			defer enf.Close()
			cfg.Datapath = enf
			// Rejected policies become Events on the objects (once per version).
			reporter, stopEvents := enforce.NewEventReporter(kube, cfg.NodeName)
			defer stopEvents()
			enf.SetReporter(reporter)
			store := flows.NewStore(flowHistory)
			api := http.NewServeMux()
			api.Handle("GET "+enforce.RejectedPath, enf.RejectedHandler())
			api.Handle(agent.ExplainPath, agent.ExplainHandler(enf, cfg.NodeName))
			api.Handle("/", flows.Handler(store))
			cfg.API = api
			a, err := agent.New(cfg, log, kube, dyn)
			if err != nil {
				return err
			}
			drops := flows.NewPolicyDrops()
			registerPolicyMetrics(a.Metrics(), enf.Datapath(), enf, enf.Metrics(), drops)
			enricher, err := flows.NewEnricher(cfg.NodeName, enf.Snapshots())
			if err != nil {
				return err
			}
			events, err := enf.Datapath().NewFlowReader()
			if err != nil {
				return err
			}
			defer events.Close()
			// The enforcer must be syncing before the agent re-attaches known endpoints:
			// Attach waits for its first full sync.
			ctx, cancel := context.WithCancel(ctx)
			defer cancel()
			errc := make(chan error, 2)
			go func() {
				// Observability must not take enforcement down with it.
				if err := flows.Run(ctx, events, enricher, store, drops.Observe); err != nil {
					log.Error("flow reader stopped: no new flows until the agent restarts", "error", err)
				}
			}()
			go func() { errc <- wrap("policy enforcer", enf.Run(ctx, kube, dyn)) }()
			go func() { errc <- wrap("conntrack GC", enf.RunConntrackGC(ctx)) }()
			go func() { errc <- wrap("agent", a.Run(ctx)) }()
			return <-errc
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.NodeName, "node-name", os.Getenv("NODE_NAME"), "this node's name (default $NODE_NAME)")
	f.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig file; empty = in-cluster")
	f.StringVar(&subnet, "subnet", "10.224.0.0/16", "node subnet (the kind docker network)")
	f.StringVar(&gateway, "gateway", "10.224.0.1", "docker's gateway on the node subnet (never handed out)")
	f.StringVar(&dockerRange, "docker-range", "10.224.0.0/27", "docker's --ip-range for node containers (never handed out)")
	f.IntVar(&cfg.BlockSize, "block-size", 0, "addresses per node, 10..250; 0 = the Node's capacity.pods (the kubelet's maxPods)")
	f.StringVar(&cfg.Uplink, "uplink", "", "node interface on the subnet; empty = the one holding the Node's InternalIP")
	f.IntVar(&cfg.MTU, "mtu", 0, "pod interface MTU; 0 = the uplink's")
	f.StringVar(&cfg.PluginSrcDir, "plugin-src-dir", "/flatnet/cni", "where the image keeps the CNI binaries to install")
	f.StringVar(&cfg.CNIBinDir, "cni-bin-dir", "/opt/cni/bin", "node CNI binary dir")
	f.StringVar(&cfg.CNIConfDir, "cni-conf-dir", "/etc/cni/net.d", "node CNI config dir")
	f.StringVar(&cfg.StateDir, "state-dir", "/var/lib/flatnet", "node state dir (allocator under ipam/, endpoint records under endpoints/)")
	f.StringVar(&cfg.Socket, "socket", endpointapi.DefaultSocket, "endpoint API unix socket")
	f.StringVar(&cfg.HTTPAddr, "http-addr", ":9969", "address for /healthz, /readyz and /metrics (every pod of the node reaches it: nothing else is served there)")
	f.StringVar(&cfg.APIAddr, "api-addr", DefaultAPIAddr, "loopback address for the flows and explain API (flatnetctl reaches it through the API server's pods/portforward; empty = off)")
	f.DurationVar(&cfg.Reconcile, "reconcile-interval", 30*time.Second, "period of the leak reconciler and block status report")
	f.StringSliceVar(&serviceCIDRs, "service-cidr", []string{"10.96.0.0/16"}, "the cluster's Service (ClusterIP) ranges: egress to them is judged on the backend")
	f.BoolVar(&hostRouting, "host-routing", false, "route traffic between two pods of this node through the host stack (netfilter, IP forwarding) instead of delivering it from veth to veth; policy is the same either way")
	f.IntVar(&ctEntries, "ct-entries", bpf.DefaultCTEntries, "new and closing connections tracked at once on this node (one LRU table shared by all pods)")
	f.IntVar(&ctEst, "ct-established-per-endpoint", bpf.DefaultCTEstablishedPerEndpoint, "established connections tracked per pod in its own table, which no other pod's traffic can evict; a pod's further ones are kept in the shared table")
	f.DurationVar(&ctGC, "ct-gc-interval", enforce.DefaultCTGCInterval, "how often expired established connections are deleted from the pods' tables")
	f.BoolVar(&policy, "policy", true, "enforce NetworkPolicy and CiliumNetworkPolicy with the eBPF datapath (false: networking only)")
	f.IntVar(&flowHistory, "flow-history", flows.DefaultCapacity, "recent flows kept for GET /v1/flows (flatnetctl flows)")
	f.DurationVar(&cfg.LeakGrace, "leak-grace", 2*time.Minute, "how long an address must belong to no pod before it is freed")
	return cmd
}

// registerPolicyMetrics adds the policy datapath's metrics to the agent's (the
// dashboard test builds the same set with a fake datapath).
func registerPolicyMetrics(m *agent.Metrics, dp metrics.CounterSource, pods metrics.PodNamer, em *enforce.Metrics, drops *flows.PolicyDrops) {
	m.MustRegister(metrics.NewCollector(dp).WithPods(pods), drops.Collector())
	m.MustRegister(em.Collectors()...)
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == "" {
		rc, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("in-cluster config (outside a pod, pass --kubeconfig): %w", err)
		}
		return rc, nil
	}
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
	}
	return rc, nil
}

// wrap names the part of the agent that stopped; a clean stop (nil) stays nil.
func wrap(what string, err error) error {
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}
