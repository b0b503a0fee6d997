package podnet_test

import (
	"net/netip"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/flatnet/flatnet/dataplane/podnet"
	"github.com/flatnet/flatnet/dataplane/podnet/podnettest"
)

const subnet = "10.224.0.0/16"

// node is a kind node with its uplink "eth0" on the node subnet; podnet runs
// in it as the plugin would.
type node struct{ *podnettest.Node }

// newBareNode makes a node without an uplink (the test wires it).
func newBareNode(t testing.TB, ip string) *node { return &node{podnettest.NewBareNode(t, ip)} }

// newNode makes a node whose uplink is a veth holding ip (e.g. 10.224.0.2/16);
// its peer "bridge0" stays in the node, up, standing for the docker bridge.
func newNode(t testing.TB, ip string) *node { return &node{podnettest.NewNode(t, ip)} }

func (n *node) uplink() *podnet.Uplink {
	n.T.Helper()
	var up *podnet.Uplink
	n.Do(func() (err error) {
		up, err = podnet.FindUplink("eth0", netip.MustParsePrefix(subnet))
		return err
	})
	return up
}

// setup plumbs attachment id/eth0 of pod with addr, as ADD does once it holds the address.
func (n *node) setup(id string, pod ns.NetNS, addr netip.Addr) *podnet.Veth {
	n.T.Helper()
	up := n.uplink()
	var v *podnet.Veth
	n.Do(func() (err error) {
		v, err = podnet.Setup(pod, id, "eth0", addr, 0, up, 0)
		return err
	})
	return v
}

func (n *node) state() podnettest.HostState {
	n.T.Helper()
	return podnettest.ReadHostState(n.T, n.NS, "eth0")
}
