// Package cni is the flatnet CNI plugin: pods get an address of the node
// subnet itself (Azure CNI's node-subnet mode), from the node's block, on a
// veth whose host side routes for them and whose uplink answers ARP for them,
// so pods on a flat L2 network reach each other with no overlay and no routes
// on other nodes. The cmd/flatnet-cni binary is a thin skel wrapper around
// the functions here, which tie together the configuration (cniconf), the
// node's allocator (ipam/nodealloc), the plumbing (podnet) and the agent
// (endpointapi): the same plumbing the agent uses, so the agent never imports
// this package.
package cni

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/flatnet/flatnet/dataplane/cniconf"
	"github.com/flatnet/flatnet/dataplane/endpointapi"
	"github.com/flatnet/flatnet/dataplane/ipam/nodealloc"
	"github.com/flatnet/flatnet/dataplane/podnet"
)

// SupportedVersions are the CNI spec versions the plugin speaks. 0.4.0 is the
// first with CHECK; GC and STATUS need 1.1.0.
var SupportedVersions = version.PluginSupports("0.4.0", "1.0.0", "1.1.0")

// About is printed by the plugin when run without CNI_COMMAND.
const About = "flatnet: pod addresses from the node subnet (Azure CNI node-subnet mode on a flat L2 network)"

// errPluginNotAvailable is CNI 1.1's code for "STATUS: cannot take ADDs now" (not
// named by this version of the types package).
const errPluginNotAvailable uint = 50

// opTimeout bounds one plugin invocation's waits (lock, agent).
const opTimeout = 30 * time.Second

// releaseWait bounds an ADD's wait on a full block for deleted pods' DELs to
// release addresses: 15 s in all (the rest of opTimeout is the setup's and the
// agent's), 5 s of them with no DEL under way (the kubelet admits a pod in the
// slot of one whose sandbox its runtime has yet to tear down).
var releaseWait = nodealloc.Wait{Bound: 15 * time.Second, Quiet: 5 * time.Second}

// Funcs returns the plugin's commands for skel.PluginMainFuncs.
func Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: Add, Del: Del, Check: Check, Status: Status, GC: GC}
}

// Add gives the attachment an address of the node's block and plumbs it:
// the pod's lo and interface, and its hostPorts through CNI's portmap when it
// has any.
func Add(args *skel.CmdArgs) error {
	start := time.Now()
	cfg, err := cniconf.ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	answered, err := add(args, cfg, start)
	if !answered {
		// The agent observed the ADD when it answered its PUT; else tell it.
		report(cfg.AgentSocket, "ADD", start, err)
	}
	return err
}

