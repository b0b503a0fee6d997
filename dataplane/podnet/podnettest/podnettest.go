// Package podnettest gives tests network namespaces standing in for nodes and
// pods, and reads back the plumbing podnet leaves on a node. Used by podnet's
// own tests and by the plugin's, which run the real binaries.
package podnettest

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/flatnet/flatnet/dataplane/podnet"
	"github.com/flatnet/flatnet/internal/testenv"
)

// Node is a network namespace standing in for a kind node; podnet and the
// plugin's processes run in it as on the node.
type Node struct {
	T  testing.TB
	NS ns.NetNS
	IP netip.Prefix // the node's address, on its uplink eth0
}

// NewBareNode makes a node with no uplink yet (the test wires it).
func NewBareNode(t testing.TB, ip string) *Node {
	t.Helper()
	testenv.RequireRoot(t)
	return &Node{T: t, NS: NewNS(t), IP: netip.MustParsePrefix(ip)}
}

// NewNode makes a node whose uplink eth0 holds ip (e.g. 10.224.0.2/16), as
// AddUplink leaves it.
func NewNode(t testing.TB, ip string) *Node {
	t.Helper()
	n := NewBareNode(t, ip)
	n.Do(func() error { return AddUplink(n.IP) })
	return n
}

// Do runs fn in the node's netns (processes fn starts inherit it, as
// containerd's do on a kind node); an error fails the test.
func (n *Node) Do(fn func() error) {
	n.T.Helper()
	if err := n.NS.Do(func(ns.NetNS) error { return fn() }); err != nil {
		n.T.Fatalf("in node %s: %v", n.IP, err)
	}
}

// NewNS creates a network namespace removed when the test ends.
func NewNS(t testing.TB) ns.NetNS {
	t.Helper()
	n, err := testutils.NewNS()
	if err != nil {
		t.Fatalf("create netns: %v", err)
	}
	t.Cleanup(func() {
		n.Close()
		_ = testutils.UnmountNS(n)
	})
	return n
}

// plugins are the CNI plugins a flatnet node runs, by binary name.
var plugins = map[string]string{
	"flatnet":  "github.com/flatnet/flatnet/dataplane/cmd/flatnet-cni",
	"loopback": "github.com/containernetworking/plugins/plugins/main/loopback",
	"portmap":  "github.com/containernetworking/plugins/plugins/meta/portmap",
}

// MainWithPlugins runs a package's tests, as root (where they run the real
// plugins) with the named plugins (flatnet, loopback, portmap) first built
// into a temporary directory, which *dir is set to.
func MainWithPlugins(m *testing.M, dir *string, names ...string) int {
	if os.Geteuid() != 0 {
		return m.Run()
	}
	d, err := os.MkdirTemp("", "flatnet-plugins-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(d)
	for _, name := range names {
		pkg, ok := plugins[name]
		if !ok {
			fmt.Fprintf(os.Stderr, "no plugin %q\n", name)
			return 1
		}
		if out, err := exec.Command("go", "build", "-o", filepath.Join(d, name), pkg).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", pkg, err, out)
			return 1
		}
	}
	*dir = d
	return m.Run()
}

// AddUplink gives the current netns a kind node's uplink: a veth "eth0"
// holding ip, up, its peer "bridge0" left in the netns, up, standing for the
// docker bridge (a veth, as some kernels have no dummy driver).
func AddUplink(ip netip.Prefix) error {
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "bridge0"}); err != nil {
		return fmt.Errorf("add uplink veth eth0: %w", err)
	}
	br, err := netlink.LinkByName("bridge0")
	if err != nil {
		return err
	}
	if err := netlink.LinkSetUp(br); err != nil {
		return fmt.Errorf("bring up bridge0: %w", err)
	}
	return AddrUp("eth0", ip)
}

