package enforce

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/flatnet/flatnet/dataplane/bpf"
	"github.com/flatnet/flatnet/dataplane/endpointapi"
	"github.com/flatnet/flatnet/dataplane/identity"
	"github.com/flatnet/flatnet/dataplane/ipv4"
	"github.com/flatnet/flatnet/dataplane/podnet/podnettest"
	"github.com/flatnet/flatnet/dataplane/policy"
)

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func pod(ns, name, ip, node string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec: corev1.PodSpec{NodeName: node}, Status: corev1.PodStatus{PodIP: ip}}
}

func cnp(t *testing.T, doc string) *unstructured.Unstructured {
	js, err := yaml.YAMLToJSON([]byte(doc))
	must(t, err)
	u := &unstructured.Unstructured{}
	must(t, u.UnmarshalJSON(js))
	return u
}

const denyAll = `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress: [{}]
`

const denyAllBroken = `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - toPorts: [{ports: [{port: "0"}]}]
`

// TestEnforcerLifecycle drives the Enforcer as the agent does, against the real
// datapath in a private bpffs and a test netns with a veth "pod".
func TestEnforcerLifecycle(t *testing.T) {
	ctx := context.Background()
	pin, node := newTestNode(t)
	ifindex := podnettest.AddVeth(t, node, "fnserver", "eth0peer")

	// A previous agent left entries for a pod and a CIDR rule that are gone now.
	prev, err := bpf.Load(ctx, pin)
	must(t, err)
	stalePod, staleCIDR := netip.MustParseAddr("10.224.3.3"), ipv4.MustParsePrefix("192.168.0.0/16")
	must(t, prev.UpsertIPIdentity(ctx, stalePod, 300))
	must(t, prev.UpsertCIDR(ctx, staleCIDR, identity.MinLocal))
	must(t, prev.Close())

	svc := ipv4.MustParsePrefix("10.96.0.0/16")
	e, err := New(ctx, Config{NodeName: "n1", PinDir: pin, ServiceCIDRs: []ipv4.Prefix{svc}}, slog.New(slog.DiscardHandler))
	must(t, err)
	defer e.Close()
	ep := endpointapi.Endpoint{ContainerID: "c1", PodNamespace: "default", PodName: "server", HostIfName: "fnserver",
		HostIfIndex: ifindex, PodIfName: "eth0", IP: netip.MustParseAddr("10.224.1.10")}

	// Before the first sync an endpoint must not be attached from a partial view.
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	err = e.Attach(short, ep)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Attach before sync = %v, want it to wait for the sync", err)
	}

	must(t, e.UpsertNamespace(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "default"}}))
	must(t, e.UpsertPod(ctx, pod("default", "server", "", "n1", map[string]string{"app": "server"})))
	must(t, e.UpsertPod(ctx, pod("default", "client", "10.224.2.20", "n2", map[string]string{"app": "client"})))
	must(t, e.UpsertNode(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "10.224.0.2"}}}}))
	must(t, e.UpsertCiliumPolicy(ctx, cnp(t, denyAll)))
	must(t, node.Do(func(ns.NetNS) error { return e.Synced(ctx) }))
	must(t, node.Do(func(ns.NetNS) error { return e.Attach(ctx, ep) }))

	ipc, err := e.Datapath().IPCache(ctx)
	must(t, err)
	if _, ok := ipc[ipv4.MustParsePrefix(stalePod.String()+"/32")]; ok {
		t.Errorf("stale IP cache entry of a gone pod survived the sync")
	}
	if v, ok := ipc[svc]; !ok || !v.Service {
		t.Errorf("Service range missing from the IP cache: %v", ipc)
	}
	if v, ok := ipc[ipv4.MustParsePrefix("10.224.2.20/32")]; !ok || v.Identity < identity.MinCluster {
		t.Errorf("client pod missing from the IP cache: %v", ipc)
	}
	cidrs, err := e.Datapath().CIDRs(ctx)
	must(t, err)
	if len(cidrs) != 0 {
		t.Errorf("stale CIDR prefixes survived the sync: %v", cidrs)
	}

	client := netip.MustParseAddr("10.224.2.20")
	explain := func() bool {
		d, _, err := e.Explain("default", "server", policy.Ingress, client, policy.ProtoTCP, 80)
		must(t, err)
		return d.Allowed
	}
	if explain() {
		t.Fatalf("client -> server allowed under the deny policy")
	}
	eps, err := e.Datapath().Endpoints(ctx)
	must(t, err)
	if got := eps[ifindex]; got.IP != ep.IP {
		t.Fatalf("datapath endpoints %v, want the server on %d", eps, ifindex)
	}
	// What the agent's metrics read: the pod behind the veth, compile and map-sync
	// latency (the sync and the attach each wrote once at least), map fill.
	if got := e.LocalPods(); got[ifindex] != "default/server" || len(got) != 1 {
		t.Errorf("LocalPods = %v, want %d: default/server", got, ifindex)
	}
	if n := testutil.CollectAndCount(e.Metrics().Compile); n != 1 {
		t.Errorf("compile histogram: %d series", n)
	}
	for name, h := range map[string]prometheus.Histogram{"compile": e.Metrics().Compile, "map sync": e.Metrics().Sync} {
		var m dto.Metric
		must(t, h.Write(&m))
		if c := m.GetHistogram().GetSampleCount(); c < 2 {
			t.Errorf("%s histogram has %d observations, want one per write (>= 2)", name, c)
		}
	}
	fill, err := e.Datapath().MapFill(ctx)
	must(t, err)
	byMap := map[string]bpf.MapFill{}
	for _, f := range fill {
		byMap[f.Map] = f
	}
	if f := byMap["endpoints"]; f.Entries != 1 || f.Capacity < 1 {
		t.Errorf("endpoints map fill %+v, want 1 entry (of %d)", f, f.Capacity)
	}
	if f := byMap["ipcache"]; f.Entries < 3 || f.Entries > f.Capacity {
		t.Errorf("ipcache map fill %+v, want the pods, the node and the Service range", f)
	}

	// An invalid update is reported with its field and the last valid version stays.
	err = e.UpsertCiliumPolicy(ctx, cnp(t, denyAllBroken))
	var perr *policy.Error
	if !errors.As(err, &perr) || !strings.Contains(err.Error(), "spec.ingress[0].toPorts[0].ports[0].port") {
		t.Fatalf("invalid CNP: %v, want a policy error naming the port field", err)
	}
	if len(e.Rejected()) != 1 || explain() {
		t.Fatalf("after a rejected update: rejected=%v allowed=%v, want the previous deny in force", e.Rejected(), explain())
	}
	must(t, e.DeletePolicy(ctx, policy.Ref{Kind: policy.KindCNP, Namespace: "default", Name: "deny"}))
	if !explain() || len(e.Rejected()) != 0 {
		t.Fatalf("after deleting the policy: allowed=%v rejected=%v", explain(), e.Rejected())
	}

	// The pod is recreated under the same name: the new sandbox (c2, another veth)
	// is attached before the kubelet deletes the old one. The old DEL must leave the
	// new attachment in place.
	must(t, e.UpsertCiliumPolicy(ctx, cnp(t, denyAll)))
	ifindex2 := podnettest.AddVeth(t, node, "fnserver2", "eth0peer2")
	ep2 := ep
	ep2.ContainerID, ep2.HostIfName, ep2.HostIfIndex = "c2", "fnserver2", ifindex2
	must(t, node.Do(func(ns.NetNS) error { return e.Attach(ctx, ep2) }))
	must(t, node.Do(func(ns.NetNS) error {
		return e.Detach(ctx, endpointapi.Endpoint{ContainerID: "c1", PodNamespace: "default", PodName: "server", HostIfIndex: ifindex})
	}))
	eps, err = e.Datapath().Endpoints(ctx)
	must(t, err)
	if got, ok := eps[ifindex2]; !ok || got.IP != ep.IP {
		t.Fatalf("after the old sandbox's DEL the new one lost its attachment: endpoints %v, want the server on %d", eps, ifindex2)
	}
	if explain() {
		t.Fatalf("after the old sandbox's DEL the recreated server is no longer under the deny policy")
	}
	must(t, e.DeletePolicy(ctx, policy.Ref{Kind: policy.KindCNP, Namespace: "default", Name: "deny"}))

	must(t, node.Do(func(ns.NetNS) error { return e.Detach(ctx, endpointapi.Endpoint{ContainerID: "c2"}) }))
	eps, err = e.Datapath().Endpoints(ctx)
	must(t, err)
	if len(eps) != 0 {
		t.Fatalf("endpoints after Detach: %v", eps)
	}
}