// add reports whether the agent answered its PUT (and so observed the ADD).
func add(args *skel.CmdArgs, cfg *cniconf.Config, start time.Time) (answered bool, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if args.IfName == "" {
		return false, types.NewError(types.ErrInvalidEnvironmentVariables, "CNI_IFNAME: missing", "the runtime must name the pod interface, e.g. eth0")
	}
	up, err := podnet.FindUplink(cfg.Uplink, cfg.Layout.Subnet)
	if err != nil {
		return false, types.NewError(types.ErrInvalidNetworkConfig, err.Error(), "")
	}
	for _, a := range up.Addrs {
		if cfg.Block.Contains(a) {
			return false, types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("block %s: contains the node's own address %s on %s; the agent must give this node another block", cfg.Block, a, cfg.Uplink), "")
		}
	}
	podNS, err := ns.GetNS(args.Netns)
	if err != nil {
		return false, types.NewError(types.ErrInvalidNetNS, fmt.Sprintf("open pod netns %q: %v", args.Netns, err), "")
	}
	defer podNS.Close()

	// Each step's time goes to the agent with the PUT (its metrics say where an
	// ADD's time goes).
	var phases []endpointapi.AddPhase
	last := start
	phase := func(name string) {
		now := time.Now()
		phases = append(phases, endpointapi.AddPhase{Name: name, Took: now.Sub(last)})
		last = now
	}
	phase("prepare")
	store := nodealloc.New(cfg.DataDir)
	att := nodealloc.Attachment{ContainerID: args.ContainerID, IfName: args.IfName}
	// A full block waits for the addresses of deleted pods, which the kubelet
	// no longer counts against maxPods while their DELs have yet to run.
	addr, created, _, err := store.AllocateWaiting(ctx, cfg.NodeName, cfg.Block, att, releaseWait)
	if err != nil {
		var ex *nodealloc.ExhaustedError
		if errors.As(err, &ex) {
			return false, types.NewError(types.ErrTryAgainLater, err.Error(), "")
		}
		return false, types.NewError(types.ErrInternal, fmt.Sprintf("allocate an address for %s/%s: %v", args.ContainerID, args.IfName, err), "")
	}
	// Undo everything on failure: a failed ADD leaves nothing behind.
	mapped, sent := false, false
	defer func() {
		if err == nil {
			return
		}
		if sent && !answered {
			// The agent may have registered it after all.
			forgetEndpoint(cfg.AgentSocket, args.ContainerID)
		}
		if mapped {
			if perr := portmapDel(context.Background(), cfg); perr != nil {
				err = fmt.Errorf("%w (and undoing it: %v)", err, perr)
			}
		}
		if terr := podnet.Teardown(args.ContainerID, args.IfName, addr, cfg.Uplink); terr != nil {
			err = fmt.Errorf("%w (and undoing it: %v)", err, terr)
		}
		if created {
			if _, _, rerr := store.Release(context.Background(), att); rerr != nil {
				err = fmt.Errorf("%w (and releasing %s: %v)", err, addr, rerr)
			}
		}
	}()

	phase("ipam")
	pn, err := setupPod(podNS, args, cfg, addr, up)
	if err != nil {
		return false, types.NewError(types.ErrInternal, fmt.Sprintf("set up pod network for %s: %v", args.ContainerID, err), "")
	}
	if cfg.AgentSocket == "" {
		// No agent to announce the address (it does so once the endpoint is registered).
		if err = podnet.Announce(up.Link, addr); err != nil {
			return false, types.NewError(types.ErrInternal, fmt.Sprintf("set up pod network for %s: %v", args.ContainerID, err), "")
		}
	}
	phase("setup")

	var res types.Result = result(args, cfg, pn)
	if len(cfg.PortMappings()) > 0 {
		if res, err = portmapAdd(ctx, cfg, res); err != nil {
			return false, types.NewError(types.ErrInternal, fmt.Sprintf("set up pod network for %s: %v", args.ContainerID, err), "")
		}
		mapped = true
		phase("portmap")
	}

	// The endpoint goes to the agent last: once it is registered, the pod is
	// enforced and the ADD can no longer fail.
	if cfg.AgentSocket != "" {
		podNamespace, podName := podArgs(args.Args)
		ep := endpointapi.Endpoint{
			ContainerID: args.ContainerID, PodNamespace: podNamespace, PodName: podName,
			Netns: args.Netns, HostIfName: pn.HostVeth, HostIfIndex: pn.HostIf.Index,
			PodIfName: args.IfName, IP: addr, MAC: pn.PodIf.HardwareAddr.String(),
		}
		sent = true
		if answered, err = putEndpoint(ctx, cfg.AgentSocket, ep, start, phases, schedStats()); err != nil {
			return answered, types.NewError(types.ErrTryAgainLater, fmt.Sprintf("register endpoint %s with the flatnet agent: %v", args.ContainerID, err), "")
		}
	}
	return answered, types.PrintResult(res, cfg.Raw.CNIVersion)
}

// setupPod plumbs the pod, its host veth on an interface index of the agent's
// warm pool when one is free: the agent has that index's maps in place, so its
// attach only writes entries and puts the filters on, and the ADD waits for none
// of the kernel's grace periods. Else (the pool empty, an agent without one) the
// kernel picks the index and the agent installs the maps.
func setupPod(podNS ns.NetNS, args *skel.CmdArgs, cfg *cniconf.Config, addr netip.Addr, up *podnet.Uplink) (*podnet.Veth, error) {
	ifindex, err := podnet.ClaimPoolIndex(podnet.PoolDir(cfg.DataDir), args.ContainerID)
	if err != nil {
		ifindex = 0
	}
	return podnet.Setup(podNS, args.ContainerID, args.IfName, addr, cfg.MTU, up, ifindex)
}

// result is ADD's result: the pod's /32 on its interface, the gateway and the
// default route through it.
func result(args *skel.CmdArgs, cfg *cniconf.Config, pn *podnet.Veth) *current.Result {
	idx := 1
	return &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{
			{Name: pn.HostVeth, Mac: pn.HostIf.HardwareAddr.String()},
			{Name: args.IfName, Mac: pn.PodIf.HardwareAddr.String(), Mtu: pn.PodIf.MTU, Sandbox: args.Netns},
		},
		IPs:    []*current.IPConfig{{Interface: &idx, Address: *podnet.HostNet(pn.IP), Gateway: podnet.GatewayIP.AsSlice()}},
		Routes: []*types.Route{{Dst: net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, GW: podnet.GatewayIP.AsSlice()}},
		DNS:    cfg.Raw.DNS,
	}
}

