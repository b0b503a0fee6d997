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

	"github.com/flatnet/flatnet/dataplane/cni"
	"github.com/flatnet/flatnet/dataplane/endpointapi"
	"github.com/flatnet/flatnet/dataplane/ipam"
	"github.com/flatnet/flatnet/internal/testenv"
)

var blockA = ipam.Block{Index: -1, First: netip.MustParseAddr("10.224.0.32"), Size: 30}

func TestAddCheckDel(t *testing.T) {
	n := newNode(t, "node-a", "10.224.0.2/16", blockA)
	ag := startAgent(t, n)
	pod := newNS(t)

	r, err := n.add(n.conflist(nil), "c1", pod)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	ip := resultIP(t, r)
	if !blockA.Contains(ip) {
		t.Fatalf("pod address %s outside the node's block %s", ip, blockA)
	}
	if len(r.Routes) != 1 || r.Routes[0].GW.String() != cni.GatewayIP.String() || r.Routes[0].Dst.String() != "0.0.0.0/0" {
		t.Errorf("result routes %v, want default via %s", r.Routes, cni.GatewayIP)
	}

	// Pod side, read back from the kernel.
	hostVeth := cni.HostVethName("c1", "eth0")
	var hostMAC net.HardwareAddr
	n.do(func() error {
		l, err := netlink.LinkByName(hostVeth)
		if err != nil {
			return err
		}
		hostMAC = l.Attrs().HardwareAddr
		return nil
	})
	if err := pod.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		addrs, _ := netlink.AddrList(l, netlink.FAMILY_V4)
		if len(addrs) != 1 || addrs[0].IPNet.String() != ip.String()+"/32" {
			return fmt.Errorf("pod eth0 addresses %v, want only %s/32", addrs, ip)
		}
		routes, _ := netlink.RouteList(l, netlink.FAMILY_V4)
		var def, gw bool
		for _, r := range routes {
			def = def || (r.Dst == nil || r.Dst.String() == "0.0.0.0/0") && r.Gw.String() == cni.GatewayIP.String()
			gw = gw || r.Dst != nil && r.Dst.String() == cni.GatewayIP.String()+"/32" && r.Scope == netlink.SCOPE_LINK
		}
		if !def || !gw {
			return fmt.Errorf("pod routes %v: want default via %s and %s/32 scope link", routes, cni.GatewayIP, cni.GatewayIP)
		}
		neighs, _ := netlink.NeighList(l.Attrs().Index, unix.AF_INET)
		ok := slices.ContainsFunc(neighs, func(nb netlink.Neigh) bool {
			return nb.IP.String() == cni.GatewayIP.String() && nb.HardwareAddr.String() == hostMAC.String() && nb.State == netlink.NUD_PERMANENT
		})
		if !ok {
			return fmt.Errorf("pod neighbours %v: want %s -> %s PERMANENT", neighs, cni.GatewayIP, hostMAC)
		}
		lo, err := netlink.LinkByName("lo")
		if err != nil || lo.Attrs().Flags&net.FlagUp == 0 {
			return fmt.Errorf("lo is not up in the pod (chained loopback): %v", err)
		}
		// IPv4-only: the datapath drops IPv6 frames, so the pod's kernel sends none.
		if v6, _ := netlink.AddrList(l, netlink.FAMILY_V6); len(v6) != 0 {
			return fmt.Errorf("pod eth0 IPv6 addresses %v, want none", v6)
		}
		if b, err := os.ReadFile("/proc/sys/net/ipv6/conf/eth0/disable_ipv6"); err != nil || strings.TrimSpace(string(b)) != "1" {
			return fmt.Errorf("pod eth0 disable_ipv6 = %q (%v), want 1", b, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	n.do(func() error {
		b, err := os.ReadFile("/proc/sys/net/ipv6/conf/" + hostVeth + "/disable_ipv6")
		if err != nil || strings.TrimSpace(string(b)) != "1" {
			return fmt.Errorf("host veth disable_ipv6 = %q (%v), want 1", b, err)
		}
		return nil
	})

	// Host side.
	s := n.state()
	if !slices.Equal(s.veths, []string{hostVeth}) || !slices.Equal(s.routes, []string{ip.String() + "/32"}) || !slices.Equal(s.proxies, []netip.Addr{ip}) {
		t.Fatalf("host state %+v, want veth %s with route %s/32 and a proxy entry for it on eth0", s, hostVeth, ip)
	}
	n.do(func() error {
		for file, want := range map[string]string{
			"/proc/sys/net/ipv4/ip_forward":                      "1",
			"/proc/sys/net/ipv4/neigh/eth0/proxy_delay":          "0",
			"/proc/sys/net/ipv4/conf/" + hostVeth + "/proxy_arp": "1",
		} {
			b, err := os.ReadFile(file)
			if err != nil || strings.TrimSpace(string(b)) != want {
				return fmt.Errorf("%s = %q (%v), want %s", file, b, err, want)
			}
		}
		return nil
	})

	// The agent heard of the endpoint before ADD returned, with the host veth it must attach to.
	ag.mu.Lock()
	ep, ok := ag.eps["c1"]
	ag.mu.Unlock()
	if !ok || ep.HostIfName != hostVeth || ep.IP != ip || ep.PodName != "pod-c1" || ep.PodNamespace != "default" || ep.HostIfIndex <= 0 {
		t.Fatalf("agent got endpoint %+v (registered %v), want %s on %s for default/pod-c1", ep, ok, ip, hostVeth)
	}

	if err := n.check("c1", pod); err != nil {
		t.Fatalf("CHECK of a healthy attachment: %v", err)
	}
	// CHECK notices when other nodes can no longer reach the pod.
	n.do(func() error {
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
	if got := podLinks(t, pod); !slices.Equal(got, []string{"lo"}) {
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
	if !slices.ContainsFunc(ag.obs, func(o endpointapi.Observation) bool { return o.Op == "ADD" && o.OK && o.Seconds > 0 }) {
		t.Errorf("agent got no ADD observation: %+v", ag.obs)
	}
}

func TestDelAfterNetnsRemoved(t *testing.T) {
	n := newNode(t, "node-a", "10.224.0.2/16", blockA)
	pod := newNS(t)
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

// TestCrossNodeTraffic puts two nodes on one L2 segment (a veth pair as the
// docker bridge) and checks that pods reach each other and the other node
// directly: no routes on the other node, no encapsulation, only proxy ARP.
func TestCrossNodeTraffic(t *testing.T) {
	testenv.RequireRoot(t)
	a := &node{t: t, name: "node-a", ns: newNS(t), ip: netip.MustParsePrefix("10.224.0.2/16"), block: blockA, dataDir: t.TempDir(), cache: t.TempDir()}
	b := &node{t: t, name: "node-b", ns: newNS(t), ip: netip.MustParsePrefix("10.224.0.3/16"),
		block: ipam.Block{Index: -1, First: netip.MustParseAddr("10.224.0.62"), Size: 30}, dataDir: t.TempDir(), cache: t.TempDir()}
	a.do(func() error {
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(b.ns.Fd()))})
	})
	a.do(func() error { return addrUp("eth0", a.ip) })
	b.do(func() error { return addrUp("eth0", b.ip) })

	podA, podA2, podB := newNS(t), newNS(t), newNS(t)
	ipA := a.mustAdd("pa", podA)
	ipA2 := a.mustAdd("pa2", podA2)
	ipB := b.mustAdd("pb", podB)

	for _, c := range []struct {
		name     string
		from, to ns.NetNS
		dst      netip.Addr
	}{
		{"pod A -> pod B (other node)", podA, podB, ipB},
		{"pod B -> pod A (other node)", podB, podA, ipA},
		{"pod A -> pod A2 (same node)", podA, podA2, ipA2},
		{"node B -> pod A", b.ns, podA, ipA},
		{"pod A -> node B", podA, b.ns, b.ip.Addr()},
	} {
		if err := tcpEcho(c.from, c.to, c.dst); err != nil {
			t.Errorf("%s: %v", c.name, err)
		}
	}
	// Node B learnt pod A's address by ARP on its uplink, answered by node A:
	// the neighbour entry carries node A's uplink MAC, and node B has no route for it.
	var macA string
	a.do(func() error { l, err := netlink.LinkByName("eth0"); macA = l.Attrs().HardwareAddr.String(); return err })
	b.do(func() error {
		up, _ := netlink.LinkByName("eth0")
		neighs, _ := netlink.NeighList(up.Attrs().Index, unix.AF_INET)
		if !slices.ContainsFunc(neighs, func(nb netlink.Neigh) bool { return nb.IP.String() == ipA.String() && nb.HardwareAddr.String() == macA }) {
			return fmt.Errorf("node B neighbours %v: want %s at node A's MAC %s", neighs, ipA, macA)
		}
		routes, _ := netlink.RouteList(nil, netlink.FAMILY_V4)
		for _, r := range routes {
			if r.Dst != nil && r.Dst.Contains(ipA.AsSlice()) && r.Dst.String() != subnet {
				return fmt.Errorf("node B has a route %v for pod A's address", r)
			}
		}
		return nil
	})
}

// tcpEcho listens in `to` on dst:7777 and exchanges a line with it from `from`.
func tcpEcho(from, to ns.NetNS, dst netip.Addr) error {
	var l net.Listener
	if err := to.Do(func(ns.NetNS) (err error) {
		l, err = net.Listen("tcp4", netip.AddrPortFrom(dst, 7777).String())
		return err
	}); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 5)
		if _, err := c.Read(buf); err == nil {
			c.Write(buf)
		}
	}()
	return from.Do(func(ns.NetNS) error {
		c, err := net.DialTimeout("tcp4", netip.AddrPortFrom(dst, 7777).String(), 5*time.Second)
		if err != nil {
			return fmt.Errorf("connect: %w", err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte("hello")); err != nil {
			return err
		}
		buf := make([]byte, 5)
		if _, err := c.Read(buf); err != nil || string(buf) != "hello" {
			return fmt.Errorf("echo: %q %v", buf, err)
		}
		return nil
	})
}

func TestConcurrentAddsNeverShareAnAddress(t *testing.T) {
	const pods = 100
	n := newNode(t, "node-a", "10.224.0.2/16", ipam.Block{Index: -1, First: netip.MustParseAddr("10.224.1.0"), Size: 250})
	list := n.conflist(nil)
	netnses := make([]ns.NetNS, pods)
	for i := range netnses {
		netnses[i] = newNS(t)
	}
	ips := make([]netip.Addr, pods)
	errs := make([]error, pods)
	var wg sync.WaitGroup
	for i := range pods {
		wg.Go(func() {
			errs[i] = n.ns.Do(func(ns.NetNS) error {
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
	if s := n.state(); len(s.veths) != pods || len(s.proxies) != pods {
		t.Fatalf("%d veths and %d proxy entries for %d pods", len(s.veths), len(s.proxies), pods)
	}
	if a := n.allocations(); len(a) != pods {
		t.Fatalf("%d allocations for %d pods", len(a), pods)
	}
	for i := range pods {
		wg.Go(func() { errs[i] = n.delNoFail(fmt.Sprintf("c%03d", i), netnses[i].Path()) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("DEL %d: %v", i, err)
		}
	}
	n.requireClean("after 100 concurrent DELs")
}

func (n *node) delNoFail(id, path string) error {
	return n.ns.Do(func(ns.NetNS) error {
		return n.cniConfig().DelNetworkList(context.Background(), n.conflist(nil), &libcni.RuntimeConf{ContainerID: id, NetNS: path, IfName: "eth0"})
	})
}

func TestExhaustionNamesNodeBlockSizeAndFix(t *testing.T) {
	block := ipam.Block{Index: -1, First: netip.MustParseAddr("10.224.0.32"), Size: 10}
	n := newNode(t, "node-x", "10.224.0.2/16", block)
	for i := range block.Size {
		n.mustAdd(fmt.Sprintf("c%d", i), newNS(t))
	}
	pod := newNS(t)
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
	if got := podLinks(t, pod); !slices.Equal(got, []string{"lo"}) {
		t.Errorf("refused pod's netns has %v, want only lo", got)
	}
	if s := n.state(); len(s.veths) != block.Size {
		t.Errorf("%d veths after a refused ADD, want %d", len(s.veths), block.Size)
	}
	// A DEL frees an address for the next pod.
	if err := n.del("c3", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := n.add(n.conflist(nil), "one-too-many", pod); err != nil {
		t.Fatalf("ADD after a DEL: %v", err)
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
			pod := newNS(t)
			_, err := n.add(n.conflist(c.edit), "bad", pod)
			if err == nil {
				t.Fatal("ADD succeeded")
			}
			e := cniError(t, err)
			if e.Code != c.code || !strings.Contains(e.Msg, c.field) {
				t.Errorf("error code %d %q, want code %d naming %q", e.Code, e.Msg, c.code, c.field)
			}
			if got := podLinks(t, pod); !slices.Equal(got, []string{"lo"}) {
				t.Errorf("pod netns has %v, want only lo", got)
			}
			n.requireClean(c.name)
		})
	}
}

func TestUnknownCNIVersionIsRefused(t *testing.T) {
	n := newNode(t, "node-a", "10.224.0.2/16", blockA)
	pod := newNS(t)
	conf := n.netConf()
	conf["cniVersion"], conf["name"] = "9.9.9", "flatnet"
	b := mustJSON(t, conf)
	pc, err := libcni.NetworkPluginConfFromBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	var addErr error
	n.do(func() error {
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
	pod := newNS(t)
	_, err := n.add(n.conflist(nil), "c1", pod)
	if err == nil || !strings.Contains(err.Error(), "policy not ready") {
		t.Fatalf("ADD with a refusing agent: %v", err)
	}
	n.requireClean("refused by the agent")
	if got := podLinks(t, pod); !slices.Equal(got, []string{"lo"}) {
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
	pod := newNS(t)

	stdin := mustJSON(t, mergeMap(n.netConf(), map[string]any{"cniVersion": "1.1.0", "name": "flatnet"}))
	var cmd *exec.Cmd
	n.do(func() error {
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
	if s := n.state(); len(held) != 1 || len(s.veths) != 1 {
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
	if s := n.state(); len(s.veths) != 1 || len(n.allocations()) != 1 {
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
	pods := []ns.NetNS{newNS(t), newNS(t), newNS(t)}
	var ips []netip.Addr
	for i, p := range pods {
		ips = append(ips, n.mustAdd(fmt.Sprintf("c%d", i), p))
	}
	// An orphan veth of flatnet's naming whose allocation is gone.
	orphan := cni.HostVethName("lost", "eth0")
	n.do(func() error {
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: orphan}, PeerName: "lostpeer"})
	})

	// A fresh cache dir: libcni cannot DEL for us, so the plugin's GC does the work.
	cache := n.cache
	n.cache = t.TempDir()
	var err error
	n.do(func() error {
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
	if !slices.Equal(s.veths, []string{cni.HostVethName("c1", "eth0")}) || !slices.Equal(s.proxies, []netip.Addr{ips[1]}) {
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
	n.do(func() error {
		err = n.cniConfig().GetStatusNetworkList(context.Background(), n.conflist(nil))
		return nil
	})
	if err != nil {
		t.Fatalf("STATUS with a running agent: %v", err)
	}
	os.Remove(n.socket)
	n.do(func() error {
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
	pod := newNS(t)
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

// A node that came back with another MAC (Docker gives a restarted kind node a
// new one) leaves the other nodes with neighbour entries for its pods' addresses
// pointing at the old MAC: a new pod on such an address was unreachable from
// them until those entries failed and re-resolved (seen on kind as TIMEOUTs for
// ~15 s after a worker's restart). ADD announces the pod's address on the uplink.
func TestAddAnnouncesThePodAddress(t *testing.T) {
	n := newNode(t, "node-a", "10.224.0.2/16", blockA)
	startAgent(t, n)
	peer := newNS(t) // another node on the segment, holding stale entries
	var uplinkMAC net.HardwareAddr
	n.do(func() error {
		up, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		uplinkMAC = up.Attrs().HardwareAddr
		br, err := netlink.LinkByName("bridge0")
		if err != nil {
			return err
		}
		return netlink.LinkSetNsFd(br, int(peer.Fd()))
	})
	old := net.HardwareAddr{0x02, 0, 0, 0, 0xde, 0xad}
	if err := peer.Do(func(ns.NetNS) error {
		if err := addrUp("bridge0", netip.MustParsePrefix("10.224.0.3/16")); err != nil {
			return err
		}
		br, err := netlink.LinkByName("bridge0")
		if err != nil {
			return err
		}
		for a, i := blockA.First, 0; i < blockA.Size; a, i = a.Next(), i+1 {
			if err := netlink.NeighSet(&netlink.Neigh{LinkIndex: br.Attrs().Index, Family: unix.AF_INET,
				State: netlink.NUD_STALE, IP: a.AsSlice(), HardwareAddr: old}); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	macAtPeer := func(a netip.Addr) net.HardwareAddr {
		var mac net.HardwareAddr
		if err := peer.Do(func(ns.NetNS) error {
			ns, err := netlink.NeighList(0, unix.AF_INET)
			for _, e := range ns {
				if e.IP.Equal(a.AsSlice()) {
					mac = e.HardwareAddr
				}
			}
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return mac
	}

	r, err := n.add(n.conflist(nil), "c1", newNS(t))
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	ip := resultIP(t, r)
	deadline := time.Now().Add(2 * time.Second)
	for macAtPeer(ip).String() != uplinkMAC.String() && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if got := macAtPeer(ip); got.String() != uplinkMAC.String() {
		t.Errorf("the other node's entry for the new pod's %s: %s, want the uplink's %s (the stale MAC was %s)", ip, got, uplinkMAC, old)
	}
	if other := ip.Next(); macAtPeer(other).String() != old.String() {
		t.Errorf("%s (no pod) changed to %s: the check cannot tell an announcement from anything else", other, macAtPeer(other))
	}
}
