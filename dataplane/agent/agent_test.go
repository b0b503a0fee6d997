package agent

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/flatnet/flatnet/dataplane/cniconf"
	"github.com/flatnet/flatnet/dataplane/ipam/cluster"
	"github.com/flatnet/flatnet/dataplane/ipam/nodealloc"
	"github.com/flatnet/flatnet/dataplane/podnet"
	"github.com/flatnet/flatnet/dataplane/podnet/podnettest"
)

// pluginSrc holds the real plugin binaries, as the agent image does.
var pluginSrc string

func TestMain(m *testing.M) {
	os.Exit(podnettest.MainWithPlugins(m, &pluginSrc, "flatnet", "portmap"))
}

// testNode is a netns standing in for a kind node, with its uplink, and a
// fake API server holding its Node object. The agent runs inside the netns.
type testNode struct {
	t     *testing.T
	ns    ns.NetNS
	kube  *fake.Clientset
	dyn   *dynfake.FakeDynamicClient
	cfg   Config
	agent *Agent
}

func newTestNode(t *testing.T, maxPods int64, blockSize int) *testNode {
	n := podnettest.NewNode(t, "10.224.0.2/16").NS
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "node-a", UID: "uid-a"},
		Status: corev1.NodeStatus{
			Capacity:  corev1.ResourceList{corev1.ResourcePods: *resource.NewQuantity(maxPods, resource.DecimalSI)},
			Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "10.224.0.2"}},
		},
	}
	dir := t.TempDir()
	tn := &testNode{
		t: t, ns: n, kube: fake.NewSimpleClientset(node),
		dyn: dynfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{cluster.GVR: "IPBlockList"}),
		cfg: Config{
			NodeName: "node-a", Subnet: netip.MustParsePrefix("10.224.0.0/16"), Gateway: netip.MustParseAddr("10.224.0.1"),
			DockerRange: netip.MustParsePrefix("10.224.0.0/27"), BlockSize: blockSize,
			PluginSrcDir: pluginSrc, CNIBinDir: filepath.Join(dir, "bin"), CNIConfDir: filepath.Join(dir, "net.d"),
			StateDir: filepath.Join(dir, "state"), Socket: filepath.Join(dir, "agent.sock"),
			Reconcile: 100 * time.Millisecond, LeakGrace: 400 * time.Millisecond,
		},
	}
	return tn
}

// start runs the agent inside the node netns until the test ends and waits
// for its conflist.
func (tn *testNode) start() []byte {
	t := tn.t
	factory := informers.NewSharedInformerFactory(tn.kube, 0)
	a, err := New(tn.cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), tn.kube, tn.dyn, factory)
	if err != nil {
		t.Fatal(err)
	}
	tn.agent = a
	ctx, cancel := context.WithCancel(context.Background())
	factory.Start(ctx.Done())
	done := make(chan error, 1)
	go func() { done <- tn.ns.Do(func(ns.NetNS) error { return a.Run(ctx) }) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent: %v", err)
		}
	})
	path := filepath.Join(tn.cfg.CNIConfDir, cniconf.ConflistFile)
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if b, err := os.ReadFile(path); err == nil {
			return b
		}
		select {
		case err := <-done:
			t.Fatalf("agent stopped before installing the conflist: %v", err)
		default:
		}
	}
	t.Fatal("no conflist after 20s")
	return nil
}

func (tn *testNode) add(list *libcni.NetworkConfigList, id, podName string, podNS ns.NetNS) (netip.Addr, error) {
	var res *current.Result
	err := tn.ns.Do(func(ns.NetNS) error {
		c := libcni.NewCNIConfigWithCacheDir([]string{tn.cfg.CNIBinDir}, tn.t.TempDir(), nil)
		r, err := c.AddNetworkList(context.Background(), list, &libcni.RuntimeConf{
			ContainerID: id, NetNS: podNS.Path(), IfName: "eth0",
			Args: [][2]string{{"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", podName}},
		})
		if err != nil {
			return err
		}
		res, err = current.NewResultFromResult(r)
		return err
	})
	if err != nil {
		return netip.Addr{}, err
	}
	a, _ := netip.AddrFromSlice(res.IPs[0].Address.IP.To4())
	return a, nil
}

