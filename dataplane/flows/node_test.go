package flows_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/flatnet/flatnet/dataplane/endpointapi"
	"github.com/flatnet/flatnet/dataplane/enforce"
	"github.com/flatnet/flatnet/dataplane/podnet"
	"github.com/flatnet/flatnet/dataplane/podnet/podnettest"
	"github.com/flatnet/flatnet/internal/testenv"
)

var gateway = net.IPv4(169, 254, 1, 1)

// policyNode is a netns standing in for a node (10.224.0.2 on its loopback,
// forwarding on) with a server and a client pod wired as flatnet wires them,
// both attached to the real enforcer on a bpffs of the test's own, under one
// CiliumNetworkPolicy.
type policyNode struct {
	node, clientNS     ns.NetNS
	enf                *enforce.Enforcer
	serverIP, clientIP netip.Addr
}

// newPolicyNode builds the node, its pods "server" (10.224.0.40, host veth
// fsrv) and "client" (10.224.0.41, fcli), and the enforcer holding the policy
// cnpYAML, synced, with both endpoints attached.
func newPolicyNode(ctx context.Context, t testing.TB, cnpYAML string) *policyNode {
	testenv.RequireRoot(t)
	node := podnettest.NewNS(t)
	nodeIP := netip.MustParseAddr("10.224.0.2")
	serverIP, clientIP := netip.MustParseAddr("10.224.0.40"), netip.MustParseAddr("10.224.0.41")
	must(t, node.Do(func(ns.NetNS) error {
		if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
			return err
		}
		return podnettest.AddrUp("lo", netip.PrefixFrom(nodeIP, 32))
	}))
	bpffs := testenv.BPFFS(t)

	_, serverIf := wirePod(t, node, "fsrv", serverIP)
	clientNS, clientIf := wirePod(t, node, "fcli", clientIP)

	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	var enf *enforce.Enforcer
	must(t, node.Do(func(ns.NetNS) (err error) {
		enf, err = enforce.New(ctx, enforce.Config{NodeName: "self", PinDir: filepath.Join(bpffs, "flatnet")}, log)
		return err
	}))
	t.Cleanup(func() { enf.Close() })
	must(t, enf.UpsertNamespace(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "default",
		Labels: map[string]string{"kubernetes.io/metadata.name": "default"}}}))
	must(t, enf.UpsertNode(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "self"},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: nodeIP.String()}}}}))
	must(t, enf.UpsertPod(ctx, corePod("server", serverIP.String(), map[string]string{"app": "server"})))
	must(t, enf.UpsertPod(ctx, corePod("client", clientIP.String(), map[string]string{"app": "client"})))
	js, err := yaml.YAMLToJSON([]byte(cnpYAML))
	must(t, err)
	u := &unstructured.Unstructured{}
	must(t, u.UnmarshalJSON(js))
	must(t, enf.UpsertCiliumPolicy(ctx, u))
	must(t, node.Do(func(ns.NetNS) error {
		if err := enf.Synced(ctx); err != nil {
			return err
		}
		for _, ep := range []endpointapi.Endpoint{
			{ContainerID: "c-server", PodNamespace: "default", PodName: "server", HostIfName: "fsrv", HostIfIndex: serverIf, IP: serverIP},
			{ContainerID: "c-client", PodNamespace: "default", PodName: "client", HostIfName: "fcli", HostIfIndex: clientIf, IP: clientIP},
		} {
			if err := enf.Attach(ctx, ep); err != nil {
				return err
			}
		}
		return nil
	}))
	return &policyNode{node: node, clientNS: clientNS, enf: enf, serverIP: serverIP, clientIP: clientIP}
}

// wirePod makes a pod netns with flatnet's node-subnet wiring (host /32 route and
// proxy ARP on the host veth, 169.254.1.1 as the pod's gateway) and returns it with
// the host veth's ifindex in the node netns.
func wirePod(t testing.TB, node ns.NetNS, hostIf string, ip netip.Addr) (ns.NetNS, int) {
	pod := podnettest.NewNS(t)
	var ifindex int
	var hostMAC net.HardwareAddr
	must(t, node.Do(func(ns.NetNS) error {
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostIf}, PeerName: "eth0",
			PeerNamespace: netlink.NsFd(int(pod.Fd()))}); err != nil {
			return fmt.Errorf("veth %s: %w", hostIf, err)
		}
		l, err := netlink.LinkByName(hostIf)
		if err != nil {
			return err
		}
		ifindex, hostMAC = l.Attrs().Index, l.Attrs().HardwareAddr
		if err := os.WriteFile("/proc/sys/net/ipv4/conf/"+hostIf+"/proxy_arp", []byte("1"), 0o644); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
		return netlink.RouteAdd(&netlink.Route{LinkIndex: ifindex, Dst: podnet.HostNet(ip), Scope: netlink.SCOPE_LINK})
	}))
	must(t, pod.Do(func(ns.NetNS) error {
		lo, _ := netlink.LinkByName("lo")
		_ = netlink.LinkSetUp(lo)
		eth, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		if err := netlink.AddrAdd(eth, &netlink.Addr{IPNet: podnet.HostNet(ip)}); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(eth); err != nil {
			return err
		}
		gw := netip.AddrFrom4([4]byte{169, 254, 1, 1})
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Dst: podnet.HostNet(gw), Scope: netlink.SCOPE_LINK}); err != nil {
			return err
		}
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: gateway}); err != nil {
			return err
		}
		return netlink.NeighAdd(&netlink.Neigh{LinkIndex: eth.Attrs().Index, IP: gateway, HardwareAddr: hostMAC,
			State: netlink.NUD_PERMANENT, Family: netlink.FAMILY_V4})
	}))
	return pod, ifindex
}

func corePod(name, ip string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name, Labels: labels},
		Spec:       corev1.PodSpec{NodeName: "self", ServiceAccountName: "default"},
		Status:     corev1.PodStatus{PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}},
	}
}
