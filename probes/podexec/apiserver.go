package podexec

import (
	"context"
	"fmt"
	"io"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/remotecommand"
)

// APIServerExecutor runs commands through the pods/exec subresource: the API
// server hands the streams to the kubelet, which runs the command in the container
// through the container runtime. Nothing crosses the pod network.
type APIServerExecutor struct {
	config *rest.Config
	client kubernetes.Interface
}

// NewExecutor returns an Executor speaking to the API server of config.
func NewExecutor(config *rest.Config, client kubernetes.Interface) (*APIServerExecutor, error) {
	if config == nil || client == nil {
		return nil, fmt.Errorf("podexec.NewExecutor: config and client are both required")
	}
	return &APIServerExecutor{config: config, client: client}, nil
}

// Exec implements Executor, preferring the WebSocket protocol and falling back to
// SPDY for API servers that do not upgrade to it, as kubectl does.
func (e *APIServerExecutor) Exec(ctx context.Context, pod Pod, cmd []string, stdin io.Reader, stdout, stderr io.Writer) error {
	req := e.client.CoreV1().RESTClient().Post().
		Resource("pods").Namespace(pod.Namespace).Name(pod.Name).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{
			Container: pod.Container,
			Command:   cmd,
			Stdin:     stdin != nil,
			Stdout:    true,
			Stderr:    true,
		}, scheme.ParameterCodec)
	spdy, err := remotecommand.NewSPDYExecutor(e.config, "POST", req.URL())
	if err != nil {
		return fmt.Errorf("preparing SPDY exec into %s: %w", pod, err)
	}
	ws, err := remotecommand.NewWebSocketExecutor(e.config, "GET", req.URL().String())
	if err != nil {
		return fmt.Errorf("preparing WebSocket exec into %s: %w", pod, err)
	}
	ex, err := remotecommand.NewFallbackExecutor(ws, spdy, func(err error) bool {
		return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
	})
	if err != nil {
		return fmt.Errorf("preparing exec into %s: %w", pod, err)
	}
	if err := ex.StreamWithContext(ctx, remotecommand.StreamOptions{Stdin: stdin, Stdout: stdout, Stderr: stderr}); err != nil {
		return fmt.Errorf("exec into %s: %w", pod, err)
	}
	return nil
}
