package portforward

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
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

// Resolve, on a real API server: the Service's port leads, through its
// EndpointSlices, to a Ready pod and the port the slice resolved (a named
// targetPort); a port the Service lacks, or no Ready pod, is an error saying
// what there is.
func TestResolveOnAnAPIServer(t *testing.T) {
	dir := apiservertest.Require(t)
	te := &envtest.Environment{BinaryAssetsDirectory: dir}
	cfg, err := te.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer te.Stop()
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const ns = "hubble"
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}))
	// envtest runs no controller-manager to make it; pods need it.
	must(cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}))
	for _, name := range []string{"relay-a", "relay-b"} {
		must(cs.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": "relay"}},
			Spec:       corev1.PodSpec{NodeName: "worker", Containers: []corev1.Container{{Name: "relay", Image: "relay"}}},
		}, metav1.CreateOptions{}))
	}
	must(cs.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "hubble-relay"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "relay"}, Ports: []corev1.ServicePort{
			{Name: "metrics", Port: 9966, TargetPort: intstr.FromInt32(9966)},
			{Name: "grpc", Port: 80, TargetPort: intstr.FromString("grpc")},
		}},
	}, metav1.CreateOptions{}))
	target := Target{Namespace: ns, Service: "hubble-relay", Port: 80}

	if _, err := Resolve(ctx, cs, target); err == nil || !strings.Contains(err.Error(), "no Ready pod behind port 80") {
		t.Errorf("no EndpointSlice yet: err = %v", err)
	}
	ptr := func(s string) *string { return &s }
	port := func(n int32) *int32 { return &n }
	ready := func(b bool) *bool { return &b }
	must(cs.DiscoveryV1().EndpointSlices(ns).Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "hubble-relay-x", Labels: map[string]string{discoveryv1.LabelServiceName: "hubble-relay"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("metrics"), Port: port(9966)}, {Name: ptr("grpc"), Port: port(4245)}},
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"10.224.1.2"}, Conditions: discoveryv1.EndpointConditions{Ready: ready(false)}, TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: "relay-a"}},
			{Addresses: []string{"10.224.1.3"}, Conditions: discoveryv1.EndpointConditions{Ready: ready(true)}, TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: "relay-b"}},
		},
	}, metav1.CreateOptions{}))
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