func (tn *testNode) metrics() string {
	rec := httptest.NewRecorder()
	tn.agent.HTTPHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	return rec.Body.String()
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

// TestAgentInstallsPluginServesEndpointsAndFreesLeaks runs the agent on a
// netns node, then the plugin it installed, through the conflist it wrote.
func TestAgentInstallsPluginServesEndpointsAndFreesLeaks(t *testing.T) {
	tn := newTestNode(t, 30, 0)
	raw := tn.start()

	// The node's block was claimed in the cluster and written into the conflist.
	blocks, err := cluster.New(tn.dyn).List(context.Background())
	if err != nil || len(blocks) != 1 || blocks[0].Spec.Node != "node-a" || blocks[0].Spec.Size != 30 {
		t.Fatalf("IPBlocks %+v %v, want one block of 30 (capacity.pods) for node-a", blocks, err)
	}
	list, err := libcni.NetworkConfFromBytes(raw)
	if err != nil {
		t.Fatalf("installed conflist: %v\n%s", err, raw)
	}
	var pc cniconf.NetConf
	json.Unmarshal(list.Plugins[0].Bytes, &pc)
	if pc.Block.First != blocks[0].Spec.First || pc.Block.Size != 30 || pc.Uplink != "eth0" || pc.AgentSocket != tn.cfg.Socket || len(list.Plugins) != 1 || !list.Plugins[0].Network.Capabilities["portMappings"] {
		t.Fatalf("conflist plugin config %+v does not match block %+v / detected uplink eth0", pc, blocks[0].Spec)
	}
	for _, b := range PluginBinaries {
		if fi, err := os.Stat(filepath.Join(tn.cfg.CNIBinDir, b)); err != nil || fi.Mode()&0o111 == 0 {
			t.Fatalf("plugin %s not installed executable: %v", b, err)
		}
	}
	rec := httptest.NewRecorder()
	tn.agent.HTTPHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
	if rec.Code != 200 {
		t.Fatalf("readyz %d: %s", rec.Code, rec.Body)
	}

	// A real pod and a ghost: the ghost's pod never appears in the cluster.
	ip, err := tn.add(list, "c-web", "web-1", podnettest.NewNS(t))
	if err != nil {
		t.Fatalf("ADD through the installed plugin: %v", err)
	}
	if _, ok := tn.agent.endpoints.Get("c-web"); !ok {
		t.Fatal("agent has no endpoint for c-web after ADD")
	}
	tn.kube.CoreV1().Pods("default").Create(context.Background(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web-1", Namespace: "default"},
		Spec:       corev1.PodSpec{NodeName: "node-a"},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip.String(), PodIPs: []corev1.PodIP{{IP: ip.String()}}},
	}, metav1.CreateOptions{})
	ghostIP, err := tn.add(list, "c-ghost", "ghost", podnettest.NewNS(t))
	if err != nil {
		t.Fatal(err)
	}

	store := nodealloc.New(filepath.Join(tn.cfg.StateDir, "ipam"))
	eventually(t, "the ghost's address to be freed", func() bool {
		all, _ := store.List(context.Background())
		return len(all) == 1 && all[0].ContainerID == "c-web"
	})
	var ghostVeth bool
	tn.ns.Do(func(ns.NetNS) error {
		_, err := netlink.LinkByName(podnet.HostVethName("c-ghost", "eth0"))
		ghostVeth = err == nil
		return nil
	})
	if ghostVeth {
		t.Errorf("the ghost's host veth survived the leak release (its address %s was freed)", ghostIP)
	}
	if _, ok := tn.agent.endpoints.Get("c-ghost"); ok {
		t.Error("the ghost's endpoint survived the leak release")
	}

	eventually(t, "IPBlock status to show web-1 only", func() bool {
		b, _ := cluster.New(tn.dyn).List(context.Background())
		s := b[0].Status
		return s.Used == 1 && len(s.Allocations) == 1 && s.Allocations[0].PodName == "web-1" && s.Allocations[0].IP == ip.String() && s.MaxPods == 30
	})
	m := tn.metrics()
	for _, want := range []string{
		`flatnet_cni_operation_duration_seconds_count{op="ADD"} 2`,
		`flatnet_cni_operations_total{op="ADD",result="ok"} 2`,
		"flatnet_ipam_leaks_released_total 1",
		"flatnet_ipam_block_size 30",
		"flatnet_ipam_block_used 1",
		"flatnet_block_maxpods_mismatch 0",
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

func TestMaxPodsAboveBlockIsReported(t *testing.T) {
	tn := newTestNode(t, 40, 20)
	tn.start()
	eventually(t, "a MaxPodsExceedsBlock event on the node", func() bool {
		evs, _ := tn.kube.CoreV1().Events("default").List(context.Background(), metav1.ListOptions{})
		for _, e := range evs.Items {
			if e.Reason == "MaxPodsExceedsBlock" && e.InvolvedObject.Name == "node-a" && strings.Contains(e.Message, "maxPods is 40") && strings.Contains(e.Message, "holds 20") {
				return true
			}
		}
		return false
	})
	if m := tn.metrics(); !strings.Contains(m, "flatnet_block_maxpods_mismatch 1") {
		t.Error("mismatch metric not set")
	}
}

func TestBlockSizeFor(t *testing.T) {
	for _, c := range []struct {
		flag     int
		capacity int64
		size     int
		mismatch bool
		errHas   string
	}{
		{0, 30, 30, false, ""},
		{0, 110, 110, false, ""},
		{0, 300, 0, false, "capacity.pods (the kubelet's maxPods) is 300"},
		{0, 5, 0, false, "outside 10..250"},
		{50, 50, 50, false, ""},
		{50, 110, 50, true, ""},
		{50, 30, 50, true, ""},
		{251, 30, 0, false, "--block-size 251"},
	} {
		size, mm, err := BlockSizeFor(c.flag, c.capacity)
		if c.errHas != "" {
			if err == nil || !strings.Contains(err.Error(), c.errHas) {
				t.Errorf("flag %d capacity %d: err %v, want one containing %q", c.flag, c.capacity, err, c.errHas)
			}
			continue
		}
		if err != nil || size != c.size || (mm != "") != c.mismatch {
			t.Errorf("flag %d capacity %d: size %d mismatch %q err %v; want %d, mismatch=%v", c.flag, c.capacity, size, mm, err, c.size, c.mismatch)
		}
	}
}
