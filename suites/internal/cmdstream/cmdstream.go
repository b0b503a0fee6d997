// Package cmdstream runs a command that keeps printing (a CLI's --follow) and
// hands over its standard output line by line as it comes, with the time each
// line came: the suites judge real CLIs (hubble, flatnetctl) while they stream.
package cmdstream

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os/exec"
	"sync"
	"time"
)

// maxLine is the longest line read (a flow with every label of both pods is a few
// KiB; a relay's response with node lists more).
const maxLine = 4 << 20

// Line is one line of standard output and when it was read.
type Line struct {
	At   time.Time
	Text string
}

// Stream is a running command.
type Stream struct {
	// Lines has each non-empty line of standard output; it is closed when the
	// command has ended.
	Lines  <-chan Line
	cmd    *exec.Cmd
	cancel context.CancelFunc
	done   chan struct{}
	mu     sync.Mutex
	stderr bytes.Buffer
}

// Start runs the command newCmd makes with the context it is given (cancelled by
// Stop) and reads its standard output until it ends. Lines not taken wait in a
// buffer of 1024, then hold the command back.
func Start(ctx context.Context, newCmd func(context.Context) *exec.Cmd) (*Stream, error) {
	ctx, cancel := context.WithCancel(ctx)
	cmd := newCmd(ctx)
	s := &Stream{cmd: cmd, cancel: cancel, done: make(chan struct{})}
	cmd.Stderr = stderrOf{s}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		cancel()
		return nil, fmt.Errorf("%s: %w", cmd, err)
	}
	if err := cmd.Start(); err != nil {
		cancel()
		return nil, fmt.Errorf("starting %s: %w", cmd, err)
	}
	lines := make(chan Line, 1024)
	s.Lines = lines
	go s.read(ctx, stdout, lines)
	return s, nil
}

func (s *Stream) read(ctx context.Context, stdout io.Reader, lines chan<- Line) {
	// done before Lines: a reader that sees Lines closed finds Ended set.
	defer close(lines)
	defer close(s.done)
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 64<<10), maxLine)
	for sc.Scan() {
		l := Line{At: time.Now(), Text: string(bytes.TrimSpace(sc.Bytes()))}
		if l.Text == "" {
			continue
		}
		select {
		case lines <- l:
		case <-ctx.Done():
		}
	}
	_ = s.cmd.Wait() // how it ended: Ended
}

// Stderr is what the command wrote to standard error so far.
func (s *Stream) Stderr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stderr.String()
}

// Ended says how the command ended ("" while it runs).
func (s *Stream) Ended() string {
	select {
	case <-s.done:
		return s.cmd.ProcessState.String()
	default:
		return ""
	}
}

// Stop ends the command and returns what it wrote to standard error.
func (s *Stream) Stop() string {
	s.cancel()
	<-s.done
	return s.Stderr()
}

type stderrOf struct{ s *Stream }

func (w stderrOf) Write(p []byte) (int, error) {
	w.s.mu.Lock()
	defer w.s.mu.Unlock()
	return w.s.stderr.Write(p)
}