// TestEnforcerServiceAddresses: every address kube-proxy DNATs for a Service (its
// ClusterIP, externalIPs, LoadBalancer IPs) is marked as a Service address, an
// externalIP that is a node's keeps the node's identity, and a changed or deleted
// Service's addresses go, also those a previous agent left behind.
func TestEnforcerServiceAddresses(t *testing.T) {
	ctx := context.Background()
	pin, node := newTestNode(t)

	// A previous agent marked the externalIP of a Service deleted since.
	prev, err := bpf.Load(ctx, pin)
	must(t, err)
	gone := netip.MustParseAddr("203.0.113.99")
	must(t, prev.UpsertService(ctx, gone))
	must(t, prev.Close())

	e, err := New(ctx, Config{NodeName: "n1", PinDir: pin}, slog.New(slog.DiscardHandler))
	must(t, err)
	defer e.Close()
	svc := func(name, clusterIP string, external []string, lb ...string) *corev1.Service {
		s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
			Spec: corev1.ServiceSpec{ClusterIP: clusterIP, ClusterIPs: []string{clusterIP}, ExternalIPs: external}}
		for _, ip := range lb {
			s.Status.LoadBalancer.Ingress = append(s.Status.LoadBalancer.Ingress, corev1.LoadBalancerIngress{IP: ip})
		}
		return s
	}
	must(t, e.UpsertNode(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n2"},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "10.224.0.3"}}}}))
	must(t, e.UpsertService(ctx, svc("web", "10.96.0.10", []string{"203.0.113.10", "10.224.0.3", "2001:db8::1"}, "198.51.100.7")))
	must(t, e.UpsertService(ctx, svc("headless", "None", nil)))
	must(t, node.Do(func(ns.NetNS) error { return e.Synced(ctx) }))

	check := func(what string, want map[string]bpf.PrefixEntry) {
		t.Helper()
		ipc, err := e.Datapath().IPCache(ctx)
		must(t, err)
		got := map[string]bpf.PrefixEntry{}
		for p, v := range ipc {
			got[p.String()] = v
		}
		if len(got) != len(want) {
			t.Errorf("%s: IP cache %v, want %v", what, got, want)
		}
		for p, w := range want {
			if got[p] != w {
				t.Errorf("%s: %s is %+v, want %+v", what, p, got[p], w)
			}
		}
	}
	world, remote := identity.World, identity.RemoteNode
	check("after the sync", map[string]bpf.PrefixEntry{
		"10.96.0.10/32": {Identity: world, Service: true}, "203.0.113.10/32": {Identity: world, Service: true},
		"198.51.100.7/32": {Identity: world, Service: true}, "10.224.0.3/32": {Identity: remote, Service: true}})

	must(t, e.UpsertService(ctx, svc("web", "10.96.0.10", []string{"203.0.113.11"})))
	check("externalIPs changed, load balancer gone", map[string]bpf.PrefixEntry{
		"10.96.0.10/32": {Identity: world, Service: true}, "203.0.113.11/32": {Identity: world, Service: true},
		"10.224.0.3/32": {Identity: remote}})

	must(t, e.DeleteService(ctx, "default", "web"))
	check("Service deleted", map[string]bpf.PrefixEntry{"10.224.0.3/32": {Identity: remote}})
}

// A CNI DEL that never came (kubelet or containerd crashed, the agent was
// down) leaves pod a's endpoint attached after a is deleted from the API.
// When the next pod, b, gets a's address, b must run with b's identity and
// policy, and a's entries must go: nothing of a may answer for that address.
func TestStaleEndpointGivesWayToTheNextPodOnItsAddress(t *testing.T) {
	ctx := context.Background()
	e, node, veth := newDenyAllNode(t, "a", "b") // a (app=server) denies all ingress; b is unrestricted

	ip := netip.MustParseAddr("10.224.1.10")
	ifa := veth("fna")
	must(t, node.Do(func(ns.NetNS) error {
		return e.Attach(ctx, endpointapi.Endpoint{ContainerID: "ca", PodNamespace: "default", PodName: "a", HostIfName: "fna", HostIfIndex: ifa, PodIfName: "eth0", IP: ip})
	}))
	idA, _ := e.c.IdentityOf("default", "a")
	// a is deleted from the API; its DEL never arrives (its veth goes with its netns).
	must(t, e.DeletePod(ctx, "default", "a"))
	must(t, node.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName("fna")
		if err != nil {
			return err
		}
		return netlink.LinkDel(l)
	}))
	ifb := veth("fnb")
	must(t, node.Do(func(ns.NetNS) error {
		return e.Attach(ctx, endpointapi.Endpoint{ContainerID: "cb", PodNamespace: "default", PodName: "b", HostIfName: "fnb", HostIfIndex: ifb, PodIfName: "eth0", IP: ip})
	}))
	idB, _ := e.c.IdentityOf("default", "b")
	if idA == idB {
		t.Fatalf("a and b share identity %d; the test needs different labels", idA)
	}

	ipc, err := e.Datapath().IPCache(ctx)
	must(t, err)
	if got := ipc[ipv4.MustParsePrefix(ip.String()+"/32")]; got.Identity != idB {
		t.Errorf("IP cache: %s has identity %d, want b's %d (a's was %d)", ip, got.Identity, idB, idA)
	}
	if got := e.LocalPods(); len(got) != 1 || got[ifb] != "default/b" {
		t.Errorf("LocalPods = %v, want only %d: default/b (a's stale endpoint collected)", got, ifb)
	}
	if _, ok := e.c.IdentityOf("default", "a"); ok {
		t.Errorf("the compiler still knows the stale pod a")
	}
	d, _, err := e.Explain("default", "b", policy.Ingress, netip.MustParseAddr("10.224.2.20"), policy.ProtoTCP, 80)
	must(t, err)
	if !d.Allowed {
		t.Errorf("client -> b denied: b runs under a's deny policy")
	}
	eps, err := e.Datapath().Endpoints(ctx)
	must(t, err)
	if len(eps) != 1 || eps[ifb].IP != ip {
		t.Errorf("datapath endpoints %v, want only b on %d", eps, ifb)
	}
	// An informer update of a pod whose API status still names the address
	// (its status lags behind its gone sandbox) must not take it back either.
	must(t, e.UpsertPod(ctx, pod("default", "a", ip.String(), "n1", map[string]string{"app": "server"})))
	ipc, err = e.Datapath().IPCache(ctx)
	must(t, err)
	if got := ipc[ipv4.MustParsePrefix(ip.String()+"/32")]; got.Identity != idB {
		t.Errorf("after a's lagging status: %s has identity %d, want b's %d", ip, got.Identity, idB)
	}
	// a's DEL arriving late must not take b's address with it.
	must(t, node.Do(func(ns.NetNS) error {
		return e.Detach(ctx, endpointapi.Endpoint{ContainerID: "ca", PodNamespace: "default", PodName: "a", HostIfIndex: ifa, IP: ip})
	}))
	ipc, err = e.Datapath().IPCache(ctx)
	must(t, err)
	if got := ipc[ipv4.MustParsePrefix(ip.String()+"/32")]; got.Identity != idB {
		t.Errorf("after a's late DEL: %s has identity %d, want b's %d", ip, got.Identity, idB)
	}
	if eps, _ := e.Datapath().Endpoints(ctx); len(eps) != 1 {
		t.Errorf("after a's late DEL: datapath endpoints %v, want b's", eps)
	}

	// The agent's order: the stale endpoint c is detached first, while the API
	// still shows c with the address; then d is attached with it.
	ip2 := netip.MustParseAddr("10.224.1.11")
	must(t, e.UpsertPod(ctx, pod("default", "c", "", "n1", map[string]string{"app": "server"})))
	must(t, e.UpsertPod(ctx, pod("default", "d", "", "n1", map[string]string{"app": "third"})))
	ifc := veth("fnc")
	must(t, node.Do(func(ns.NetNS) error {
		return e.Attach(ctx, endpointapi.Endpoint{ContainerID: "cc", PodNamespace: "default", PodName: "c", HostIfName: "fnc", HostIfIndex: ifc, PodIfName: "eth0", IP: ip2})
	}))
	must(t, e.UpsertPod(ctx, pod("default", "c", ip2.String(), "n1", map[string]string{"app": "server"})))
	must(t, node.Do(func(ns.NetNS) error {
		return e.Detach(ctx, endpointapi.Endpoint{ContainerID: "cc", PodNamespace: "default", PodName: "c", HostIfIndex: ifc, IP: ip2})
	}))
	ifd := veth("fnd")
	must(t, node.Do(func(ns.NetNS) error {
		return e.Attach(ctx, endpointapi.Endpoint{ContainerID: "cd", PodNamespace: "default", PodName: "d", HostIfName: "fnd", HostIfIndex: ifd, PodIfName: "eth0", IP: ip2})
	}))
	idD, _ := e.c.IdentityOf("default", "d")
	ipc, err = e.Datapath().IPCache(ctx)
	must(t, err)
	if got := ipc[ipv4.MustParsePrefix(ip2.String()+"/32")]; got.Identity != idD {
		t.Errorf("c detached, still in the API with %s, d attached with it: identity %d, want d's %d", ip2, got.Identity, idD)
	}
}

