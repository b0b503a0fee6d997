package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"

	"github.com/flatnet/flatnet/internal/podforward"
)

// agents reaches the flatnet agents' API, which listens on the host's loopback
// only (no pod reaches it), through the API server's pods/portforward
// subresource: the API server authenticates the user, RBAC (create
// pods/portforward in the agents' namespace) decides, and the kubelet connects
// to 127.0.0.1:port in the host-network agent's namespace. The CLI never needs
// a route to the nodes, and no local port is opened.
type agents struct {
	kube      kubernetes.Interface
	rest      *rest.Config
	namespace string
	selector  string
	port      int
	// dial opens a byte stream to port on pod's node; nil is pods/portforward.
	dial func(ctx context.Context, pod corev1.Pod, port int) (io.ReadWriteCloser, error)
}

func (a agents) list(ctx context.Context) ([]corev1.Pod, error) {
	pl, err := a.kube.CoreV1().Pods(a.namespace).List(ctx, metav1.ListOptions{LabelSelector: a.selector})
	if err != nil {
		return nil, fmt.Errorf("listing agent pods (namespace %s, -l %s): %w", a.namespace, a.selector, err)
	}
	if len(pl.Items) == 0 {
		return nil, fmt.Errorf("no flatnet agent pods in namespace %s with labels %s: is flatnet deployed? (--agent-namespace, --agent-selector)", a.namespace, a.selector)
	}
	sort.Slice(pl.Items, func(i, j int) bool { return pl.Items[i].Spec.NodeName < pl.Items[j].Spec.NodeName })
	return pl.Items, nil
}

// onNode returns the agent pod of a node.
func (a agents) onNode(ctx context.Context, node string) (corev1.Pod, error) {
	pods, err := a.list(ctx)
	if err != nil {
		return corev1.Pod{}, err
	}
	for _, p := range pods {
		if p.Spec.NodeName == node {
			return p, nil
		}
	}
	return corev1.Pod{}, fmt.Errorf("no flatnet agent pod on node %s", node)
}

// get streams GET path?q from one agent; the caller closes the body. An answer
// other than 200 is an error carrying the agent's own words.
func (a agents) get(ctx context.Context, pod corev1.Pod, path string, q url.Values) (io.ReadCloser, error) {
	if pod.Status.Phase != corev1.PodRunning {
		return nil, fmt.Errorf("agent %s on node %s is %s, not Running", pod.Name, pod.Spec.NodeName, pod.Status.Phase)
	}
	where := fmt.Sprintf("agent %s on node %s", pod.Name, pod.Spec.NodeName)
	dial := a.dial
	if dial == nil {
		dial = a.portForward
	}
	conn, err := dial(ctx, pod, a.port)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	// One request per stream: closing the body (or ctx ending) closes the stream.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	fail := func(err error) (io.ReadCloser, error) {
		stop()
		conn.Close()
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	u := url.URL{Scheme: "http", Host: "flatnet-agent", Path: path, RawQuery: q.Encode()}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return fail(err)
	}
	req.Close = true
	if err := req.Write(conn); err != nil {
		return fail(fmt.Errorf("sending GET %s: %w", path, remoteError(conn, err)))
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		return fail(fmt.Errorf("GET %s: %w", path, remoteError(conn, err)))
	}
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fail(fmt.Errorf("GET %s: %s: %s", path, resp.Status, strings.TrimSpace(string(msg))))
	}
	return body{ReadCloser: resp.Body, close: func() { stop(); conn.Close() }}, nil
}

type body struct {
	io.ReadCloser
	close func()
}

func (b body) Close() error {
	err := b.ReadCloser.Close()
	b.close()
	return err
}

// remoteError prefers what the kubelet said on the error stream (the agent
// does not listen, the pod is gone) to a bare EOF on the data stream.
func remoteError(conn io.ReadWriteCloser, err error) error {
	if f, ok := conn.(*forwarded); ok {
		if rerr := f.remoteError(2 * time.Second); rerr != nil {
			return rerr
		}
	}
	return err
}

// portForward opens one forwarded stream to port on pod, as kubectl
// port-forward does (WebSocket first, SPDY when the API server is older),
// without listening on a local port.
func (a agents) portForward(ctx context.Context, pod corev1.Pod, port int) (io.ReadWriteCloser, error) {
	if a.rest == nil {
		return nil, fmt.Errorf("no API server configuration to port-forward with")
	}
	dialer, err := podforward.Dialer(a.kube, a.rest, pod)
	if err != nil {
		return nil, err
	}
	type dialed struct {
		conn httpstream.Connection
		err  error
	}
	done := make(chan dialed, 1)
	go func() {
		c, proto, err := dialer.Dial(portforward.PortForwardProtocolV1Name)
		if err == nil && proto != portforward.PortForwardProtocolV1Name {
			c.Close()
			err = fmt.Errorf("the API server speaks %q, not %q", proto, portforward.PortForwardProtocolV1Name)
		}
		done <- dialed{c, err}
	}()
	var d dialed
	select {
	case d = <-done:
	case <-ctx.Done():
		go func() {
			if d := <-done; d.conn != nil {
				d.conn.Close()
			}
		}()
		return nil, ctx.Err()
	}
	if d.err != nil {
		return nil, fmt.Errorf("pods/portforward (needs RBAC create on pods/portforward in namespace %s): %w", pod.Namespace, d.err)
	}
	headers := http.Header{}
	headers.Set(corev1.StreamType, corev1.StreamTypeError)
	headers.Set(corev1.PortHeader, strconv.Itoa(port))
	headers.Set(corev1.PortForwardRequestIDHeader, "0")
	errStream, err := d.conn.CreateStream(headers)
	if err != nil {
		d.conn.Close()
		return nil, fmt.Errorf("port-forward to port %d: error stream: %w", port, err)
	}
	errStream.Close() // nothing to send on it
	remote := make(chan error, 1)
	go func() {
		msg, err := io.ReadAll(errStream)
		switch {
		case err != nil:
			remote <- fmt.Errorf("port-forward to port %d: reading the error stream: %w", port, err)
		case len(msg) > 0:
			remote <- fmt.Errorf("port-forward to port %d: %s", port, strings.TrimSpace(string(msg)))
		}
		close(remote)
	}()
	headers.Set(corev1.StreamType, corev1.StreamTypeData)
	data, err := d.conn.CreateStream(headers)
	if err != nil {
		d.conn.Close()
		return nil, fmt.Errorf("port-forward to port %d: data stream: %w", port, err)
	}
	return &forwarded{Stream: data, conn: d.conn, remote: remote}, nil
}

// forwarded is the data stream of one port-forward connection.
type forwarded struct {
	httpstream.Stream
	conn   httpstream.Connection
	remote <-chan error
}

func (f *forwarded) Close() error {
	_ = f.Stream.Reset()
	return f.conn.Close()
}

// remoteError is the kubelet's error for this stream, if it sends one within wait.
func (f *forwarded) remoteError(wait time.Duration) error {
	select {
	case err := <-f.remote:
		return err
	case <-time.After(wait):
		return nil
	}
}
