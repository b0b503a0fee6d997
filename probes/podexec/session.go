package podexec

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/flatnet/flatnet/probes/batch"
)

// Sessions keeps one `probe batch --session` exec open per pod and sends every
// batch of a Runner over it. An exec is the costly part of a probe round: the API
// server, the kubelet and the container runtime spend ~90 ms of CPU on each here
// (a whole matrix poll makes one per source pod), the batch itself a few ms. The
// streams still go through the exec subresource, never the pod network.
//
// A session that breaks (its pod restarted, its node rebooted, the stream cut) is
// dropped and the batch is tried once more on a new one; a probe image without
// --session makes the Runner fall back to an exec per batch. Close ends them all.
type Sessions struct {
	ctx    context.Context // the sessions' execs live as long as this
	cancel context.CancelFunc

	mu          sync.Mutex
	open        map[Pod]*session
	unsupported bool // the image's probe has no --session: an exec per batch
	closed      bool
	nextID      uint64
	stats       SessionStats
}

// SessionStats count what the sessions did, for a suite's log.
type SessionStats struct {
	Execs   int // sessions opened (one exec each)
	Batches int // batches answered over them
	Broken  int // sessions that broke (a pod restarted, a stream cut) and were dropped
	// Unsupported: the probe refused --session; batches went one exec each.
	Unsupported bool
}

func (st SessionStats) String() string {
	s := fmt.Sprintf("%d batches over %d session exec(s), %d broken", st.Batches, st.Execs, st.Broken)
	if st.Unsupported {
		s += "; the probe has no --session: an exec per batch"
	}
	return s
}

// Stats returns the counts so far.
func (s *Sessions) Stats() SessionStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.Unsupported = s.unsupported
	return st
}

// NewSessions returns an empty set of sessions; Close it when the probing ends.
func NewSessions() *Sessions {
	ctx, cancel := context.WithCancel(context.Background())
	return &Sessions{ctx: ctx, cancel: cancel, open: map[Pod]*session{}}
}

// Close ends every session: their input closes and their streams are cut, so the
// probes exit.
func (s *Sessions) Close() {
	s.mu.Lock()
	open := s.open
	s.open, s.closed = map[Pod]*session{}, true
	s.mu.Unlock()
	for _, ss := range open {
		ss.stdin.Close()
	}
	s.cancel()
}

// errUnsupported: the probe in the pod does not know --session.
var errUnsupported = errors.New("the probe in the pod has no --session")

// batch sends one batch to pod's session, opening one if needed. A session opened
// earlier that fails is replaced and the batch sent once more: the failed attempt's
// probes are discarded, never reported.
func (s *Sessions) batch(ctx context.Context, ex Executor, command []string, pod Pod, targets []batch.Target, opts batch.Options) ([]batch.Result, error) {
	s.mu.Lock()
	s.nextID++
	id := s.nextID
	s.mu.Unlock()
	line, err := json.Marshal(batch.NewRequest(id, targets, opts))
	if err != nil {
		return nil, fmt.Errorf("encoding the request: %w", err)
	}
	// The batch's own bound (each target's timeout, in waves of Parallel) plus a
	// margin for a loaded node: a stream that stalls past it is cut.
	waves := (len(targets) + opts.Parallel - 1) / max(opts.Parallel, 1)
	bound := time.Duration(waves+1)*opts.Timeout + 20*time.Second
	for attempt := 0; ; attempt++ {
		ss, fresh, err := s.get(ex, command, pod)
		if err != nil {
			return nil, err
		}
		res, err := ss.do(ctx, id, append(line, '\n'), bound)
		var refused requestRefused
		if err == nil || errors.As(err, &refused) {
			if err == nil {
				s.mu.Lock()
				s.stats.Batches++
				s.mu.Unlock()
			}
			return res, err // the session is fine either way
		}
		// The exec has returned (do's failures wait for it): its stderr is whole.
		unsupported := strings.Contains(ss.stderr.String(), "unknown flag: --session")
		s.mu.Lock()
		if s.open[pod] == ss {
			delete(s.open, pod)
		}
		if unsupported {
			s.unsupported = true
		} else {
			s.stats.Broken++
		}
		s.mu.Unlock()
		if unsupported {
			return nil, errUnsupported
		}
		if fresh || attempt > 0 || ctx.Err() != nil {
			return nil, err
		}
	}
}

