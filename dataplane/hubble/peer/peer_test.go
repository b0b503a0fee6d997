package peer_test

import (
	"context"
	"fmt"
	"net"
	"sort"
	"strings"
	"testing"
	"time"

	peerpb "github.com/cilium/cilium/api/v1/peer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/flatnet/flatnet/dataplane/hubble/peer"
)

func node(name string, addrs ...corev1.NodeAddress) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Status: corev1.NodeStatus{Addresses: addrs}}
}

func internal(ip string) corev1.NodeAddress {
	return corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: ip}
}

// serve runs the Peer service over kube's node informer on a real TCP socket and
// returns a client of it (the upstream generated one).
func serve(t testing.TB, kube kubernetes.Interface, opts peer.Options, dial ...grpc.DialOption) peerpb.PeerClient {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	factory := informers.NewSharedInformerFactory(kube, 0)
	svc := peer.New(factory.Core().V1().Nodes().Informer(), opts)
	factory.Start(ctx.Done())
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	peerpb.RegisterPeerServer(g, svc)
	go func() { _ = g.Serve(l) }()
	conn, err := grpc.NewClient(l.Addr().String(), append(dial, grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		g.Stop()
		cancel()
		factory.Shutdown()
	})
	return peerpb.NewPeerClient(conn)
}