// Del removes the attachment. Idempotent, and it never enters the pod's
// netns: removing the host veth takes the pod side with it (and its lo with
// the netns), so DEL works the same when the netns is already gone. The
// hostPorts go first, as a chained portmap's DEL ran before flatnet's.
func Del(args *skel.CmdArgs) error {
	start := time.Now()
	cfg, err := cniconf.ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	err = del(args, cfg)
	report(cfg.AgentSocket, "DEL", start, err)
	return err
}

func del(args *skel.CmdArgs, cfg *cniconf.Config) error {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if len(cfg.PortMappings()) > 0 {
		if err := portmapDel(ctx, cfg); err != nil {
			return types.NewError(types.ErrInternal, fmt.Sprintf("tear down pod network for %s: %v", args.ContainerID, err), "")
		}
	}
	store := nodealloc.New(cfg.DataDir)
	att := nodealloc.Attachment{ContainerID: args.ContainerID, IfName: args.IfName}
	// From here until the release, an ADD finding the block full waits for
	// this address rather than failing.
	defer store.BeginRelease(att)()
	addr, _, err := store.Get(ctx, att)
	if err != nil {
		return types.NewError(types.ErrInternal, fmt.Sprintf("look up the address of %s/%s: %v", args.ContainerID, args.IfName, err), "")
	}
	if err := podnet.Teardown(args.ContainerID, args.IfName, addr, cfg.Uplink); err != nil {
		return types.NewError(types.ErrInternal, fmt.Sprintf("tear down pod network for %s: %v", args.ContainerID, err), "")
	}
	if cfg.AgentSocket != "" {
		// Best effort: a stopped agent must not wedge pod deletion; it
		// reconciles its endpoints against the pods when it comes back.
		_ = endpointapi.NewClient(cfg.AgentSocket, 2*time.Second).DeleteEndpoint(ctx, args.ContainerID)
	}
	// Released last, so the address is never handed out while its old
	// plumbing still exists. With its own bound: once the plumbing is gone the
	// release must not fail for the time the teardown took (many pods deleted
	// at once queue on the kernel's RTNL lock, then on the IPAM lock).
	rctx, rcancel := context.WithTimeout(context.Background(), opTimeout)
	defer rcancel()
	if _, _, err := store.Release(rctx, att); err != nil {
		return types.NewError(types.ErrInternal, fmt.Sprintf("release the address of %s/%s: %v", args.ContainerID, args.IfName, err), "")
	}
	return nil
}

// Check verifies the attachment against the previous result and the node.
func Check(args *skel.CmdArgs) error {
	cfg, err := cniconf.ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if err := version.ParsePrevResult(&cfg.Raw.PluginConf); err != nil {
		return types.NewError(types.ErrDecodingFailure, fmt.Sprintf("prevResult: %v", err), "")
	}
	if cfg.Raw.PrevResult == nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "prevResult: missing; CHECK needs the result of ADD", "")
	}
	prev, err := current.NewResultFromResult(cfg.Raw.PrevResult)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, fmt.Sprintf("prevResult: %v", err), "")
	}
	var want netip.Addr
	for _, ipc := range prev.IPs {
		if a, ok := netip.AddrFromSlice(ipc.Address.IP.To4()); ok {
			want = a
		}
	}
	if !want.IsValid() {
		return types.NewError(types.ErrInvalidNetworkConfig, "prevResult.ips: no IPv4 address", "")
	}
	store := nodealloc.New(cfg.DataDir)
	got, ok, err := store.Get(ctx, nodealloc.Attachment{ContainerID: args.ContainerID, IfName: args.IfName})
	if err != nil {
		return types.NewError(types.ErrInternal, err.Error(), "")
	}
	if !ok || got != want {
		return types.NewError(types.ErrInternal, fmt.Sprintf("allocation of %s/%s: holds %v, prevResult says %s", args.ContainerID, args.IfName, got, want), "")
	}
	up, err := podnet.FindUplink(cfg.Uplink, cfg.Layout.Subnet)
	if err != nil {
		return types.NewError(types.ErrInvalidNetworkConfig, err.Error(), "")
	}
	podNS, err := ns.GetNS(args.Netns)
	if err != nil {
		return types.NewError(types.ErrInvalidNetNS, fmt.Sprintf("open pod netns %q: %v", args.Netns, err), "")
	}
	defer podNS.Close()
	if err := podnet.Check(podNS, args.ContainerID, args.IfName, want, up); err != nil {
		return types.NewError(types.ErrInternal, "check "+args.ContainerID+": "+err.Error(), "")
	}
	if len(cfg.PortMappings()) > 0 {
		if err := portmapCheck(ctx, cfg); err != nil {
			return types.NewError(types.ErrInternal, "check "+args.ContainerID+": "+err.Error(), "")
		}
	}
	return nil
}