// get returns pod's open session, or a new one (fresh).
func (s *Sessions) get(ex Executor, command []string, pod Pod) (*session, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.unsupported {
		return nil, false, errUnsupported
	}
	if s.closed {
		return nil, false, errors.New("podexec.Sessions: used after Close")
	}
	if ss, ok := s.open[pod]; ok && !ss.dead() {
		return ss, false, nil
	}
	ss := startSession(s.ctx, ex, command, pod)
	s.open[pod] = ss
	s.stats.Execs++
	return ss, true, nil
}

// session is one exec of `probe batch --session` and its streams.
type session struct {
	pod    Pod
	cmd    string
	stdin  *io.PipeWriter
	out    *bufio.Scanner
	cancel context.CancelFunc
	exited chan struct{} // closed when the exec returned; err then holds its error
	err    error
	stderr limitedBuffer

	mu sync.Mutex // one request at a time
}

func startSession(parent context.Context, ex Executor, command []string, pod Pod) *session {
	ctx, cancel := context.WithCancel(parent)
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	cmd := append(append([]string{}, command...), "--session")
	ss := &session{pod: pod, cmd: strings.Join(cmd, " "), stdin: inW, cancel: cancel, exited: make(chan struct{})}
	ss.out = bufio.NewScanner(outR)
	ss.out.Buffer(nil, 64<<20)
	go func() {
		err := ex.Exec(ctx, pod, cmd, inR, outW, &ss.stderr)
		ss.err = err
		if err == nil {
			err = io.EOF
		}
		outW.CloseWithError(err)
		inR.CloseWithError(err)
		close(ss.exited)
	}()
	return ss
}

func (ss *session) dead() bool {
	select {
	case <-ss.exited:
		return true
	default:
		return false
	}
}

// do sends request id (line, newline-terminated) and reads its answer, cutting
// the stream if none comes within bound or ctx ends. Every error but a refused
// request ends the session and returns once its exec has.
func (ss *session) do(ctx context.Context, id uint64, line []byte, bound time.Duration) ([]batch.Result, error) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	timer := time.AfterFunc(bound, ss.cancel)
	defer timer.Stop()
	stop := context.AfterFunc(ctx, ss.cancel)
	defer stop()
	if _, err := ss.stdin.Write(line); err != nil {
		return nil, ss.failed("writing a request", err)
	}
	if !ss.out.Scan() {
		err := ss.out.Err()
		if err == nil {
			err = io.EOF
		}
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return nil, ss.failed(fmt.Sprintf("reading the answer (within %s)", bound.Round(time.Second)), err)
	}
	var resp batch.Response
	if err := json.Unmarshal(ss.out.Bytes(), &resp); err != nil {
		return nil, ss.failed("reading the answer", fmt.Errorf("%w: %.200q", err, ss.out.Text()))
	}
	switch {
	case resp.ID != id:
		return nil, ss.failed("reading the answer", fmt.Errorf("answer to request %d, want %d: the session is out of step", resp.ID, id))
	case resp.Error != "":
		return nil, requestRefused{fmt.Errorf("session %q in %s refused the request: %s", ss.cmd, ss.pod, resp.Error)}
	}
	return resp.Results, nil
}

// failed wraps err with what was being done, the exec's own error and its stderr
// (once it has ended).
func (ss *session) failed(doing string, err error) error {
	ss.cancel()
	<-ss.exited
	msg := fmt.Sprintf("session %q in %s: %s: %v", ss.cmd, ss.pod, doing, err)
	if ss.err != nil && !strings.Contains(msg, ss.err.Error()) {
		msg += "; exec: " + ss.err.Error()
	}
	if s := strings.TrimSpace(ss.stderr.String()); s != "" {
		msg += " (stderr: " + s + ")"
	}
	return errors.New(msg)
}

// requestRefused is a request the session answered with an error: the session
// itself goes on.
type requestRefused struct{ error }

func (r requestRefused) Unwrap() error { return r.error }

// limitedBuffer keeps the first 4 KiB written to it (a session's stderr), safe
// for the exec's goroutine to write while another reads.
type limitedBuffer struct {
	mu  sync.Mutex
	buf []byte
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if room := 4096 - len(b.buf); room > 0 {
		b.buf = append(b.buf, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func (b *limitedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}