func notify(t testing.TB, c peerpb.PeerClient) peerpb.Peer_NotifyClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	s, err := c.Notify(ctx, &peerpb.NotifyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// got is a notification's fields a client uses, in one comparable string.
func got(cn *peerpb.ChangeNotification) string {
	return fmt.Sprintf("%s %s %s tls=%q", cn.GetType(), cn.GetName(), cn.GetAddress(), cn.GetTls().GetServerName())
}

func recv(t testing.TB, s peerpb.Peer_NotifyClient, n int) []string {
	t.Helper()
	var out []string
	for range n {
		cn, err := s.Recv()
		if err != nil {
			t.Fatalf("after %v: %v", out, err)
		}
		out = append(out, got(cn))
	}
	return out
}

func TestNotifyAddsEveryNodeThenFollowsChanges(t *testing.T) {
	ctx := context.Background()
	kube := fake.NewClientset(
		node("kind-worker", internal("10.224.0.3")),
		node("kind-control-plane", internal("10.224.0.2"), corev1.NodeAddress{Type: corev1.NodeHostName, Address: "kind-control-plane"}),
	)
	s := notify(t, serve(t, kube, peer.Options{Port: 4244}))

	initial := recv(t, s, 2)
	sort.Strings(initial)
	want := []string{
		`PEER_ADDED kind-control-plane 10.224.0.2:4244 tls="kind-control-plane.default.hubble-grpc.cilium.io"`,
		`PEER_ADDED kind-worker 10.224.0.3:4244 tls="kind-worker.default.hubble-grpc.cilium.io"`,
	}
	if fmt.Sprint(initial) != fmt.Sprint(want) {
		t.Fatalf("on subscribe:\n got %q\nwant %q", initial, want)
	}

	// A change a client does not see (labels, a heartbeat) sends nothing: the
	// next notification is the address change after it.
	w, _ := kube.CoreV1().Nodes().Get(ctx, "kind-worker", metav1.GetOptions{})
	w.Labels = map[string]string{"x": "y"}
	if _, err := kube.CoreV1().Nodes().Update(ctx, w, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	w.Status.Addresses = []corev1.NodeAddress{internal("10.224.0.9")}
	if _, err := kube.CoreV1().Nodes().Update(ctx, w, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := kube.CoreV1().Nodes().Create(ctx, node("kind-worker2", internal("10.224.0.4")), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := kube.CoreV1().Nodes().Delete(ctx, "kind-control-plane", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	changes := recv(t, s, 3)
	want = []string{
		`PEER_UPDATED kind-worker 10.224.0.9:4244 tls="kind-worker.default.hubble-grpc.cilium.io"`,
		`PEER_ADDED kind-worker2 10.224.0.4:4244 tls="kind-worker2.default.hubble-grpc.cilium.io"`,
		`PEER_DELETED kind-control-plane 10.224.0.2:4244 tls="kind-control-plane.default.hubble-grpc.cilium.io"`,
	}
	if fmt.Sprint(changes) != fmt.Sprint(want) {
		t.Fatalf("changes:\n got %q\nwant %q", changes, want)
	}

	// A second client subscribing now sees the cluster as it is.
	again := recv(t, notify(t, serve(t, kube, peer.Options{Port: 4244})), 2)
	sort.Strings(again)
	want = []string{
		`PEER_ADDED kind-worker 10.224.0.9:4244 tls="kind-worker.default.hubble-grpc.cilium.io"`,
		`PEER_ADDED kind-worker2 10.224.0.4:4244 tls="kind-worker2.default.hubble-grpc.cilium.io"`,
	}
	if fmt.Sprint(again) != fmt.Sprint(want) {
		t.Fatalf("a later subscriber:\n got %q\nwant %q", again, want)
	}
}

// Names follow Cilium's scheme: a non-default cluster prefixes the peer name,
// dots in node and cluster names become hyphens in the TLS server name; without
// TLS no server name is sent (the relay then dials in plaintext).
func TestNotifyNamesAndAddresses(t *testing.T) {
	kube := fake.NewClientset(
		node("n1.example.com", internal("10.224.0.5")),
		node("ext", corev1.NodeAddress{Type: corev1.NodeExternalIP, Address: "192.0.2.7"}, corev1.NodeAddress{Type: corev1.NodeHostName, Address: "ext"}),
		node("v6", internal("fd00::5"), corev1.NodeAddress{Type: corev1.NodeExternalIP, Address: "192.0.2.8"}),
		node("none"),
	)
	for _, tc := range []struct {
		opts peer.Options
		want []string
	}{{
		opts: peer.Options{Port: 4244, ClusterName: "mesh.one"},
		want: []string{
			`PEER_ADDED mesh.one/ext 192.0.2.7:4244 tls="ext.mesh-one.hubble-grpc.cilium.io"`,
			`PEER_ADDED mesh.one/n1.example.com 10.224.0.5:4244 tls="n1-example-com.mesh-one.hubble-grpc.cilium.io"`,
			`PEER_ADDED mesh.one/none  tls="none.mesh-one.hubble-grpc.cilium.io"`,
			`PEER_ADDED mesh.one/v6 192.0.2.8:4244 tls="v6.mesh-one.hubble-grpc.cilium.io"`,
		},
	}, {
		opts: peer.Options{Port: 4245, WithoutTLS: true},
		want: []string{
			`PEER_ADDED ext 192.0.2.7:4245 tls=""`,
			`PEER_ADDED n1.example.com 10.224.0.5:4245 tls=""`,
			`PEER_ADDED none  tls=""`,
			`PEER_ADDED v6 192.0.2.8:4245 tls=""`,
		},
	}} {
		all := recv(t, notify(t, serve(t, kube, tc.opts)), 4)
		sort.Strings(all)
		if fmt.Sprint(all) != fmt.Sprint(tc.want) {
			t.Errorf("%+v:\n got %q\nwant %q", tc.opts, all, tc.want)
		}
	}
}

// A client that stops reading is cut off once MaxBuffered notifications wait for
// it: the agent's memory stays bounded, the client is told why.
func TestNotifyDisconnectsAClientThatDoesNotRead(t *testing.T) {
	ctx := context.Background()
	// A long name (a DNS subdomain may have 253 characters) makes each
	// notification ~0.5 KiB, so a few hundred fill the windows.
	name := strings.Repeat(strings.Repeat("x", 62)+".", 4)[:250]
	kube := fake.NewClientset(node(name, internal("10.224.1.0")))
	// A fixed window: the client's transport takes no more than 64 KiB unread.
	c := serve(t, kube, peer.Options{Port: 4244, MaxBuffered: 100}, grpc.WithInitialWindowSize(1<<16), grpc.WithInitialConnWindowSize(1<<16))
	s := notify(t, c)
	recv(t, s, 1)
	const updates = 1000 // ~500 KiB of notifications: far past the windows and the queue
	n := node(name)
	for i := range updates {
		n.Status.Addresses = []corev1.NodeAddress{internal(fmt.Sprintf("10.224.%d.%d", 1+i/250, i%250+1))}
		if _, err := kube.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; ; i++ {
		_, err := s.Recv()
		if err == nil {
			continue
		}
		if status.Code(err) != codes.ResourceExhausted {
			t.Fatalf("after %d notifications: %v, want ResourceExhausted", i, err)
		}
		if i >= updates {
			t.Fatalf("got all %d notifications before the error: the queue was never full", i)
		}
		t.Logf("cut off after %d of %d notifications: %v", i, updates, err)
		return
	}
}
