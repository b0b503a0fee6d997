package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	peerpb "github.com/cilium/cilium/api/v1/peer"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/flatnet/flatnet/dataplane/podnet/podnettest"
	"github.com/flatnet/flatnet/internal/apiservertest"
	"github.com/flatnet/flatnet/internal/testenv"
)

// inNamespacesEnv marks the re-executed test binary that runs in namespaces of its own.
const inNamespacesEnv = "FLATNET_AGENT_TEST_IN_NAMESPACES"

// TestEachResourceWatchedOnce runs the agent command as the DaemonSet does (policy on)
// against a real kube-apiserver behind a proxy that counts the open watches of each
// resource: a process that watches pods or nodes twice holds two caches of them and
// doubles the API server's load. The agent loads its BPF datapath at the default pin
// directory and hooks netfilter, so the test re-executes itself in a mount and network
// namespace of its own, with a bpffs of its own.
func TestEachResourceWatchedOnce(t *testing.T) {
	testenv.RequireRoot(t)
	assets := apiservertest.Require(t)
	if os.Getenv(inNamespacesEnv) == "" {
		cmd := exec.Command(os.Args[0], "-test.run=^TestEachResourceWatchedOnce$", "-test.count=1", "-test.v")
		cmd.Env = append(os.Environ(), inNamespacesEnv+"=1", "KUBEBUILDER_ASSETS="+assets)
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWNET}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("in its own namespaces: %v\n%s", err, out)
		}
		t.Logf("in its own namespaces:\n%s", out)
		return
	}
	isolate(t)

	env := &envtest.Environment{
		BinaryAssetsDirectory: assets,
		CRDDirectoryPaths:     []string{filepath.Join("..", "..", "manifests", "crds")},
		ErrorIfCRDPathMissing: true,
	}
	// The namespace has no default route to take an address from.
	env.ControlPlane.GetAPIServer().Configure().Set("advertise-address", "127.0.0.1")
	rc, err := env.Start()
	if err != nil {
		t.Fatalf("start kube-apiserver and etcd: %v", err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	createNode(t, rc)
	watches := &watchCounter{open: map[string]int{}, most: map[string]int{}}
	proxy := countingProxy(t, rc, watches)

	dir := t.TempDir()
	kubeconfig := filepath.Join(dir, "kubeconfig")
	kc := clientcmdapi.NewConfig()
	kc.Clusters["test"] = &clientcmdapi.Cluster{Server: proxy}
	kc.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "test"}
	kc.AuthInfos["test"] = &clientcmdapi.AuthInfo{}
	kc.CurrentContext = "test"
	if err := clientcmd.WriteToFile(*kc, kubeconfig); err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(dir, "src")
	for _, b := range []string{"flatnet", "portmap", "loopback"} {
		if err := os.MkdirAll(src, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(src, b), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	confDir := filepath.Join(dir, "net.d")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	httpAddr := l.Addr().String()
	l.Close()
	cmd := command()
	cmd.SetArgs([]string{
		"--kubeconfig", kubeconfig, "--node-name", "node-a",
		"--plugin-src-dir", src, "--cni-bin-dir", filepath.Join(dir, "bin"), "--cni-conf-dir", confDir,
		"--state-dir", filepath.Join(dir, "state"), "--socket", filepath.Join(dir, "agent.sock"),
		"--http-addr", httpAddr, "--api-addr", "127.0.0.1:0",
		// The namespace's own port 4244; no certificate: the TCP side waits for one.
		"--hubble-socket-path", filepath.Join(dir, "hubble.sock"), "--hubble-listen-address", "127.0.0.1:4244",
		"--hubble-tls-cert-file", filepath.Join(dir, "tls", "tls.crt"), "--hubble-tls-key-file", filepath.Join(dir, "tls", "tls.key"),
		"--hubble-tls-client-ca-files", filepath.Join(dir, "tls", "ca.crt"),
	})
	done := make(chan error, 1)
	go func() { done <- cmd.Execute() }()

	// The conflist comes last: the agent is up. Then every watch the enforcer needs.
	want := []string{
		"/api/v1/pods", "/api/v1/nodes", "/api/v1/namespaces", "/api/v1/services",
		"/apis/networking.k8s.io/v1/networkpolicies",
		"/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
		"/apis/cilium.io/v2/ciliumnetworkpolicies", "/apis/cilium.io/v2/ciliumclusterwidenetworkpolicies",
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		conflists, _ := filepath.Glob(filepath.Join(confDir, "*.conflist"))
		if len(conflists) > 0 && watches.allOpen(want) {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("the agent stopped: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 60s: conflist %v, open watches %v, want all of %v", conflists, watches.snapshot(), want)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Hubble's metrics are on the agent's /metrics, the lost events read from
	// the real datapath (the counters have no series before the first flow).
	resp, err := http.Get("http://" + httpAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`hubble_lost_events_total{source="perf_event_ring_buffer"} `, "# HELP hubble_lost_events_total Number of lost events", "flatnet_endpoints "} {
		if !strings.Contains(string(body), want) {
			t.Errorf("GET /metrics: no %q in\n%s", want, body)
		}
	}
	// The Hubble Peer service, on the same node informer, announces the node.
	hubblePeers(t, filepath.Join(dir, "hubble.sock"))
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("the agent stopped with %v after SIGTERM", err)
	}
	most := watches.snapshot()
	t.Logf("most watches open at once, by path: %v", most)
	for res, n := range most {
		if n > 1 {
			t.Errorf("%s: %d watches open at once, want one shared by the whole agent", res, n)
		}
	}
}

// hubblePeers asks the agent's Hubble socket for its peers, as hubble-relay
// does over TCP, and expects node-a at its InternalIP and Hubble's port.
func hubblePeers(t *testing.T, sock string) {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := peerpb.NewPeerClient(conn).Notify(ctx, &peerpb.NotifyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	cn, err := s.Recv()
	if err != nil {
		t.Fatalf("Hubble Peer Notify on the agent's socket: %v", err)
	}
	got := fmt.Sprint(cn.GetType(), " ", cn.GetName(), " ", cn.GetAddress(), " ", cn.GetTls().GetServerName())
	if want := "PEER_ADDED node-a 10.224.0.2:4244 node-a.default.hubble-grpc.cilium.io"; got != want {
		t.Errorf("Hubble peer: %s, want %s", got, want)
	}
}

// isolate gives the re-executed test a bpffs of its own and a node interface
// holding the Node's InternalIP.
func isolate(t *testing.T) {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		t.Fatalf("make the mount namespace private: %v", err)
	}
	if err := unix.Mount("bpf", "/sys/fs/bpf", "bpf", 0, ""); err != nil {
		t.Fatalf("mount a bpffs of our own: %v", err)
	}
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	if err := podnettest.AddUplink(netip.MustParsePrefix("10.224.0.2/16")); err != nil {
		t.Fatal(err)
	}
}

// createNode registers node-a as its kubelet would: pod capacity and InternalIP.
func createNode(t *testing.T, rc *rest.Config) {
	kube, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	n, err := kube.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n.Status = corev1.NodeStatus{
		Capacity:  corev1.ResourceList{corev1.ResourcePods: *resource.NewQuantity(30, resource.DecimalSI)},
		Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "10.224.0.2"}},
	}
	if _, err := kube.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// watchCounter counts the watch requests open per path, and the most seen at once.
type watchCounter struct {
	mu         sync.Mutex
	open, most map[string]int
}

func (w *watchCounter) add(path string, d int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.open[path] += d
	w.most[path] = max(w.most[path], w.open[path])
}

func (w *watchCounter) allOpen(paths []string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return !slices.ContainsFunc(paths, func(p string) bool { return w.open[p] == 0 })
}

func (w *watchCounter) snapshot() map[string]int {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make(map[string]int, len(w.most))
	for p, n := range w.most {
		out[p] = n
	}
	return out
}

// countingProxy serves the API server over plain HTTP (it authenticates upstream as
// the test's admin) and counts the watches going through.
func countingProxy(t *testing.T, rc *rest.Config, w *watchCounter) string {
	rp := apiservertest.Proxy(t, rc)
	rp.FlushInterval = -1 // watch events as they come
	srv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if q := r.URL.Query().Get("watch"); q == "true" || q == "1" {
			w.add(r.URL.Path, 1)
			defer w.add(r.URL.Path, -1)
		}
		rp.ServeHTTP(rw, r)
	}))
	t.Cleanup(func() { srv.CloseClientConnections(); srv.Close() })
	return srv.URL
}
