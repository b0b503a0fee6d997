package portforward

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	kubeletpf "k8s.io/kubelet/pkg/cri/streaming/portforward"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/flatnet/flatnet/internal/apiservertest"
)

func TestParseTarget(t *testing.T) {
	got, err := ParseTarget("flatnet-system/hubble-relay:80")
	if err != nil || got != (Target{Namespace: "flatnet-system", Service: "hubble-relay", Port: 80}) || got.String() != "flatnet-system/hubble-relay:80" {
		t.Errorf("ParseTarget = %+v, %v", got, err)
	}
	for in, want := range map[string]string{
		"hubble-relay:80":            "<namespace>/<service>:<port>",
		"kube-system/hubble-relay":   "<namespace>/<service>:<port>",
		"/hubble-relay:80":           "<namespace>/<service>:<port>",
		"kube-system/hubble-relay:0": "from 1 to 65535",
		"kube-system/hubble-relay:x": `port "x"`,
	} {
		if _, err := ParseTarget(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseTarget(%q) err = %v; want it to say %q", in, err, want)
		}
	}
}

const ns = "hubble"

var target = Target{Namespace: ns, Service: "hubble-relay", Port: 80}

// relayService starts a real kube-apiserver (envtest) holding Service
// hubble-relay (port 80 -> named port grpc) and its pods relay-a and
// relay-b, but no EndpointSlice yet (addSlice adds it).
func relayService(t *testing.T) (*rest.Config, kubernetes.Interface) {
	dir := apiservertest.Require(t)
	te := &envtest.Environment{BinaryAssetsDirectory: dir}
	cfg, err := te.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = te.Stop() })
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	must(t)(cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}))
	// envtest runs no controller-manager to make it; pods need it.
	must(t)(cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}))
	for _, name := range []string{"relay-a", "relay-b"} {
		must(t)(cs.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": "relay"}},
			Spec:       corev1.PodSpec{NodeName: "worker", Containers: []corev1.Container{{Name: "relay", Image: "relay"}}},
		}, metav1.CreateOptions{}))
	}
	must(t)(cs.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "hubble-relay"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "relay"}, Ports: []corev1.ServicePort{
			{Name: "metrics", Port: 9966, TargetPort: intstr.FromInt32(9966)},
			{Name: "grpc", Port: 80, TargetPort: intstr.FromString("grpc")},
		}},
	}, metav1.CreateOptions{}))
	return cfg, cs
}

// addSlice writes the Service's EndpointSlice: relay-a not Ready, relay-b
// Ready, port grpc resolved to 4245.
func addSlice(t *testing.T, cs kubernetes.Interface) {
	ptr := func(s string) *string { return &s }
	port := func(n int32) *int32 { return &n }
	ready := func(b bool) *bool { return &b }
	must(t)(cs.DiscoveryV1().EndpointSlices(ns).Create(context.Background(), &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "hubble-relay-x", Labels: map[string]string{discoveryv1.LabelServiceName: "hubble-relay"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("metrics"), Port: port(9966)}, {Name: ptr("grpc"), Port: port(4245)}},
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"10.224.1.2"}, Conditions: discoveryv1.EndpointConditions{Ready: ready(false)}, TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: "relay-a"}},
			{Addresses: []string{"10.224.1.3"}, Conditions: discoveryv1.EndpointConditions{Ready: ready(true)}, TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: "relay-b"}},
		},
	}, metav1.CreateOptions{}))
}

func must(t *testing.T) func(any, error) {
	return func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
}

