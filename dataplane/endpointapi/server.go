package endpointapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
)

// maxBody bounds a request body; an Endpoint is a few hundred bytes.
const maxBody = 64 << 10

// NewHTTPHandler serves the endpoint API on top of h.
func NewHTTPHandler(h Handler) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("PUT /v1/endpoints/{containerID}", func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("containerID")
		var ep Endpoint
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&ep); err != nil {
			writeError(w, http.StatusBadRequest, fmt.Errorf("decode endpoint %s: %w", id, err))
			return
		}
		if ep.ContainerID != id {
			writeError(w, http.StatusBadRequest, fmt.Errorf("containerID %q in the body differs from %q in the path", ep.ContainerID, id))
			return
		}
		if err := ep.Validate(); err != nil {
			writeError(w, http.StatusBadRequest, fmt.Errorf("endpoint %s: %w", id, err))
			return
		}
		if err := h.PutEndpoint(r.Context(), ep); err != nil {
			writeError(w, statusOf(err), fmt.Errorf("register endpoint %s: %w", id, err))
			return
		}
		writeJSON(w, http.StatusOK, Response{ContainerID: id})
	})
	mux.HandleFunc("DELETE /v1/endpoints/{containerID}", func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("containerID")
		if err := h.DeleteEndpoint(r.Context(), id); err != nil {
			writeError(w, statusOf(err), fmt.Errorf("delete endpoint %s: %w", id, err))
			return
		}
		writeJSON(w, http.StatusOK, Response{ContainerID: id})
	})
	mux.HandleFunc("GET /v1/healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, struct{}{})
	})
	return mux
}

// ListenUnix listens on a unix socket at path, creating its directory and
// replacing a socket left by a previous agent (a plain file there is an error).
// The socket is 0600: only root on the node, i.e. the plugin, may call it.
func ListenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("create directory of agent socket %s: %w", path, err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&fs.ModeSocket == 0 {
			return nil, fmt.Errorf("agent socket %s: exists and is not a socket; remove it", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale agent socket %s: %w", path, err)
		}
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on agent socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("restrict agent socket %s: %w", path, err)
	}
	return l, nil
}

func statusOf(err error) int {
	if errors.Is(err, ErrInvalidEndpoint) {
		return http.StatusBadRequest
	}
	return http.StatusInternalServerError
}

func writeError(w http.ResponseWriter, status int, err error) {
	writeJSON(w, status, ErrorResponse{Error: err.Error()})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
