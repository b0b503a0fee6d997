package kindcluster

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	kindlog "sigs.k8s.io/kind/pkg/log"
)

// Progress prints what the lifecycle does the way scripts/lib.sh does (step, info,
// warn, and a failure with its hints), each line stamped with the time since the
// run started, so the Go and shell parts of `make cluster` read as one.
type Progress struct {
	mu    sync.Mutex
	w     io.Writer
	start time.Time
	now   func() time.Time
}

// NewProgress prints to w, stamping lines with the time elapsed since start.
func NewProgress(w io.Writer, start time.Time) *Progress {
	return &Progress{w: w, start: start, now: time.Now}
}

func (p *Progress) stamp() string {
	s := int(p.now().Sub(p.start).Seconds())
	return fmt.Sprintf("%02d:%02d", s/60, s%60)
}

func (p *Progress) print(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, format, args...)
}

// Step announces a phase, in bold.
func (p *Progress) Step(format string, args ...any) {
	p.print("\033[1m[%s] ==> %s\033[0m\n", p.stamp(), fmt.Sprintf(format, args...))
}

// Info reports progress within a phase.
func (p *Progress) Info(format string, args ...any) {
	p.print("[%s]     %s\n", p.stamp(), fmt.Sprintf(format, args...))
}

// Warn reports something wrong that the run works around.
func (p *Progress) Warn(format string, args ...any) {
	p.print("[%s] WARN %s\n", p.stamp(), fmt.Sprintf(format, args...))
}

// Fail reports err in red, with a Problem's hints on the lines below.
func (p *Progress) Fail(err error) {
	var hints []string
	if pr := (*Problem)(nil); errors.As(err, &pr) {
		hints = pr.Hints
	}
	p.print("\033[31m[%s] ERROR %s\033[0m\n", p.stamp(), err)
	for _, h := range hints {
		p.print("        %s\n", h)
	}
}

// Problem is a failure the user can act on: what went wrong, and what to do.
type Problem struct {
	What  string
	Hints []string
	Err   error
}

func (p *Problem) Error() string {
	if p.Err != nil {
		return p.What + ": " + p.Err.Error()
	}
	return p.What
}

func (p *Problem) Unwrap() error { return p.Err }

// kindLogger shows kind's progress through a Progress: the phase kind starts
// ("kind: Starting control-plane"), a phase that failed, warnings and other
// messages; kind's success ticks and its "Creating cluster" banner are left out
// (the next phase says as much), and so is its warning about the network. Everything kind says also goes to transcript
// when it is set (the create log).
type kindLogger struct {
	p          *Progress
	mu         sync.Mutex
	transcript io.Writer
}

var _ kindlog.Logger = (*kindLogger)(nil)

func (l *kindLogger) record(msg string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.transcript != nil {
		fmt.Fprintln(l.transcript, strings.TrimRight(msg, "\n"))
	}
}

func (l *kindLogger) setTranscript(w io.Writer) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.transcript = w
}

func (l *kindLogger) Warn(msg string) {
	l.record(msg)
	// kind warns that its network was chosen through KIND_EXPERIMENTAL_DOCKER_NETWORK
	// ("Here be dragons!"): Cluster chose it, on purpose; the transcript keeps it.
	if strings.Contains(msg, "KIND_EXPERIMENTAL_DOCKER_NETWORK") || strings.Contains(msg, "Here be dragons") {
		return
	}
	l.p.Warn("kind: %s", strings.TrimPrefix(strings.TrimSpace(msg), "WARNING: "))
}

func (l *kindLogger) Warnf(format string, args ...any) { l.Warn(fmt.Sprintf(format, args...)) }
func (l *kindLogger) Error(msg string)                 { l.Warn(msg) }
func (l *kindLogger) Errorf(format string, args ...any) {
	l.Warn(fmt.Sprintf(format, args...))
}

func (l *kindLogger) V(level kindlog.Level) kindlog.InfoLogger {
	return kindInfo{l: l, shown: level == 0}
}

func (l *kindLogger) info(msg string, shown bool) {
	l.record(msg)
	if !shown {
		return
	}
	msg = strings.TrimSpace(msg)
	switch {
	case msg == "", strings.HasPrefix(msg, "✓"), strings.HasPrefix(msg, "Creating cluster"):
	case strings.HasPrefix(msg, "•"):
		l.p.Info("kind: %s", strings.TrimSpace(strings.TrimSuffix(strings.TrimPrefix(msg, "•"), "...")))
	case strings.HasPrefix(msg, "✗"):
		l.p.Warn("kind: failed: %s", strings.TrimSpace(strings.TrimPrefix(msg, "✗")))
	default:
		l.p.Info("kind: %s", msg)
	}
}

type kindInfo struct {
	l     *kindLogger
	shown bool
}

func (i kindInfo) Info(msg string)                  { i.l.info(msg, i.shown) }
func (i kindInfo) Infof(format string, args ...any) { i.l.info(fmt.Sprintf(format, args...), i.shown) }

// Enabled is true at every level: kind's debug output belongs in the transcript.
func (i kindInfo) Enabled() bool { return true }
