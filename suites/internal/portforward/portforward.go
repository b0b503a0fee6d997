// Package portforward forwards a local port to a pod behind a Service through
// the API server's pods/portforward, as `kubectl port-forward svc/<name>` and
// `cilium hubble port-forward` do: suites reach an in-cluster server (the
// Hubble relay) the way a user does, with no NodePort or Ingress to add.
//
// The forward outlives the pod connection it starts with: when the API server
// or the kubelet drops it, or the pod goes, the Service is resolved again and
// the same local port forwarded anew, so a client retrying meanwhile sees a
// refused connection rather than a suite-ending error.
package portforward

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"

	"github.com/flatnet/flatnet/internal/podforward"
)

// Target is a Service port: namespace/name:port.
type Target struct {
	Namespace, Service string
	Port               int32
}

func (t Target) String() string { return fmt.Sprintf("%s/%s:%d", t.Namespace, t.Service, t.Port) }

// ParseTarget reads "namespace/service:port".
func ParseTarget(s string) (Target, error) {
	nsName, port, ok := strings.Cut(s, ":")
	ns, name, ok2 := strings.Cut(nsName, "/")
	if !ok || !ok2 || ns == "" || name == "" {
		return Target{}, fmt.Errorf("%q is not <namespace>/<service>:<port>, e.g. flatnet-system/hubble-relay:80", s)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || p == 0 {
		return Target{}, fmt.Errorf("%q: port %q is not a number from 1 to 65535", s, port)
	}
	return Target{Namespace: ns, Service: name, Port: int32(p)}, nil
}

// Backend is the pod a Service port leads to and the pod's port.
type Backend struct {
	Pod  corev1.Pod
	Port int32
}

// Resolve picks a Ready pod behind the Service port, from the Service's
// EndpointSlices (which hold the target port already resolved, named or not).
func Resolve(ctx context.Context, cs kubernetes.Interface, t Target) (Backend, error) {
	svc, err := cs.CoreV1().Services(t.Namespace).Get(ctx, t.Service, metav1.GetOptions{})
	if err != nil {
		return Backend{}, fmt.Errorf("getting Service %s/%s: %w", t.Namespace, t.Service, err)
	}
	var portName string
	found := false
	var have []string
	for _, p := range svc.Spec.Ports {
		have = append(have, strconv.Itoa(int(p.Port)))
		if p.Port == t.Port {
			portName, found = p.Name, true
		}
	}
	if !found {
		return Backend{}, fmt.Errorf("Service %s/%s has no port %d (it has %s)", t.Namespace, t.Service, t.Port, strings.Join(have, ", "))
	}
	slices, err := cs.DiscoveryV1().EndpointSlices(t.Namespace).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + t.Service})
	if err != nil {
		return Backend{}, fmt.Errorf("listing the EndpointSlices of Service %s/%s: %w", t.Namespace, t.Service, err)
	}
	for _, s := range slices.Items {
		var port int32
		for _, p := range s.Ports {
			name := ""
			if p.Name != nil {
				name = *p.Name
			}
			if p.Port != nil && name == portName {
				port = *p.Port
			}
		}
		if port == 0 {
			continue
		}
		for _, e := range s.Endpoints {
			if e.TargetRef == nil || e.TargetRef.Kind != "Pod" || e.Conditions.Ready == nil || !*e.Conditions.Ready {
				continue
			}
			pod, err := cs.CoreV1().Pods(t.Namespace).Get(ctx, e.TargetRef.Name, metav1.GetOptions{})
			if err != nil {
				continue // replaced since the slice was written
			}
			return Backend{Pod: *pod, Port: port}, nil
		}
	}
	return Backend{}, fmt.Errorf("Service %s/%s has %w behind port %d (selector %v): is it deployed and Ready? kubectl -n %s get pods -l %s",
		t.Namespace, t.Service, ErrNoReadyPod, t.Port, svc.Spec.Selector, t.Namespace, metav1.FormatLabelSelector(&metav1.LabelSelector{MatchLabels: svc.Spec.Selector}))
}

// Forward is a local port forwarded to a Service's pod until Close.
type Forward struct {
	Target Target
	// Port is the local port, on localhost (127.0.0.1 and ::1 where there is one).
	Port int

	rest   *rest.Config
	cs     kubernetes.Interface
	log    io.Writer
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	backend Backend
	lost    []string // why earlier connections ended
}

// ErrNoReadyPod is in the error of a Service with no Ready pod behind the port:
// a caller may wait for one (a pod restarting), unlike for a missing Service.
var ErrNoReadyPod = errors.New("no Ready pod")