// TestLateDELNamingAnotherPodsInterfaceLeavesItEnforced: after a node restart the
// kernel counts interface indexes from the start again, so the DEL of a sandbox
// from before it (late, or replayed by the agent forgetting a vanished veth) may
// name the index of another pod's veth attached since. That pod must keep its
// programs and its policy, whether the DEL's pod was recreated (attached again
// elsewhere) or is gone.
func TestLateDELNamingAnotherPodsInterfaceLeavesItEnforced(t *testing.T) {
	ctx := context.Background()
	e, node, veth := newDenyAllNode(t, "server", "other") // server (app=server) denies all ingress

	serverIP, otherIP := netip.MustParseAddr("10.224.1.10"), netip.MustParseAddr("10.224.1.11")
	ifServer, ifOther := veth("fnsrv"), veth("fnoth")
	must(t, node.Do(func(ns.NetNS) error {
		return e.Attach(ctx, endpointapi.Endpoint{ContainerID: "srv2", PodNamespace: "default", PodName: "server", HostIfName: "fnsrv", HostIfIndex: ifServer, PodIfName: "eth0", IP: serverIP})
	}))
	must(t, node.Do(func(ns.NetNS) error {
		return e.Attach(ctx, endpointapi.Endpoint{ContainerID: "oth2", PodNamespace: "default", PodName: "other", HostIfName: "fnoth", HostIfIndex: ifOther, PodIfName: "eth0", IP: otherIP})
	}))
	enforced := func(when string) {
		t.Helper()
		eps, err := e.Datapath().Endpoints(ctx)
		must(t, err)
		if got, ok := eps[ifServer]; !ok || got.IP != serverIP {
			t.Fatalf("%s: datapath endpoints %v, want the server on %d", when, eps, ifServer)
		}
		if got := e.LocalPods(); got[ifServer] != "default/server" {
			t.Fatalf("%s: LocalPods = %v, want %d: default/server", when, got, ifServer)
		}
		pol, err := e.Datapath().EndpointPolicy(ctx, ifServer)
		must(t, err)
		if pol == nil {
			t.Fatalf("%s: no policy map for the server's interface %d", when, ifServer)
		}
		d, _, err := e.Explain("default", "server", policy.Ingress, netip.MustParseAddr("10.224.2.20"), policy.ProtoTCP, 80)
		must(t, err)
		if d.Allowed {
			t.Fatalf("%s: client -> server allowed under the deny policy", when)
		}
	}
	enforced("attached")

	// The old sandbox of "other" (recreated on ifOther) had the server's index before the restart.
	must(t, node.Do(func(ns.NetNS) error {
		return e.Detach(ctx, endpointapi.Endpoint{ContainerID: "oth1", PodNamespace: "default", PodName: "other", HostIfIndex: ifServer, IP: otherIP})
	}))
	enforced("after the late DEL of a recreated pod's old sandbox")
	// A pod gone for good had it.
	must(t, node.Do(func(ns.NetNS) error {
		return e.Detach(ctx, endpointapi.Endpoint{ContainerID: "gone1", PodNamespace: "default", PodName: "gone", HostIfIndex: ifServer, IP: netip.MustParseAddr("10.224.1.12")})
	}))
	enforced("after the late DEL of a gone pod")
	if got := e.LocalPods(); got[ifOther] != "default/other" {
		t.Fatalf("LocalPods = %v, want %d: default/other still attached", got, ifOther)
	}
}

