package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"time"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/flatnet/flatnet/dataplane/enforce"
	"github.com/flatnet/flatnet/dataplane/flows"
	"github.com/flatnet/flatnet/dataplane/hubble/exporter"
	hubblemetrics "github.com/flatnet/flatnet/dataplane/hubble/metrics"
	"github.com/flatnet/flatnet/dataplane/hubble/observer"
	"github.com/flatnet/flatnet/dataplane/metrics"
)

// RunConfig is everything the flatnet-agent command is told.
type RunConfig struct {
	// Config is the node network's part; Run sets its Hook and API itself.
	Config
	// Kubeconfig is the file to reach the API server with; "" = in-cluster.
	Kubeconfig string
	// Policy enforces NetworkPolicy and CiliumNetworkPolicy with the eBPF datapath;
	// off, pods get networking only.
	Policy bool
	// Enforce configures the policy datapath (its NodeName is Config's).
	Enforce enforce.Config
	// FlowHistory is how many recent flows GET /v1/flows keeps.
	FlowHistory int
	// HubbleMetrics are the Hubble metrics counted from the flows and served
	// beside the agent's own (--hubble-metrics); none: off.
	HubbleMetrics []hubblemetrics.Spec
	// FlowExport writes flow logs as its config file says (with policy on);
	// an empty ConfigFile writes none.
	FlowExport exporter.Options
	// Hubble is the Hubble API (gRPC on the node's :4244 and a local socket).
	Hubble HubbleConfig
}

// Run runs the node agent until ctx ends: the node network (New, Agent.Run) and,
// with cfg.Policy, the policy enforcer as its EndpointHook, with its flows, API and
// metrics. Every part that watches the cluster registers on one informer factory,
// started once all have, so each resource is watched once per process.
func Run(ctx context.Context, cfg RunConfig) error {
	if err := cfg.Hubble.Server.Validate(); err != nil {
		return err
	}
	rc, err := restConfig(cfg.Kubeconfig)
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
	factory := informers.NewSharedInformerFactory(kube, 0)
	ctx, cancel := context.WithCancel(ctx)
	defer func() {
		cancel()
		factory.Shutdown() // waits for the informers, which stop with ctx
	}()
	if !cfg.Policy {
		watchNodePodsOnly(factory, cfg.NodeName)
		a, err := New(cfg.Config, log, kube, dyn, factory)
		if err != nil {
			return err
		}
		// No flows without the policy datapath: Peer and health only.
		defer startHubble(cfg.Hubble, log, factory, nil)()
		factory.Start(ctx.Done())
		return a.Run(ctx)
	}
	return runWithPolicy(ctx, cfg, log, kube, dyn, factory)
}