// Start resolves the Service and forwards a free local port to its pod,
// returning once the port accepts connections (or ctx ends). Log, if not
// nil, hears of every (re)connection and loss.
func Start(ctx context.Context, restCfg *rest.Config, cs kubernetes.Interface, t Target, log io.Writer) (*Forward, error) {
	if log == nil {
		log = io.Discard
	}
	runCtx, cancel := context.WithCancel(context.Background())
	f := &Forward{Target: t, rest: restCfg, cs: cs, log: log, cancel: cancel, done: make(chan struct{})}
	ready := make(chan error, 1)
	go f.run(runCtx, ready)
	select {
	case err := <-ready:
		if err != nil {
			f.Close()
			return nil, err
		}
		return f, nil
	case <-ctx.Done():
		f.Close()
		return nil, fmt.Errorf("port-forwarding to %s: %w", t, ctx.Err())
	}
}

// Addr is the address a client dials: localhost:<port>.
func (f *Forward) Addr() string { return net.JoinHostPort("localhost", strconv.Itoa(f.Port)) }

// Backend is the pod the port leads to now.
func (f *Forward) Backend() Backend {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.backend
}

// Losses says why earlier connections to the pod ended, for failure messages.
func (f *Forward) Losses() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.lost...)
}

// Close stops forwarding and waits for the forwarder to end.
func (f *Forward) Close() {
	f.cancel()
	<-f.done
}

// run forwards until ctx ends, reconnecting after a loss; the first
// outcome (listening, or the first error) goes to ready.
func (f *Forward) run(ctx context.Context, ready chan<- error) {
	defer close(f.done)
	first := true
	for ctx.Err() == nil {
		err := f.once(ctx, func(b Backend, port int) {
			f.mu.Lock()
			f.backend = b
			f.mu.Unlock()
			if first {
				f.Port = port // written once, before Start returns; later forwards keep it
			}
			fmt.Fprintf(f.log, "port-forward localhost:%d -> %s (pod %s/%s on node %s, port %d)\n", port, f.Target, b.Pod.Namespace, b.Pod.Name, b.Pod.Spec.NodeName, b.Port)
			if first {
				first = false
				ready <- nil
			}
		})
		if ctx.Err() != nil {
			return
		}
		if first {
			ready <- fmt.Errorf("port-forwarding to %s: %w", f.Target, err)
			return
		}
		msg := fmt.Sprintf("%s: port-forward to %s ended: %v", time.Now().Format(time.RFC3339Nano), f.Target, err)
		f.mu.Lock()
		f.lost = append(f.lost, msg)
		f.mu.Unlock()
		fmt.Fprintln(f.log, msg+"; reconnecting")
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// once resolves the Service and forwards until the connection ends.
func (f *Forward) once(ctx context.Context, listening func(Backend, int)) error {
	b, err := Resolve(ctx, f.cs, f.Target)
	if err != nil {
		return err
	}
	dialer, err := podforward.Dialer(f.cs, f.rest, b.Pod)
	if err != nil {
		return err
	}
	stop, readyCh := make(chan struct{}), make(chan struct{})
	// The first forward takes a free port; later ones keep it, so clients
	// holding the address reach the new connection.
	pf, err := portforward.NewOnAddresses(dialer, []string{"localhost"}, []string{fmt.Sprintf("%d:%d", f.Port, b.Port)}, stop, readyCh, io.Discard, f.log)
	if err != nil {
		return fmt.Errorf("setting up the port-forward to pod %s/%s: %w", b.Pod.Namespace, b.Pod.Name, err)
	}
	errc := make(chan error, 1)
	go func() { errc <- pf.ForwardPorts() }()
	select {
	case <-readyCh:
	case err := <-errc:
		return fmt.Errorf("pod %s/%s port %d (needs RBAC create on pods/portforward in %s): %w", b.Pod.Namespace, b.Pod.Name, b.Port, b.Pod.Namespace, err)
	case <-ctx.Done():
		close(stop)
		<-errc
		return ctx.Err()
	}
	ports, err := pf.GetPorts()
	if err != nil || len(ports) != 1 {
		close(stop)
		<-errc
		return fmt.Errorf("reading the forwarded port: %v", err)
	}
	listening(b, int(ports[0].Local))
	select {
	case err := <-errc:
		if err == nil {
			err = errors.New("the forwarder stopped")
		}
		return fmt.Errorf("pod %s/%s: %w", b.Pod.Namespace, b.Pod.Name, err)
	case <-ctx.Done():
		close(stop)
		<-errc
		return ctx.Err()
	}
}