// Resolve, on a real API server: the Service's port leads, through its
// EndpointSlices, to a Ready pod and the port the slice resolved (a named
// targetPort); a port the Service lacks, or no Ready pod, is an error saying
// what there is.
func TestResolveOnAnAPIServer(t *testing.T) {
	cfg, cs := relayService(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := Resolve(ctx, cs, target); err == nil || !strings.Contains(err.Error(), "no Ready pod behind port 80") {
		t.Errorf("no EndpointSlice yet: err = %v", err)
	}
	addSlice(t, cs)
	b, err := Resolve(ctx, cs, target)
	if err != nil || b.Pod.Name != "relay-b" || b.Port != 4245 {
		t.Errorf("Resolve = pod %q port %d, %v; want the Ready relay-b and the grpc port the slice resolved, 4245", b.Pod.Name, b.Port, err)
	}
	if _, err := Resolve(ctx, cs, Target{Namespace: ns, Service: "hubble-relay", Port: 443}); err == nil || !strings.Contains(err.Error(), "has no port 443 (it has 9966, 80)") {
		t.Errorf("a port the Service lacks: err = %v", err)
	}
	// Start fails at once, saying why, when there is nothing to forward to.
	if _, err := Start(ctx, cfg, cs, Target{Namespace: ns, Service: "missing", Port: 80}, nil); err == nil || !strings.Contains(err.Error(), `"missing" not found`) {
		t.Errorf("Start on a missing Service: err = %v", err)
	}
}

// kubelet forwards the pod's port to an echo server, as the kubelet's
// streaming server does, and records which pod and port were asked for.
type kubelet struct {
	echo  string
	mu    sync.Mutex
	asked []string
}

func (k *kubelet) PortForward(ctx context.Context, pod string, _ types.UID, port int32, stream io.ReadWriteCloser) error {
	k.mu.Lock()
	k.asked = append(k.asked, fmt.Sprintf("%s:%d", pod, port))
	k.mu.Unlock()
	c, err := net.Dial("tcp", k.echo)
	if err != nil {
		return err
	}
	defer c.Close()
	go func() { _, _ = io.Copy(c, stream) }()
	_, err = io.Copy(stream, c)
	return err
}

// Start forwards a local port to the Service's Ready pod through
// pods/portforward, and after the connection is lost forwards the same port
// anew. The API server is the real one (envtest) for the objects; its
// pods/portforward, which needs a kubelet, is served by the kubelet's own
// streaming library in front of it (SPDY: like an API server that does not
// tunnel WebSockets, so the dialer falls back as kubectl's does).
func TestForwardReachesThePodAndComesBackAfterALoss(t *testing.T) {
	cfg, cs := relayService(t)
	addSlice(t, cs)
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	k := &kubelet{echo: echo.Addr().String()}
	proxy := apiservertest.Proxy(t, cfg)
	front := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		parts := strings.Split(r.URL.Path, "/")
		if len(parts) < 2 || parts[len(parts)-1] != "portforward" {
			proxy.ServeHTTP(w, r)
			return
		}
		if r.Header.Get("Upgrade") == "websocket" {
			http.Error(w, "no WebSocket tunnelling here", http.StatusBadRequest)
			return
		}
		kubeletpf.ServePortForward(w, r, k, parts[len(parts)-2], "", nil, time.Minute, 30*time.Second, kubeletpf.SupportedProtocols)
	}))
	// The upgraded connections leave http.Server's books: keep our own.
	conns := &connLog{Listener: front.Listener}
	front.Listener = conns
	front.Start()
	defer front.Close()
	frontCfg := &rest.Config{Host: front.URL}
	frontCS, err := kubernetes.NewForConfig(frontCfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var log strings.Builder
	f, err := Start(ctx, frontCfg, frontCS, target, &syncLog{b: &log})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if b := f.Backend(); b.Pod.Name != "relay-b" || b.Port != 4245 || f.Port == 0 || !strings.HasPrefix(f.Addr(), "localhost:") {
		t.Errorf("forwarding localhost port %d (%s) to pod %q port %d; want relay-b:4245", f.Port, f.Addr(), b.Pod.Name, b.Port)
	}
	roundTrip := func() error {
		c, err := net.DialTimeout("tcp", f.Addr(), 5*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte("ping\n")); err != nil {
			return err
		}
		got, err := bufio.NewReader(c).ReadString('\n')
		if err != nil || got != "ping\n" {
			return fmt.Errorf("echo through the forward: %q, %v", got, err)
		}
		return nil
	}
	if err := roundTrip(); err != nil {
		t.Fatal(err)
	}
	k.mu.Lock()
	if len(k.asked) != 1 || k.asked[0] != "relay-b:4245" {
		t.Errorf("the kubelet was asked for %v; want relay-b:4245", k.asked)
	}
	k.mu.Unlock()

	conns.closeAll() // the API server drops the forward
	deadline := time.Now().Add(30 * time.Second)
	for len(f.Losses()) == 0 || roundTrip() != nil {
		if time.Now().After(deadline) {
			t.Fatalf("after the loss: losses %v, round trip %v; log:\n%s", f.Losses(), roundTrip(), log.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !strings.Contains(f.Losses()[0], "lost connection to pod") {
		t.Errorf("losses %v; want the lost connection named", f.Losses())
	}
}

// connLog is a listener that can close every connection it accepted.
type connLog struct {
	net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func (l *connLog) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.mu.Lock()
		l.conns = append(l.conns, c)
		l.mu.Unlock()
	}
	return c, err
}

func (l *connLog) closeAll() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.conns {
		_ = c.Close()
	}
	l.conns = nil
}

type syncLog struct {
	mu sync.Mutex
	b  *strings.Builder
}

func (l *syncLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}
