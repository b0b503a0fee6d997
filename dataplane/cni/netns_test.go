package cni_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/flatnet/flatnet/dataplane/endpointapi"
	"github.com/flatnet/flatnet/dataplane/ipam"
	"github.com/flatnet/flatnet/dataplane/podnet"
	"github.com/flatnet/flatnet/dataplane/podnet/podnettest"
)

var blockA = ipam.Block{Index: -1, First: netip.MustParseAddr("10.224.0.32"), Size: 30}

func TestAddCheckDel(t *testing.T) {
	n := newNode(t, "node-a", "10.224.0.2/16", blockA)
	ag := startAgent(t, n)
	pod := podnettest.NewNS(t)

	r, err := n.add(n.conflist(nil), "c1", pod)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	ip := resultIP(t, r)
	if !blockA.Contains(ip) {
		t.Fatalf("pod address %s outside the node's block %s", ip, blockA)
	}
	if len(r.Routes) != 1 || r.Routes[0].GW.String() != podnet.GatewayIP.String() || r.Routes[0].Dst.String() != "0.0.0.0/0" {
		t.Errorf("result routes %v, want default via %s", r.Routes, podnet.GatewayIP)
	}

	// What the plumbing looks like from both ends is podnet's test
	// (TestSetupCheckTeardown); here: the pod's lo is up with no loopback plugin in the list,
	// and the node holds the attachment's veth, route and proxy entry.
	hostVeth := podnet.HostVethName("c1", "eth0")
	if err := pod.Do(func(ns.NetNS) error {
		lo, err := netlink.LinkByName("lo")
		if err != nil || lo.Attrs().Flags&net.FlagUp == 0 {
			return fmt.Errorf("lo is not up in the pod (flatnet sets it up): %v", err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	s := n.state()
	if !slices.Equal(s.Veths, []string{hostVeth}) || !slices.Equal(s.Routes, []string{ip.String() + "/32"}) || !slices.Equal(s.Proxies, []netip.Addr{ip}) {
		t.Fatalf("host state %+v, want veth %s with route %s/32 and a proxy entry for it on eth0", s, hostVeth, ip)
	}

	// The agent heard of the endpoint before ADD returned, with the host veth
	// it must attach to, in the ADD's one call to it, which also carries the
	// ADD's start for the agent's latency metric.
	ag.mu.Lock()
	ep, ok := ag.eps["c1"]
	addCalls := slices.Clone(ag.calls)
	ag.mu.Unlock()
	if want := []string{"PUT /v1/endpoints/c1 +started +phases=prepare,ipam,setup +sched"}; !slices.Equal(addCalls, want) {
		t.Errorf("ADD called the agent %q, want only %q", addCalls, want)
	}
	if !ok || ep.HostIfName != hostVeth || ep.IP != ip || ep.PodName != "pod-c1" || ep.PodNamespace != "default" || ep.HostIfIndex <= 0 {
		t.Fatalf("agent got endpoint %+v (registered %v), want %s on %s for default/pod-c1", ep, ok, ip, hostVeth)
	}

	if err := n.check("c1", pod); err != nil {
		t.Fatalf("CHECK of a healthy attachment: %v", err)
	}
	// CHECK notices when other nodes can no longer reach the pod.
	n.Do(func() error {
		up, _ := netlink.LinkByName("eth0")
		return netlink.NeighDel(&netlink.Neigh{LinkIndex: up.Attrs().Index, Family: unix.AF_INET, Flags: netlink.NTF_PROXY, IP: ip.AsSlice()})
	})
	if err := n.check("c1", pod); err == nil || !strings.Contains(err.Error(), "proxy neighbour") {
		t.Fatalf("CHECK after removing the proxy entry: %v, want an error naming the proxy neighbour", err)
	}

	if err := n.del("c1", pod.Path()); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	n.requireClean("after DEL")
	if got := podnettest.Links(t, pod); !slices.Equal(got, []string{"lo"}) {
		t.Errorf("pod netns after DEL has %v, want only lo", got)
	}
	if err := n.del("c1", pod.Path()); err != nil {
		t.Fatalf("second DEL: %v", err)
	}
	if err := n.del("never-added", ""); err != nil {
		t.Fatalf("DEL of an unknown container: %v", err)
	}
	ag.mu.Lock()
	defer ag.mu.Unlock()
	if len(ag.eps) != 0 || !slices.Contains(ag.deleted, "c1") {
		t.Errorf("agent endpoints after DEL: %v (deleted %v)", ag.eps, ag.deleted)
	}
	if !slices.ContainsFunc(ag.obs, func(o endpointapi.Observation) bool { return o.Op == "DEL" && o.OK && o.Seconds > 0 }) {
		t.Errorf("agent got no DEL observation: %+v", ag.obs)
	}
}

func TestDelAfterNetnsRemoved(t *testing.T) {
	n := newNode(t, "node-a", "10.224.0.2/16", blockA)
	pod := podnettest.NewNS(t)
	n.mustAdd("c1", pod)
	path := pod.Path()
	pod.Close()
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil {
		t.Fatal(err)
	}
	os.Remove(path)
	if err := n.del("c1", path); err != nil {
		t.Fatalf("DEL after the netns is gone: %v", err)
	}
	n.requireClean("DEL after netns removal")
	if err := n.del("c1", path); err != nil {
		t.Fatalf("second DEL: %v", err)
	}
}

func TestConcurrentAddsNeverShareAnAddress(t *testing.T) {
	const pods = 100
	n := newNode(t, "node-a", "10.224.0.2/16", ipam.Block{Index: -1, First: netip.MustParseAddr("10.224.1.0"), Size: 250})
	list := n.conflist(nil)
	netnses := make([]ns.NetNS, pods)
	for i := range netnses {
		netnses[i] = podnettest.NewNS(t)
	}
	ips := make([]netip.Addr, pods)
	errs := make([]error, pods)
	var wg sync.WaitGroup
	for i := range pods {
		wg.Go(func() {
			errs[i] = n.NS.Do(func(ns.NetNS) error {
				res, err := n.cniConfig().AddNetworkList(context.Background(), list, rt(fmt.Sprintf("c%03d", i), netnses[i]))
				if err != nil {
					return err
				}
				r, err := current.NewResultFromResult(res)
				if err != nil || len(r.IPs) != 1 {
					return fmt.Errorf("result %v: %v", res, err)
				}
				ips[i], _ = netip.AddrFromSlice(r.IPs[0].Address.IP.To4())
				return nil
			})
		})
	}
	wg.Wait()
	seen := map[netip.Addr]int{}
	for i, err := range errs {
		if err != nil {
			t.Fatalf("ADD %d: %v", i, err)
		}
		if j, dup := seen[ips[i]]; dup {
			t.Fatalf("pods %d and %d both got %s", j, i, ips[i])
		}
		seen[ips[i]] = i
	}
	if s := n.state(); len(s.Veths) != pods || len(s.Proxies) != pods {
		t.Fatalf("%d veths and %d proxy entries for %d pods", len(s.Veths), len(s.Proxies), pods)
	}
	if a := n.allocations(); len(a) != pods {
		t.Fatalf("%d allocations for %d pods", len(a), pods)
	}
	ids := make([]string, pods)
	for i := range ids {
		ids[i] = fmt.Sprintf("c%03d", i)
	}
	for i, err := range n.delAll(ids, netnses) {
		if err != nil {
			t.Errorf("DEL %d: %v", i, err)
		}
	}
	n.requireClean("after 100 concurrent DELs")
}

func (n *node) delNoFail(id, path string) error {
	return n.NS.Do(func(ns.NetNS) error {
		return n.cniConfig().DelNetworkList(context.Background(), n.conflist(nil), &libcni.RuntimeConf{ContainerID: id, NetNS: path, IfName: "eth0"})
	})
}

func TestExhaustionNamesNodeBlockSizeAndFix(t *testing.T) {
	block := ipam.Block{Index: -1, First: netip.MustParseAddr("10.224.0.32"), Size: 10}
	n := newNode(t, "node-x", "10.224.0.2/16", block)
	for i := range block.Size {
		n.mustAdd(fmt.Sprintf("c%d", i), podnettest.NewNS(t))
	}
	pod := podnettest.NewNS(t)
	_, err := n.add(n.conflist(nil), "one-too-many", pod)
	if err == nil {
		t.Fatal("ADD beyond the block succeeded")
	}
	e := cniError(t, err)
	if e.Code != types.ErrTryAgainLater {
		t.Errorf("exhaustion code %d, want %d (try again later: a pod deletion frees an address)", e.Code, types.ErrTryAgainLater)
	}
	for _, want := range []string{`node "node-x"`, "all 10 addresses", "blockSize", "maxPods"} {
		if !strings.Contains(e.Msg, want) {
			t.Errorf("exhaustion message %q does not mention %q", e.Msg, want)
		}
	}
	if got := podnettest.Links(t, pod); !slices.Equal(got, []string{"lo"}) {
		t.Errorf("refused pod's netns has %v, want only lo", got)
	}
	if s := n.state(); len(s.Veths) != block.Size {
		t.Errorf("%d veths after a refused ADD, want %d", len(s.Veths), block.Size)
	}
	// A DEL frees an address for the next pod.
	if err := n.del("c3", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := n.add(n.conflist(nil), "one-too-many", pod); err != nil {
		t.Fatalf("ADD after a DEL: %v", err)
	}
}

// The kubelet admits a pod in the slot of a deleted one before the runtime's
// DEL has released its address: the ADD on the full block waits for that
// address instead of failing into the kubelet's back-off.
func TestAddOnAFullBlockTakesTheAddressOfAPodBeingDeleted(t *testing.T) {
	block := ipam.Block{Index: -1, First: netip.MustParseAddr("10.224.0.32"), Size: 10}
	n := newNode(t, "node-x", "10.224.0.2/16", block)
	var leaving netip.Addr
	for i := range block.Size {
		ip := n.mustAdd(fmt.Sprintf("c%d", i), podnettest.NewNS(t))
		if i == 6 {
			leaving = ip
		}
	}
	deleted := make(chan error, 1)
	go func() {
		time.Sleep(500 * time.Millisecond) // the ADD below finds the block full first
		deleted <- n.del("c6", "")
	}()
	r, err := n.add(n.conflist(nil), "in-c6s-slot", podnettest.NewNS(t))
	if derr := <-deleted; derr != nil {
		t.Fatalf("DEL c6: %v", derr)
	}
	if err != nil {
		t.Fatalf("ADD while c6 is being deleted: %v", err)
	}
	if got := resultIP(t, r); got != leaving {
		t.Fatalf("ADD got %s, want c6's released %s", got, leaving)
	}
}

func TestBadConfigLeavesNothingBehind(t *testing.T) {
	n := newNode(t, "node-a", "10.224.0.40/16", ipam.Block{Index: -1, First: netip.MustParseAddr("10.224.0.62"), Size: 30})
	for _, c := range []struct {
		name  string
		edit  func(map[string]any)
		code  uint
		field string
	}{
		{"block not a JSON object", func(c map[string]any) { c["block"] = "10.224.0.62" }, types.ErrDecodingFailure, "block"},
		{"missing nodeName", func(c map[string]any) { delete(c, "nodeName") }, types.ErrInvalidNetworkConfig, "nodeName"},
		{"missing subnet", func(c map[string]any) { delete(c, "subnet") }, types.ErrInvalidNetworkConfig, "subnet"},
		{"subnet not a CIDR", func(c map[string]any) { c["subnet"] = "10.224.0.0" }, types.ErrInvalidNetworkConfig, "subnet"},
		{"subnet without the node", func(c map[string]any) {
			c["subnet"], c["gateway"], c["dockerRange"] = "10.225.0.0/16", "10.225.0.1", "10.225.0.0/27"
			c["block"] = map[string]any{"first": "10.225.0.32", "size": 30}
		}, types.ErrInvalidNetworkConfig, "does not contain the node"},
		{"block size below 10", func(c map[string]any) { c["block"] = map[string]any{"first": "10.224.0.62", "size": 9} }, types.ErrInvalidNetworkConfig, "block.size"},
		{"block size above 250", func(c map[string]any) { c["block"] = map[string]any{"first": "10.224.0.62", "size": 251} }, types.ErrInvalidNetworkConfig, "block.size"},
		{"missing block", func(c map[string]any) { delete(c, "block") }, types.ErrInvalidNetworkConfig, "block.first"},
		{"block over docker's range", func(c map[string]any) { c["block"] = map[string]any{"first": "10.224.0.20", "size": 30} }, types.ErrInvalidNetworkConfig, "dockerRange"},
		{"block holding the node's IP", func(c map[string]any) { c["block"] = map[string]any{"first": "10.224.0.32", "size": 30} }, types.ErrInvalidNetworkConfig, "node's own address"},
		{"block outside the subnet", func(c map[string]any) { c["block"] = map[string]any{"first": "10.225.0.32", "size": 30} }, types.ErrInvalidNetworkConfig, "not inside subnet"},
		{"unknown uplink", func(c map[string]any) { c["uplink"] = "nope0" }, types.ErrInvalidNetworkConfig, "uplink"},
		{"mtu too small", func(c map[string]any) { c["mtu"] = 100 }, types.ErrInvalidNetworkConfig, "mtu"},
		{"relative dataDir", func(c map[string]any) { c["dataDir"] = "state" }, types.ErrInvalidNetworkConfig, "dataDir"},
	} {
		t.Run(c.name, func(t *testing.T) {
			pod := podnettest.NewNS(t)
			_, err := n.add(n.conflist(c.edit), "bad", pod)
			if err == nil {
				t.Fatal("ADD succeeded")
			}
			e := cniError(t, err)
			if e.Code != c.code || !strings.Contains(e.Msg, c.field) {
				t.Errorf("error code %d %q, want code %d naming %q", e.Code, e.Msg, c.code, c.field)
			}
			if got := podnettest.Links(t, pod); !slices.Equal(got, []string{"lo"}) {
				t.Errorf("pod netns has %v, want only lo", got)
			}
			n.requireClean(c.name)
		})
	}
}

func TestUnknownCNIVersionIsRefused(t *testing.T) {
	n := newNode(t, "node-a", "10.224.0.2/16", blockA)
	pod := podnettest.NewNS(t)
	conf := n.netConf()
	conf["cniVersion"], conf["name"] = "9.9.9", "flatnet"
	b := mustJSON(t, conf)
	pc, err := libcni.NetworkPluginConfFromBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	var addErr error
	n.Do(func() error {
		_, addErr = n.cniConfig().AddNetwork(context.Background(), pc, rt("c1", pod))
		return nil
	})
	if addErr == nil {
		t.Fatal("ADD with cniVersion 9.9.9 succeeded")
	}
	if e := cniError(t, addErr); e.Code != types.ErrIncompatibleCNIVersion {
		t.Errorf("code %d (%s), want %d", e.Code, e.Msg, types.ErrIncompatibleCNIVersion)
	}
	n.requireClean("unknown version")
}

func TestAgentRefusalUndoesAdd(t *testing.T) {
	n := newNode(t, "node-a", "10.224.0.2/16", blockA)
	ag := startAgent(t, n)
	ag.refuse = fmt.Errorf("policy not ready")
	pod := podnettest.NewNS(t)
	_, err := n.add(n.conflist(nil), "c1", pod)
	if err == nil || !strings.Contains(err.Error(), "policy not ready") {
		t.Fatalf("ADD with a refusing agent: %v", err)
	}
	n.requireClean("refused by the agent")
	if got := podnettest.Links(t, pod); !slices.Equal(got, []string{"lo"}) {
		t.Errorf("pod netns has %v, want only lo", got)
	}
}

// TestKilledPluginMidAdd kills the plugin while it waits for the agent (veth
// made, address held, no result yet), as a node crash would. The runtime's
// retried ADD must reuse the address and rebuild cleanly; DEL then removes all.
// A kill during the allocator's own write is covered in nodealloc's tests.
func TestKilledPluginMidAdd(t *testing.T) {
	n := newNode(t, "node-a", "10.224.0.2/16", blockA)
	ag := startAgent(t, n)
	ag.stall, ag.entered = make(chan struct{}), make(chan string, 1)
	pod := podnettest.NewNS(t)

	stdin := mustJSON(t, mergeMap(n.netConf(), map[string]any{"cniVersion": "1.1.0", "name": "flatnet"}))
	var cmd *exec.Cmd
	n.Do(func() error {
		cmd = exec.Command(pluginDir + "/flatnet")
		cmd.Env = []string{"CNI_COMMAND=ADD", "CNI_CONTAINERID=c1", "CNI_NETNS=" + pod.Path(), "CNI_IFNAME=eth0", "CNI_PATH=" + pluginDir}
		cmd.Stdin = strings.NewReader(string(stdin))
		return cmd.Start()
	})
	select {
	case <-ag.entered:
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		t.Fatal("plugin never reached the agent")
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	close(ag.stall)
	held := n.allocations()
	if s := n.state(); len(held) != 1 || len(s.Veths) != 1 {
		t.Fatalf("after the kill: allocations %v, state %+v; want one of each (the test must catch the plugin mid-flight)", held, s)
	}
	ag.mu.Lock()
	ag.stall = nil
	ag.mu.Unlock()

	r, err := n.add(n.conflist(nil), "c1", pod)
	if err != nil {
		t.Fatalf("retried ADD: %v", err)
	}
	if ip := resultIP(t, r); ip != held[0].IP {
		t.Errorf("retried ADD got %s, want the address already held, %s", ip, held[0].IP)
	}
	if s := n.state(); len(s.Veths) != 1 || len(n.allocations()) != 1 {
		t.Errorf("after the retry: %+v, %v", s, n.allocations())
	}
	if err := n.check("c1", pod); err != nil {
		t.Errorf("CHECK after the retry: %v", err)
	}
	if err := n.del("c1", pod.Path()); err != nil {
		t.Fatal(err)
	}
	n.requireClean("DEL after a killed ADD")
}

func TestGCReleasesWhatTheRuntimeNoLongerHas(t *testing.T) {
	n := newNode(t, "node-a", "10.224.0.2/16", blockA)
	ag := startAgent(t, n)
	pods := []ns.NetNS{podnettest.NewNS(t), podnettest.NewNS(t), podnettest.NewNS(t)}
	var ips []netip.Addr
	for i, p := range pods {
		ips = append(ips, n.mustAdd(fmt.Sprintf("c%d", i), p))
	}
	// An orphan veth of flatnet's naming whose allocation is gone.
	orphan := podnet.HostVethName("lost", "eth0")
	n.Do(func() error {
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: orphan}, PeerName: "lostpeer"})
	})

	// A fresh cache dir: libcni cannot DEL for us, so the plugin's GC does the work.
	cache := n.cache
	n.cache = t.TempDir()
	var err error
	n.Do(func() error {
		err = n.cniConfig().GCNetworkList(context.Background(), n.conflist(nil), &libcni.GCArgs{
			ValidAttachments: []types.GCAttachment{{ContainerID: "c1", IfName: "eth0"}},
		})
		return nil
	})
	n.cache = cache
	if err != nil {
		t.Fatalf("GC: %v", err)
	}
	s := n.state()
	if !slices.Equal(s.Veths, []string{podnet.HostVethName("c1", "eth0")}) || !slices.Equal(s.Proxies, []netip.Addr{ips[1]}) {
		t.Errorf("after GC: %+v, want only c1's veth and proxy entry %s", s, ips[1])
	}
	if a := n.allocations(); len(a) != 1 || a[0].ContainerID != "c1" {
		t.Errorf("allocations after GC: %v, want only c1", a)
	}
	if err := n.check("c1", pods[1]); err != nil {
		t.Errorf("CHECK of the kept attachment after GC: %v", err)
	}
	// The agent is told, as for a DEL: no endpoint outlives its address.
	ag.mu.Lock()
	deleted := slices.Sorted(slices.Values(ag.deleted))
	_, kept := ag.eps["c1"]
	ag.mu.Unlock()
	if !slices.Equal(deleted, []string{"c0", "c2"}) || !kept {
		t.Errorf("agent: endpoints deleted %v (c1 kept: %v), want c0 and c2 deleted, c1 kept", deleted, kept)
	}
}

func TestStatusAndVersion(t *testing.T) {
	n := newNode(t, "node-a", "10.224.0.2/16", blockA)
	startAgent(t, n)
	var err error
	n.Do(func() error {
		err = n.cniConfig().GetStatusNetworkList(context.Background(), n.conflist(nil))
		return nil
	})
	if err != nil {
		t.Fatalf("STATUS with a running agent: %v", err)
	}
	os.Remove(n.socket)
	n.Do(func() error {
		err = n.cniConfig().GetStatusNetworkList(context.Background(), n.conflist(nil))
		return nil
	})
	if err == nil {
		t.Fatal("STATUS succeeded with no agent answering")
	}
	if e := cniError(t, err); e.Code != 50 {
		t.Errorf("STATUS without agent: code %d, want 50 (plugin not available)", e.Code)
	}
	info, err := n.cniConfig().GetVersionInfo(context.Background(), "flatnet")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(info.SupportedVersions(), "1.1.0") {
		t.Errorf("VERSION: %v lacks 1.1.0", info.SupportedVersions())
	}
}

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mergeMap(a, b map[string]any) map[string]any {
	for k, v := range b {
		a[k] = v
	}
	return a
}

// TestAddWaitsForARestartingAgent: an agent that is not listening yet (a
// rollout) delays ADD instead of failing it; one that answers with a refusal
// fails it at once (TestAgentRefusalUndoesAdd).
func TestAddWaitsForARestartingAgent(t *testing.T) {
	n := newNode(t, "node-a", "10.224.0.2/16", blockA)
	n.socket = t.TempDir() + "/agent.sock"
	pod := podnettest.NewNS(t)
	done := make(chan error, 1)
	go func() {
		_, err := n.add(n.conflist(nil), "c1", pod)
		done <- err
	}()
	time.Sleep(1500 * time.Millisecond)
	select {
	case err := <-done:
		t.Fatalf("ADD returned while no agent listened: %v", err)
	default:
	}
	ag := startAgentAt(t, n.socket)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("ADD after the agent came up: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("ADD still waiting 15s after the agent came up")
	}
	ag.mu.Lock()
	defer ag.mu.Unlock()
	if _, ok := ag.eps["c1"]; !ok {
		t.Fatal("the agent never got the endpoint")
	}
}

// TestAddWaitsForABusyAgent: an agent that accepted the PUT but answers late
// (attaching a burst of pods) is waited for, longer than an unreachable one
// would be, and the PUT is not sent again: giving up would throw the agent's
// work away and fail the ADD into the runtime's back-off.
func TestAddWaitsForABusyAgent(t *testing.T) {
	n := newNode(t, "node-a", "10.224.0.2/16", blockA)
	ag := startAgent(t, n)
	ag.stall, ag.entered = make(chan struct{}), make(chan string, 1)
	pod := podnettest.NewNS(t)
	done := make(chan error, 1)
	go func() {
		_, err := n.add(n.conflist(nil), "c1", pod)
		done <- err
	}()
	select {
	case <-ag.entered:
	case <-time.After(20 * time.Second):
		t.Fatal("the plugin never reached the agent")
	}
	// Longer than the plugin tries to reach an agent that does not listen.
	time.Sleep(11 * time.Second)
	select {
	case err := <-done:
		t.Fatalf("ADD returned while the agent was still working on its PUT: %v", err)
	default:
	}
	close(ag.stall)
	if err := <-done; err != nil {
		t.Fatalf("ADD answered late by the agent: %v", err)
	}
	ag.mu.Lock()
	defer ag.mu.Unlock()
	if _, ok := ag.eps["c1"]; !ok || !slices.Equal(ag.calls, []string{"PUT /v1/endpoints/c1 +started +phases=prepare,ipam,setup +sched"}) {
		t.Errorf("agent registered c1: %v, calls %q; want it registered by one PUT", ok, ag.calls)
	}
}
