package podnet_test

import (
	"net/netip"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/flatnet/flatnet/dataplane/podnet"
	"github.com/flatnet/flatnet/dataplane/podnet/podnettest"
	"github.com/flatnet/flatnet/internal/testenv"
)

const subnet = "10.224.0.0/16"

// node is a network namespace standing in for a kind node with its uplink
// "eth0" on the node subnet; podnet runs in it as the plugin would.
type node struct {
	t  testing.TB
	ns ns.NetNS
	ip netip.Prefix
}

// newBareNode makes a node without an uplink (the test wires it).
func newBareNode(t testing.TB, ip string) *node {
	t.Helper()
	testenv.RequireRoot(t)
	return &node{t: t, ns: podnettest.NewNS(t), ip: netip.MustParsePrefix(ip)}
}

// newNode makes a node whose uplink is a veth holding ip (e.g. 10.224.0.2/16);
// its peer "bridge0" stays in the node, up, standing for the docker bridge.
func newNode(t testing.TB, ip string) *node {
	t.Helper()
	n := newBareNode(t, ip)
	n.do(func() error { return podnettest.AddUplink(n.ip) })
	return n
}

// do runs fn in the node's netns.
func (n *node) do(fn func() error) {
	n.t.Helper()
	if err := n.ns.Do(func(ns.NetNS) error { return fn() }); err != nil {
		n.t.Fatalf("in node %s: %v", n.ip, err)
	}
}

func (n *node) uplink() *podnet.Uplink {
	n.t.Helper()
	var up *podnet.Uplink
	n.do(func() (err error) {
		up, err = podnet.FindUplink("eth0", netip.MustParsePrefix(subnet))
		return err
	})
	return up
}

// setup plumbs attachment id/eth0 of pod with addr, as ADD does once it holds the address.
func (n *node) setup(id string, pod ns.NetNS, addr netip.Addr) *podnet.Veth {
	n.t.Helper()
	up := n.uplink()
	var v *podnet.Veth
	n.do(func() (err error) {
		v, err = podnet.Setup(pod, id, "eth0", addr, 0, up)
		return err
	})
	return v
}

func (n *node) state() podnettest.HostState {
	n.t.Helper()
	return podnettest.ReadHostState(n.t, n.ns, "eth0")
}