// newDenyAllNode is a synced enforcer on a test node (n1) whose pod server
// (app=server) the deny-all CNP isolates, beside the unrestricted pod other and
// a client on node n2, all in namespace default; veth adds a host veth to the
// node and returns its index.
func newDenyAllNode(t *testing.T, server, other string) (e *Enforcer, node ns.NetNS, veth func(name string) int) {
	t.Helper()
	ctx := context.Background()
	pin, node := newTestNode(t)
	e, err := New(ctx, Config{NodeName: "n1", PinDir: pin}, slog.New(slog.DiscardHandler))
	must(t, err)
	t.Cleanup(func() { e.Close() })
	must(t, e.UpsertNamespace(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "default"}}))
	must(t, e.UpsertPod(ctx, pod("default", server, "", "n1", map[string]string{"app": "server"})))
	must(t, e.UpsertPod(ctx, pod("default", other, "", "n1", map[string]string{"app": "other"})))
	must(t, e.UpsertPod(ctx, pod("default", "client", "10.224.2.20", "n2", map[string]string{"app": "client"})))
	must(t, e.UpsertCiliumPolicy(ctx, cnp(t, denyAll)))
	must(t, node.Do(func(ns.NetNS) error { return e.Synced(ctx) }))
	return e, node, func(name string) int { return podnettest.AddVeth(t, node, name, name+"p") }
}
