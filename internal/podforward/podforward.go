// Package podforward dials a pod's pods/portforward subresource through the
// API server the way kubectl does: WebSocket first, SPDY when the API server
// does not take it. flatnetctl (the agents' API) and the suites (the Hubble
// relay) both reach in-cluster servers so; one copy keeps their upgrade
// behaviour the same.
package podforward

import (
	"fmt"
	"net/http"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"
)

// Dialer is a dialer of pod's pods/portforward as cfg's user; its Dial opens
// the connection the port streams then ride on.
func Dialer(cs kubernetes.Interface, cfg *rest.Config, pod corev1.Pod) (httpstream.Dialer, error) {
	u := cs.CoreV1().RESTClient().Post().Namespace(pod.Namespace).Resource("pods").Name(pod.Name).SubResource("portforward").URL()
	transport, upgrader, err := spdy.RoundTripperFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("port-forward transport: %w", err)
	}
	var d httpstream.Dialer = spdy.NewDialer(upgrader, &http.Client{Transport: transport}, http.MethodPost, u)
	if ws, err := portforward.NewSPDYOverWebsocketDialer(u, cfg); err == nil {
		d = portforward.NewFallbackDialer(ws, d, func(err error) bool {
			return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
		})
	}
	return d, nil
}
