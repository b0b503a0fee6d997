package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/flatnet/flatnet/dataplane/cni"
	"github.com/flatnet/flatnet/dataplane/endpointapi"
)

// SocketHandler is what the agent serves on its unix socket: the endpoint
// API plus the plugin's timing reports.
func (a *Agent) SocketHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/", endpointapi.NewHTTPHandler(a.endpoints))
	mux.HandleFunc("POST "+cni.ObservationPath, a.metrics.observationHandler)
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
// is owned and the plugin installed), /metrics, and cfg.API under /v1/.
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
	if a.cfg.API != nil {
		mux.Handle("/v1/", a.cfg.API)
	}
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

func serve(l net.Listener, h http.Handler, what string, errc chan<- error) func() {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
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
