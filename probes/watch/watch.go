// Package watch times a change of reachability from inside a pod: it opens a new
// connection to one target every interval and reports the moment the verdict flips
// (open -> blocked, or blocked -> open) for good. The suites use it to measure how
// long a policy takes from `kubectl apply` to enforcement: the pod and the test share
// the kernel's clock, so the reported instant compares with the test's own.
package watch

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/flatnet/flatnet/probes/connect"
)

// State is what a path looks like to a new connection.
type State string

const (
	Open    State = "open"    // a new connection gets through
	Blocked State = "blocked" // its first packet is dropped (TIMEOUT)
)

// ParseState reads --until.
func ParseState(s string) (State, error) {
	switch State(s) {
	case Open, Blocked:
		return State(s), nil
	}
	return "", fmt.Errorf("--until=%q: must be open or blocked", s)
}

func (s State) other() State {
	if s == Open {
		return Blocked
	}
	return Open
}

// Options of one watch.
type Options struct {
	Dest     string // host:port
	Protocol connect.Protocol
	Until    State
	// Interval between the starts of two attempts; attempts overlap when Timeout
	// is longer.
	Interval time.Duration
	// Timeout of one attempt: keep it below the TCP SYN retransmission time (1s) so
	// that an attempt started before a change cannot succeed after it.
	Timeout time.Duration
	// Confirm is how many attempts after the first one in the new state must agree
	// before the change counts (a lone lost packet is not a policy).
	Confirm int
	// Deadline bounds the whole watch.
	Deadline time.Duration
}

// DefaultOptions are what `probe watch` uses.
func DefaultOptions() Options {
	return Options{Protocol: connect.TCP, Until: Blocked, Interval: 10 * time.Millisecond,
		Timeout: 300 * time.Millisecond, Confirm: 3, Deadline: 60 * time.Second}
}

// Validate names the first bad option and its fix.
func (o Options) Validate() error {
	switch {
	case o.Dest == "":
		return errors.New("a target host:port is required")
	case o.Interval <= 0:
		return fmt.Errorf("--interval=%s: must be positive", o.Interval)
	case o.Timeout <= 0 || o.Timeout >= time.Second:
		return fmt.Errorf("--timeout=%s: must be positive and under 1s (a TCP SYN retransmission would blur the instant)", o.Timeout)
	case o.Confirm < 0:
		return fmt.Errorf("--confirm=%d: must be 0 or more", o.Confirm)
	case o.Deadline <= 0:
		return fmt.Errorf("--deadline=%s: must be positive", o.Deadline)
	}
	_, err := ParseState(string(o.Until))
	return err
}

// Change is the result of a watch: Start of the first attempt in the new state
// (the first new connection judged by it), and how many attempts were made.
type Change struct {
	At       time.Time
	Attempts int
}

// ErrUnchanged is returned when the deadline passes with no confirmed change.
var ErrUnchanged = errors.New("no change before the deadline")

// NotInitialError says the path was not in the state the watch starts from.
type NotInitialError struct {
	Want State
	Got  connect.Outcome
}

func (e *NotInitialError) Error() string {
	return fmt.Sprintf("the path is not %s to begin with: %s", e.Want, e.Got.Line())
}

type attempt struct {
	i     int
	start time.Time
	state State
	other bool // neither open nor blocked (refused, ...): the path is not under watch
	// inconclusive: the attempt ended before a packet could tell (name resolution
	// still running at its deadline, as on a starved machine); it is not counted.
	inconclusive bool
	out          connect.Outcome
}

// maxInconclusive consecutive inconclusive attempts end the watch: the target's
// name does not resolve.
const maxInconclusive = 20

// Run checks that the path is in the state opposite to o.Until, calls ready, then
// probes until the change is confirmed, the deadline passes or ctx ends.
func Run(ctx context.Context, o Options, ready func()) (Change, error) {
	if err := o.Validate(); err != nil {
		return Change{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, o.Deadline)
	defer cancel()
	first := probe(ctx, o, 0)
	for n := 1; first.inconclusive && n < maxInconclusive && ctx.Err() == nil; n++ {
		first = probe(ctx, o, 0)
	}
	if first.other || first.inconclusive || first.state != o.Until.other() {
		return Change{}, &NotInitialError{Want: o.Until.other(), Got: first.out}
	}
	ready()

	results := make(chan attempt, 64)
	tick := time.NewTicker(o.Interval)
	defer tick.Stop()
	pending := map[int]attempt{}
	next, started := 1, 1 // next: the attempt to judge in order
	candidate, inconclusive, confirmed := -1, 0, 0
	var at time.Time
	launch := func() {
		i := started
		started++
		go func() { results <- probe(ctx, o, i) }()
	}
	launch()
	for {
		select {
		case <-ctx.Done():
			if ctx.Err() == context.DeadlineExceeded {
				return Change{Attempts: started - 1}, ErrUnchanged
			}
			return Change{Attempts: started - 1}, ctx.Err()
		case <-tick.C:
			launch()
		case a := <-results:
			pending[a.i] = a
			// Judge in start order, so "first in the new state" means first started.
			for {
				a, ok := pending[next]
				if !ok {
					break
				}
				delete(pending, next)
				next++
				switch {
				case a.inconclusive:
					if inconclusive++; inconclusive >= maxInconclusive {
						return Change{Attempts: started - 1}, fmt.Errorf("%d attempts in a row inconclusive, the last: %s", inconclusive, a.out.Line())
					}
					continue
				case a.other:
					return Change{Attempts: started - 1}, fmt.Errorf("attempt %d: %s", a.i, a.out.Line())
				case a.state != o.Until:
					candidate = -1
				case candidate < 0:
					candidate, at, confirmed = a.i, a.start, 0
				default:
					confirmed++
				}
				inconclusive = 0
				if candidate >= 0 && confirmed >= o.Confirm {
					return Change{At: at, Attempts: started - 1}, nil
				}
			}
		}
	}
}

func probe(ctx context.Context, o Options, i int) attempt {
	a := attempt{i: i, start: time.Now()}
	a.out = connect.Probe(ctx, connect.Request{Dest: o.Dest, Protocol: o.Protocol, Timeout: o.Timeout})
	switch a.out.Verdict {
	case connect.Connected:
		a.state = Open
	case connect.Timeout:
		a.state = Blocked
	case connect.DNS:
		a.inconclusive = true
	default:
		a.other = true
	}
	return a
}
