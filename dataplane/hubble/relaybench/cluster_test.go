package relaybench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	observerpb "github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/flatnet/flatnet/dataplane/flows"
	"github.com/flatnet/flatnet/dataplane/hubble/observer"
	"github.com/flatnet/flatnet/dataplane/hubble/peer"
	"github.com/flatnet/flatnet/dataplane/hubble/server"
)

// nodes is how many agents the relay merges: the figure is at 3.
const nodes = 3

// The relay's tuning, as dataplane/manifests/hubble-relay.yaml deploys it
// (Cilium's defaults).
const (
	sortBufferLenMax       = 100
	sortBufferDrainTimeout = time.Second
)

// relayBinary is the upstream hubble-relay scripts/hubble-build.sh builds
// (bin/hubble-relay), or $FLATNET_HUBBLE_RELAY. Without it the benchmark skips,
// unless FLATNET_REQUIRE_HUBBLE_RELAY=1.
func relayBinary(tb testing.TB) string {
	bin := os.Getenv("FLATNET_HUBBLE_RELAY")
	if bin == "" {
		bin, _ = filepath.Abs("../../../bin/hubble-relay")
	}
	if _, err := os.Stat(bin); err != nil {
		if os.Getenv("FLATNET_REQUIRE_HUBBLE_RELAY") == "1" {
			tb.Fatalf("no hubble-relay at %s: run scripts/bench-hubble.sh, or set FLATNET_HUBBLE_RELAY", bin)
		}
		tb.Skipf("no hubble-relay at %s (scripts/hubble-build.sh hubble-relay bin/hubble-relay builds it)", bin)
	}
	return bin
}

// agent is one in-process node: its flow store, Observer and gRPC server.
type agent struct {
	name   string
	store  *flows.Store
	client observerpb.ObserverClient
}

// cluster is three agents on 127.0.0.1-3 (one port: each node its own address,
// as the Peer service announces them) and the relay in front of them.
type cluster struct {
	agents []*agent
	relay  observerpb.ObserverClient
	pid    int // the relay's
}

// startCluster starts the agents, each serving Observer and Peer in plaintext as
// with --hubble-disable-tls, then hubble-relay finding them through the first
// agent's Peer service; it returns once the relay reports every node connected.
func startCluster(tb testing.TB, relayBin string) *cluster {
	tb.Helper()
	port := freePort(tb, nodes)
	var objs []*corev1.Node
	for i := range nodes {
		objs = append(objs, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("node-%d", i)},
			Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: loopback(i).String()}}}})
	}
	// The Peer service reads nodes from an informer; a fake clientset feeds it
	// the three Node objects (what the relay does with them is real).
	kube := fake.NewClientset(objs[0], objs[1], objs[2])
	factory := informers.NewSharedInformerFactory(kube, 0)
	peers := peer.New(factory.Core().V1().Nodes().Informer(), peer.Options{Port: port, WithoutTLS: true})
	stop := make(chan struct{})
	tb.Cleanup(func() { close(stop) })
	factory.Start(stop)
	factory.WaitForCacheSync(stop)

	log := slog.New(slog.DiscardHandler)
	c := &cluster{}
	for i := range nodes {
		a := &agent{name: fmt.Sprintf("node-%d", i), store: flows.NewStore(flows.DefaultCapacity)}
		obs := observer.New(a.store, observer.Config{NodeName: a.name, Version: "flatnet relaybench"})
		addr := net.JoinHostPort(loopback(i).String(), strconv.Itoa(port))
		srv, err := server.Start(server.Options{Observer: obs, Peer: peers, ListenAddress: addr, DisableTLS: true}, log)
		if err != nil {
			tb.Fatalf("starting agent %s: %v", a.name, err)
		}
		tb.Cleanup(srv.Stop)
		a.client = dial(tb, addr)
		c.agents = append(c.agents, a)
	}

	relayAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(tb, 1)))
	healthAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(tb, 1)))
	cmd := exec.Command(relayBin, "serve",
		"--peer-service", net.JoinHostPort(loopback(0).String(), strconv.Itoa(port)),
		"--listen-address", relayAddr, "--health-listen-address", healthAddr,
		"--disable-server-tls", "--disable-client-tls", "--gops=false",
		"--sort-buffer-len-max", strconv.Itoa(sortBufferLenMax),
		"--sort-buffer-drain-timeout", sortBufferDrainTimeout.String(),
		"--log-level", "warn")
	var logs strings.Builder
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		tb.Fatalf("starting %s: %v", relayBin, err)
	}
	tb.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	c.pid = cmd.Process.Pid
	c.relay = dial(tb, relayAddr)
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		st, err := c.relay.ServerStatus(ctx, &observerpb.ServerStatusRequest{})
		cancel()
		if err == nil && st.GetNumConnectedNodes().GetValue() == nodes {
			return c
		}
		if time.Now().After(deadline) {
			tb.Fatalf("hubble-relay did not connect to the %d agents within 60s (status %v, %v); its log:\n%s", nodes, st, err, logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// loopback is node i's address.
func loopback(i int) netip.Addr { return netip.AddrFrom4([4]byte{127, 0, 0, byte(1 + i)}) }

// freePort finds a TCP port free on the first n loopback addresses.
func freePort(tb testing.TB, n int) int {
	tb.Helper()
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		ls := []net.Listener{l}
		ok := true
		for i := 1; i < n; i++ {
			o, err := net.Listen("tcp", net.JoinHostPort(loopback(i).String(), strconv.Itoa(port)))
			if err != nil {
				ok = false
				break
			}
			ls = append(ls, o)
		}
		for _, l := range ls {
			_ = l.Close()
		}
		if ok {
			return port
		}
	}
	tb.Fatalf("no port free on %d loopback addresses", n)
	return 0
}

func dial(tb testing.TB, addr string) observerpb.ObserverClient {
	tb.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16<<20)))
	if err != nil {
		tb.Fatalf("dialing %s: %v", addr, err)
	}
	tb.Cleanup(func() { _ = conn.Close() })
	return observerpb.NewObserverClient(conn)
}

// cpuTicks is a process's user+system CPU time from /proc, in clock ticks
// (USER_HZ, 100 per second on Linux).
func cpuTicks(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command name, which is in parentheses and may hold spaces.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: utime %q stime %q", pid, f[11], f[12])
	}
	return utime + stime, nil
}

// read drains a GetFlows stream, calling flow for each flow (other responses,
// the relay's node status events, are skipped), until the stream ends or flow
// returns false.
func read(stream grpc.ServerStreamingClient[observerpb.GetFlowsResponse], flow func(*observerpb.GetFlowsResponse) bool) error {
	for {
		r, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if r.GetFlow() != nil && !flow(r) {
			return nil
		}
	}
}
