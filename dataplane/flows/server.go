package flows

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// FlowsPath is served by Handler (under the agent's API server).
const FlowsPath = "/v1/flows"

// Limits bound what the API's clients can cost an agent. Zero fields take the
// defaults below.
type Limits struct {
	// MaxFollowers is how many follow streams may be open at once; beyond it a
	// client gets 429. Each holds a subscription and a goroutine.
	MaxFollowers int
	// WriteTimeout drops a client that takes no data for this long, so a
	// stalled reader neither holds a follower slot nor a goroutine forever. What
	// it does not read meanwhile is lost from its bounded buffer, never queued.
	WriteTimeout time.Duration
}

// Default limits.
const (
	DefaultMaxFollowers = 16
	DefaultWriteTimeout = 10 * time.Second
	// followBuffer is how many live flows wait for a slow follower before it loses some.
	followBuffer = 1024
)

func (l Limits) withDefaults() Limits {
	if l.MaxFollowers <= 0 {
		l.MaxFollowers = DefaultMaxFollowers
	}
	if l.WriteTimeout <= 0 {
		l.WriteTimeout = DefaultWriteTimeout
	}
	return l
}

// Handler serves GET /v1/flows (JSON lines, one Response each) with the default
// Limits.
func Handler(store *Store) http.Handler {
	return NewHandler(store, Limits{})
}

// NewHandler is Handler with lim.
func NewHandler(store *Store, lim Limits) http.Handler {
	lim = lim.withDefaults()
	s := &server{store: store, lim: lim, followers: make(chan struct{}, lim.MaxFollowers)}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+FlowsPath, s.serveFlows)
	return mux
}

type server struct {
	store *Store
	lim   Limits
	// followers is a semaphore: a slot is taken without waiting or refused.
	followers chan struct{}
}

func tryAcquire(sem chan struct{}) bool {
	select {
	case sem <- struct{}{}:
		return true
	default:
		return false
	}
}

// tooMany answers 429 saying which limit was hit and what to do.
func tooMany(w http.ResponseWriter, what string, limit int) {
	w.Header().Set("Retry-After", "1")
	http.Error(w, fmt.Sprintf("too many %s on this agent (limit %d): try again shortly", what, limit), http.StatusTooManyRequests)
}

func (s *server) serveFlows(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f, err := FilterFromQuery(q, time.Now())
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	last := 0
	if v := q.Get(ParamLast); v != "" {
		if last, err = strconv.Atoi(v); err != nil || last < 0 {
			http.Error(w, fmt.Sprintf("last %q: want a number of flows >= 0", v), http.StatusBadRequest)
			return
		}
	}
	follow := false
	if v := q.Get(ParamFollow); v != "" {
		if follow, err = strconv.ParseBool(v); err != nil {
			http.Error(w, fmt.Sprintf("follow %q: want true or false", v), http.StatusBadRequest)
			return
		}
	}
	if follow {
		if !tryAcquire(s.followers) {
			tooMany(w, "followers (flows --follow)", s.lim.MaxFollowers)
			return
		}
		defer func() { <-s.followers }()
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	out := newStreamWriter(w, s.lim.WriteTimeout)
	if !follow {
		for _, fl := range s.store.Recent(f, last) {
			if out.write(fl) != nil {
				return
			}
		}
		return
	}
	hist, live, stop := s.store.Follow(f, last, followBuffer)
	defer stop()
	for _, fl := range hist {
		if out.write(fl) != nil {
			return
		}
	}
	if out.flush() != nil {
		return
	}
	for {
		select {
		case <-r.Context().Done():
			return
		case fl := <-live:
			if !f.Match(fl) {
				continue
			}
			if out.write(fl) != nil || out.flush() != nil {
				return
			}
		}
	}
}

// streamWriter encodes flows with a deadline on every write: a client that
// stops reading fails the write instead of blocking the handler.
type streamWriter struct {
	enc     *json.Encoder
	rc      *http.ResponseController
	timeout time.Duration
}

func newStreamWriter(w http.ResponseWriter, timeout time.Duration) *streamWriter {
	return &streamWriter{enc: json.NewEncoder(w), rc: http.NewResponseController(w), timeout: timeout}
}

func (sw *streamWriter) deadline() {
	// Not every ResponseWriter supports deadlines (httptest.ResponseRecorder); then
	// the server's own timeouts are all there is.
	_ = sw.rc.SetWriteDeadline(time.Now().Add(sw.timeout))
}

func (sw *streamWriter) write(r *Response) error {
	sw.deadline()
	return sw.enc.Encode(r)
}

func (sw *streamWriter) flush() error {
	sw.deadline()
	if err := sw.rc.Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return err
	}
	return nil
}