// runWithPolicy is Run with the policy enforcer; it starts factory.
func runWithPolicy(ctx context.Context, cfg RunConfig, log *slog.Logger, kube kubernetes.Interface, dyn dynamic.Interface, factory informers.SharedInformerFactory) error {
	ecfg := cfg.Enforce
	ecfg.NodeName = cfg.NodeName
	enf, err := enforce.New(ctx, ecfg, log)
	if err != nil {
		return fmt.Errorf("loading the policy datapath: %w", err)
	}
	// Close releases our handles only: programs and maps stay pinned and keep
	// enforcing until the next agent adopts them.
	defer enf.Close()
	// Rejected policies become Events on the objects (once per version).
	reporter, stopEvents := enforce.NewEventReporter(kube, cfg.NodeName)
	defer stopEvents()
	enf.SetReporter(reporter)
	store := flows.NewStore(cfg.FlowHistory)
	api := http.NewServeMux()
	api.Handle("GET "+enforce.RejectedPath, enf.RejectedHandler())
	api.Handle(ExplainPath, ExplainHandler(enf, cfg.NodeName))
	api.Handle("/", flows.Handler(store))
	cfg.Hook, cfg.API, cfg.Preparer = enf, api, enf.Datapath()
	a, err := New(cfg.Config, log, kube, dyn, factory)
	if err != nil {
		return err
	}
	drops := flows.NewPolicyDrops()
	hubble, err := hubblemetrics.New(hubblemetrics.Config{Specs: cfg.HubbleMetrics, Datapath: enf.Datapath()})
	if err != nil {
		return fmt.Errorf("--hubble-metrics: %w", err)
	}
	registerPolicyMetrics(a.Metrics(), enf.Datapath(), enf, enf.Metrics(), drops, hubble)
	enricher, err := flows.NewEnricher(cfg.NodeName, enf.Snapshots())
	if err != nil {
		return err
	}
	// Hubble's Observer serves the same history as GET /v1/flows.
	obs := observer.New(store, observer.Config{NodeName: cfg.NodeName, Version: version(), Log: log})
	observers := []func(*flows.Response){drops.Observe, hubble.Observe, obs.Observe}
	var flowLogs *exporter.Manager
	if cfg.FlowExport.ConfigFile != "" {
		if flowLogs, err = exporter.NewManager(log, cfg.FlowExport); err != nil {
			return fmt.Errorf("flow export: %w", err)
		}
		a.Metrics().MustRegister(flowLogs.Collectors()...)
		observers = append(observers, flowLogs.Observe)
	}
	events, err := enf.Datapath().NewFlowReader()
	if err != nil {
		return err
	}
	defer events.Close()
	if err := enf.Watch(ctx, factory, kube, dyn); err != nil {
		return wrap("policy enforcer", err)
	}
	// The enforcer's pod informer (every pod of the cluster: flows name remote pods
	// too): a deleted pod's Hubble series go, as in Cilium.
	if _, err := factory.Core().V1().Pods().Informer().AddEventHandler(hubble.PodEvents()); err != nil {
		return fmt.Errorf("watching pod deletions for the Hubble metrics: %w", err)
	}
	defer startHubble(cfg.Hubble, log, factory, obs)()
	factory.Start(ctx.Done())
	// The enforcer must be syncing before the agent re-attaches known endpoints:
	// Attach waits for its first full sync. This cancel is deferred last, so when
	// one part stops the others stop before the flow reader and datapath close.
	// The flow logs are written out after that cancel, before the process ends.
	logsWritten := make(chan struct{})
	defer func() { <-logsWritten }()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		defer close(logsWritten)
		if flowLogs != nil {
			_ = flowLogs.Run(ctx) // it logs what it refuses; it stops with ctx
		}
	}()
	const parts = 4 // the goroutines below that send on errc
	errc := make(chan error, parts)
	go func() {
		// Observability must not take enforcement down with it.
		if err := flows.Run(ctx, events, enricher, store, observers...); err != nil {
			log.Error("flow reader stopped: no new flows until the agent restarts", "error", err)
		}
	}()
	go func() { errc <- wrap("policy enforcer", enf.Run(ctx)) }()
	go func() { errc <- wrap("conntrack GC", enf.RunConntrackGC(ctx)) }()
	go func() { errc <- wrap("hook mover", enf.RunHookMover(ctx)) }()
	go func() { errc <- wrap("agent", a.Run(ctx)) }()
	return stopParts(cancel, errc, parts, partsStopTimeout)
}

// partsStopTimeout bounds the wait for the agent's parts once one has stopped:
// within the kubelet's grace period, which ends in SIGKILL.
const partsStopTimeout = 15 * time.Second

// stopParts waits for the first of n parts to stop (its error on errc), stops
// the others (cancel) and waits for them, for timeout at most, before the
// caller's deferred closes run: the agent's Run empties the warm pool on its
// way out, through the datapath's maps, and failed with "bad file descriptor"
// when the datapath closed under it. It returns the first error.
func stopParts(cancel context.CancelFunc, errc <-chan error, n int, timeout time.Duration) error {
	first := <-errc
	cancel()
	deadline := time.After(timeout)
	for range n - 1 {
		select {
		case err := <-errc:
			if first == nil {
				first = err
			}
		case <-deadline:
			return errors.Join(first, fmt.Errorf("the agent's parts did not stop within %s", timeout))
		}
	}
	return first
}

// registerPolicyMetrics adds the policy datapath's metrics and the Hubble metrics
// to the agent's (the dashboard test builds the same set with a fake datapath).
func registerPolicyMetrics(m *Metrics, dp metrics.CounterSource, pods metrics.PodNamer, em *enforce.Metrics, drops *flows.PolicyDrops, hubble *hubblemetrics.Metrics) {
	m.MustRegister(metrics.NewCollector(dp).WithPods(pods), drops.Collector())
	m.MustRegister(em.Collectors()...)
	m.MustRegister(hubble.Collectors()...)
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