// AddVeth adds the veth pair host/peer in netns, brings host up and returns
// its ifindex: the host side of a pod, for tests attaching the datapath to it.
func AddVeth(t testing.TB, netns ns.NetNS, host, peer string) int {
	t.Helper()
	var ifindex int
	if err := netns.Do(func(ns.NetNS) error {
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: host}, PeerName: peer}); err != nil {
			return err
		}
		l, err := netlink.LinkByName(host)
		if err != nil {
			return err
		}
		ifindex = l.Attrs().Index
		return netlink.LinkSetUp(l)
	}); err != nil {
		t.Fatalf("add veth %s/%s in %s: %v", host, peer, netns.Path(), err)
	}
	return ifindex
}

// AddrUp puts p on the interface of the current netns and sets it up.
func AddrUp(ifName string, p netip.Prefix) error {
	l, err := netlink.LinkByName(ifName)
	if err != nil {
		return err
	}
	if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)}}); err != nil {
		return err
	}
	return netlink.LinkSetUp(l)
}

// HostState is what flatnet leaves on a node: its veths and proxy entries.
type HostState struct {
	Veths   []string
	Proxies []netip.Addr
	Routes  []string // /32 routes on flatnet veths
}

// ReadHostState reads the flatnet veths of node (a netns), their routes, and
// the proxy neighbours on its uplink.
func ReadHostState(t testing.TB, node ns.NetNS, uplink string) HostState {
	t.Helper()
	var s HostState
	if err := node.Do(func(ns.NetNS) (err error) {
		s, err = readHostState(uplink)
		return err
	}); err != nil {
		t.Fatalf("read flatnet's plumbing in %s: %v", node.Path(), err)
	}
	return s
}

func readHostState(uplink string) (HostState, error) {
	var s HostState
	links, err := netlink.LinkList()
	if err != nil {
		return s, err
	}
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, podnet.HostVethPrefix) {
			s.Veths = append(s.Veths, l.Attrs().Name)
			rs, _ := netlink.RouteList(l, netlink.FAMILY_V4)
			for _, r := range rs {
				s.Routes = append(s.Routes, r.Dst.String())
			}
		}
	}
	up, err := netlink.LinkByName(uplink)
	if err != nil {
		return s, err
	}
	px, err := netlink.NeighProxyList(up.Attrs().Index, unix.AF_INET)
	if err != nil {
		return s, err
	}
	for _, p := range px {
		a, _ := netip.AddrFromSlice(p.IP.To4())
		s.Proxies = append(s.Proxies, a)
	}
	return s, nil
}

// Links lists the interface names inside a netns.
func Links(t testing.TB, netns ns.NetNS) []string {
	t.Helper()
	var names []string
	if err := netns.Do(func(ns.NetNS) error {
		links, err := netlink.LinkList()
		for _, l := range links {
			names = append(names, l.Attrs().Name)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return names
}

// TCPCounter reads the Tcp counter name of /proc/net/snmp (OutSegs, RetransSegs, ...)
// of the calling thread's network namespace (/proc/self's would be the process's).
func TCPCounter(name string) (int, error) {
	const path = "/proc/thread-self/net/snmp"
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	var names []string
	for _, l := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(l, "Tcp: ") {
			continue
		}
		fields := strings.Fields(l)[1:]
		if names == nil {
			names = fields
			continue
		}
		for i, n := range names {
			if n == name && i < len(fields) {
				return strconv.Atoi(fields[i])
			}
		}
	}
	return 0, fmt.Errorf("no Tcp %s in %s", name, path)
}

// FillPool publishes n warm-pool interface indexes in poolDir, as the agent does
// (without the datapath's maps: a pod on one is plumbed exactly as any other),
// and returns them.
func FillPool(t testing.TB, poolDir string, n int) []int {
	t.Helper()
	if err := os.MkdirAll(poolDir, 0o700); err != nil {
		t.Fatal(err)
	}
	var idx []int
	for i := range n {
		ifindex := podnet.PoolIndexBase + i
		if err := podnet.PublishPoolIndex(poolDir, ifindex); err != nil {
			t.Fatalf("fill the warm pool: %v", err)
		}
		idx = append(idx, ifindex)
	}
	return idx
}
