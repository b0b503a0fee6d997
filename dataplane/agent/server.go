package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/flatnet/flatnet/dataplane/endpointapi"
)

// SocketHandler is what the agent serves on its unix socket: the endpoint
// API plus the plugin's timing reports.
func (a *Agent) SocketHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/", a.metrics.observeAdds(endpointapi.NewHTTPHandler(a.endpoints)))
	mux.HandleFunc("POST "+endpointapi.ObservationPath, a.metrics.observationHandler)
	return mux
}

// serveSocket listens on the endpoint socket; the returned func stops it.
func (a *Agent) serveSocket(errc chan<- error) (func(), error) {
	l, err := endpointapi.ListenUnix(a.cfg.Socket)
	if err != nil {
		return nil, err
	}
	return serve(l, a.SocketHandler(), "endpoint socket "+a.cfg.Socket, errc), nil
}

// HTTPHandler serves /healthz (the agent runs), /readyz (the node's block
// is owned and the plugin installed) and /metrics: what the kubelet and
// Prometheus read, and nothing a pod of another namespace must not see.
func (a *Agent) HTTPHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !a.ready.Load() {
			http.Error(w, "not ready: node block not claimed or CNI plugin not installed yet", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.Handle("GET /metrics", a.metrics.Handler())
	return mux
}

// serveHTTP serves HTTPHandler on cfg.HTTPAddr (nothing when empty).
func (a *Agent) serveHTTP(errc chan<- error) (func(), error) {
	if a.cfg.HTTPAddr == "" {
		return func() {}, nil
	}
	l, err := net.Listen("tcp", a.cfg.HTTPAddr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s for health and metrics: %w", a.cfg.HTTPAddr, err)
	}
	return serve(l, a.HTTPHandler(), "health/metrics "+a.cfg.HTTPAddr, errc), nil
}

// serveAPI serves cfg.API on cfg.APIAddr (nothing when either is unset).
func (a *Agent) serveAPI(errc chan<- error) (func(), error) {
	if a.cfg.API == nil || a.cfg.APIAddr == "" {
		return func() {}, nil
	}
	l, err := net.Listen("tcp", a.cfg.APIAddr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s for the flows and explain API: %w", a.cfg.APIAddr, err)
	}
	return serve(l, a.cfg.API, "API "+a.cfg.APIAddr, errc), nil
}

// checkLoopback refuses an API address that is not a loopback IP: on any
// other the host-network agent would hand every namespace's flows to the
// node's pods.
func checkLoopback(addr string) error {
	if addr == "" {
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("--api-addr %q: want host:port, e.g. 127.0.0.1:9970: %w", addr, err)
	}
	if ip, err := netip.ParseAddr(host); err != nil || !ip.IsLoopback() {
		return fmt.Errorf("--api-addr %q: must be a loopback IP such as 127.0.0.1:9970 (flatnetctl comes through pods/portforward); any other address serves every namespace's flows to the node's pods", addr)
	}
	return nil
}

func serve(l net.Listener, h http.Handler, what string, errc chan<- error) func() {
	// No WriteTimeout: follow streams last; the API sets per-write deadlines.
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			select {
			case errc <- fmt.Errorf("serve %s: %w", what, err):
			default:
			}
		}
	}()
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}
}