// Status reports whether the plugin can take ADDs: config valid, uplink on
// the subnet, allocator state usable, agent answering.
func Status(args *skel.CmdArgs) error {
	cfg, err := cniconf.ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := podnet.FindUplink(cfg.Uplink, cfg.Layout.Subnet); err != nil {
		return types.NewError(errPluginNotAvailable, err.Error(), "")
	}
	if err := nodealloc.New(cfg.DataDir).CheckWritable(ctx); err != nil {
		return types.NewError(errPluginNotAvailable, err.Error(), "")
	}
	if cfg.AgentSocket != "" {
		if err := endpointapi.NewClient(cfg.AgentSocket, 2*time.Second).Healthz(ctx); err != nil {
			return types.NewError(errPluginNotAvailable, err.Error(), "")
		}
	}
	return nil
}

// GC releases the allocations and host plumbing of every attachment not in
// the runtime's valid list.
func GC(args *skel.CmdArgs) error {
	cfg, err := cniconf.ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	valid := make([]nodealloc.Attachment, 0, len(cfg.Raw.ValidAttachments))
	for _, a := range cfg.Raw.ValidAttachments {
		valid = append(valid, nodealloc.Attachment{ContainerID: a.ContainerID, IfName: a.IfName})
	}
	if cfg.AgentSocket != "" {
		// As in DEL, the agent forgets the endpoints first (best effort: the
		// agent also collects endpoints whose address is gone, and an ADD that
		// is given such an address replaces the stale endpoint).
		if all, err := nodealloc.New(cfg.DataDir).List(ctx); err == nil {
			c := endpointapi.NewClient(cfg.AgentSocket, 2*time.Second)
			for _, a := range all {
				if !slices.Contains(valid, a.Attachment) {
					_ = c.DeleteEndpoint(ctx, a.ContainerID)
				}
			}
		}
	}
	_, err = reconcile(ctx, cfg.DataDir, cfg.Uplink, valid)
	if err != nil {
		return types.NewError(types.ErrInternal, err.Error(), "")
	}
	return nil
}

// reconcile keeps only the valid attachments: it releases every other
// allocation and removes every flatnet host veth (and proxy neighbour) that
// belongs to no valid attachment, including veths whose allocation was lost.
func reconcile(ctx context.Context, dataDir, uplink string, valid []nodealloc.Attachment) ([]nodealloc.Allocation, error) {
	store := nodealloc.New(dataDir)
	all, err := store.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("list allocations: %w", err)
	}
	keep := make(map[string]bool, len(valid))
	for _, a := range valid {
		keep[podnet.HostVethName(a.ContainerID, a.IfName)] = true
	}
	var errs []error
	// Plumbing first, then the addresses, as in DEL.
	for _, a := range all {
		if !keep[podnet.HostVethName(a.ContainerID, a.IfName)] {
			if err := podnet.Teardown(a.ContainerID, a.IfName, a.IP, uplink); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := podnet.RemoveOrphanVeths(keep); err != nil {
		errs = append(errs, err)
	}
	released, err := store.GC(ctx, valid)
	if err != nil {
		errs = append(errs, fmt.Errorf("release stale allocations: %w", err))
	}
	return released, errors.Join(errs...)
}

// podArgs reads K8S_POD_NAMESPACE and K8S_POD_NAME from CNI_ARGS
// ("K1=V1;K2=V2"), ignoring every other key.
func podArgs(cniArgs string) (namespace, name string) {
	for _, kv := range strings.Split(cniArgs, ";") {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "K8S_POD_NAMESPACE":
			namespace = v
		case "K8S_POD_NAME":
			name = v
		}
	}
	return namespace, name
}
