// Package podexec runs `probe batch` inside pods through the API server's exec
// subresource (never through the pod network that policies act on), and turns the
// answers into honest per-target verdicts: an ambiguous result (timeout, other,
// dns) is retried, and attempts that disagree are reported as flaky, never as the
// more convenient of the two.
package podexec

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"

	"github.com/flatnet/flatnet/probes/batch"
)

// Pod names the container that runs the probe.
type Pod struct {
	Namespace, Name string
	// Container may be empty when the pod has one container.
	Container string
}

func (p Pod) String() string {
	s := p.Namespace + "/" + p.Name
	if p.Container != "" {
		s += "[" + p.Container + "]"
	}
	return s
}

func (p Pod) validate() error {
	switch {
	case p.Namespace == "":
		return fmt.Errorf("pod %q: Namespace is empty: set the pod's namespace", p.Name)
	case p.Name == "":
		return fmt.Errorf("pod in namespace %q: Name is empty: set the pod's name", p.Namespace)
	}
	return nil
}

// Executor runs cmd in pod's container, feeding stdin and collecting the output.
// A non-zero exit is an error.
type Executor interface {
	Exec(ctx context.Context, pod Pod, cmd []string, stdin io.Reader, stdout, stderr io.Writer) error
}

// DefaultCommand is `probe batch` in the flatnet/probe image.
var DefaultCommand = []string{"/probe", "batch"}

// Runner probes targets from pods.
type Runner struct {
	Exec Executor
	// Command is the batch command line in the pod (default DefaultCommand); the
	// options are appended as flags.
	Command []string
	// Options apply to every attempt; zero fields take batch.DefaultOptions'.
	Options batch.Options
	// Retries is how many more attempts an ambiguous target gets. Zero keeps
	// every first answer.
	Retries int
	// Sessions, when set, carries every batch over one long-lived exec per pod
	// (`probe batch --session`) instead of an exec per batch. The caller closes it.
	Sessions *Sessions
}

// Cell is the verdict on one target from one pod.
type Cell struct {
	Target batch.Target
	// Verdict is the attempts' common verdict, or batch.Flaky if they differ.
	Verdict batch.Verdict
	// Attempts are every result, in order; the first is from the first exec.
	Attempts []batch.Result
}

// Ambiguous reports whether v may be a transient failure worth another attempt.
// A connection or a refusal is a fact about the path; a timeout, a DNS failure or
// another network error may be a lost packet.
func Ambiguous(v batch.Verdict) bool {
	return v == batch.Timeout || v == batch.Other || v == batch.DNS
}

// Combine folds the attempts at one target into one verdict: their common
// verdict when they agree, batch.Flaky when they do not.
func Combine(attempts []batch.Result) batch.Verdict {
	if len(attempts) == 0 {
		return batch.Unknown
	}
	v := attempts[0].Verdict
	for _, a := range attempts[1:] {
		if a.Verdict != v {
			return batch.Flaky
		}
	}
	return v
}

// Probe probes every target from pod: one exec for all of them, then one exec per
// retry round for the targets still ambiguous. Bad input is refused before any
// exec, naming the field.
func (r *Runner) Probe(ctx context.Context, pod Pod, targets []batch.Target) ([]Cell, error) {
	if r.Exec == nil {
		return nil, errors.New("podexec.Runner: Exec is nil: use NewExecutor(config, clientset)")
	}
	if err := pod.validate(); err != nil {
		return nil, err
	}
	if r.Retries < 0 {
		return nil, fmt.Errorf("podexec.Runner: Retries=%d: must be 0 or more", r.Retries)
	}
	opts := r.options()
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("podexec.Runner.Options: %w", err)
	}
	for i, t := range targets {
		if err := batch.ValidateTarget(t); err != nil {
			return nil, fmt.Errorf("targets[%d] %q: %w", i, t.Target, err)
		}
	}
	cells := make([]Cell, len(targets))
	pending := make([]int, len(targets))
	for i, t := range targets {
		cells[i].Target = t
		pending[i] = i
	}
	for round := 0; round <= r.Retries && len(pending) > 0; round++ {
		subset := make([]batch.Target, len(pending))
		for j, i := range pending {
			subset[j] = targets[i]
		}
		results, err := r.run(ctx, pod, subset, opts)
		if err != nil {
			return nil, fmt.Errorf("probing %d targets from %s (attempt %d): %w", len(subset), pod, round+1, err)
		}
		var next []int
		for j, i := range pending {
			c := &cells[i]
			c.Attempts = append(c.Attempts, results[j])
			c.Verdict = Combine(c.Attempts)
			if c.Verdict != batch.Flaky && Ambiguous(c.Verdict) {
				next = append(next, i)
			}
		}
		pending = next
	}
	return cells, nil
}

// options fills the zero fields of r.Options with batch.DefaultOptions; negative
// values stay, and fail validation naming the flag.
func (r *Runner) options() batch.Options {
	o, d := r.Options, batch.DefaultOptions()
	if o.Timeout == 0 {
		o.Timeout = d.Timeout
	}
	if o.Parallel == 0 {
		o.Parallel = d.Parallel
	}
	if o.Protocol == "" {
		o.Protocol = d.Protocol
	}
	if o.UDPPayload == "" {
		o.UDPPayload = d.UDPPayload
	}
	if o.SCTPPayload == "" {
		o.SCTPPayload = d.SCTPPayload
	}
	return o
}

// run probes targets once from pod, over its session or with an exec, and checks
// the answer covers exactly the targets, in order.
func (r *Runner) run(ctx context.Context, pod Pod, targets []batch.Target, opts batch.Options) ([]batch.Result, error) {
	if r.Sessions != nil {
		results, err := r.Sessions.batch(ctx, r.Exec, r.command(), pod, targets, opts)
		if !errors.Is(err, errUnsupported) {
			if err != nil {
				return nil, err
			}
			return results, checkResults(results, targets, "session "+strings.Join(r.command(), " ")+" --session", "")
		}
	}
	return r.exec(ctx, pod, targets, opts)
}

// exec makes one exec of the batch command for targets.
func (r *Runner) exec(ctx context.Context, pod Pod, targets []batch.Target, opts batch.Options) ([]batch.Result, error) {
	var stdin, stdout, stderr bytes.Buffer
	if err := batch.EncodeTargets(&stdin, targets); err != nil {
		return nil, err
	}
	cmd := append(append([]string{}, r.command()...),
		"--timeout="+opts.Timeout.String(),
		"--parallel="+strconv.Itoa(opts.Parallel),
		"--protocol="+string(opts.Protocol),
		"--udp-data="+opts.UDPPayload,
		"--sctp-data="+opts.SCTPPayload,
	)
	err := r.Exec.Exec(ctx, pod, cmd, &stdin, &stdout, &stderr)
	if err != nil {
		return nil, fmt.Errorf("exec %q: %w%s", strings.Join(cmd, " "), err, quoteStderr(&stderr))
	}
	results, err := batch.DecodeResults(&stdout)
	if err != nil {
		return nil, fmt.Errorf("reading the output of %q: %w%s", strings.Join(cmd, " "), err, quoteStderr(&stderr))
	}
	return results, checkResults(results, targets, strings.Join(cmd, " "), quoteStderr(&stderr))
}

// checkResults checks an answer covers exactly the targets, in order.
func checkResults(results []batch.Result, targets []batch.Target, what, stderr string) error {
	if len(results) != len(targets) {
		return fmt.Errorf("%q answered %d results for %d targets%s", what, len(results), len(targets), stderr)
	}
	for i, res := range results {
		if res.Target != targets[i].Target {
			return fmt.Errorf("result %d is for %q, want %q: the probe broke the input-order contract", i, res.Target, targets[i].Target)
		}
	}
	return nil
}

func (r *Runner) command() []string {
	if len(r.Command) == 0 {
		return DefaultCommand
	}
	return r.Command
}

func quoteStderr(b *bytes.Buffer) string {
	s := strings.TrimSpace(b.String())
	if s == "" {
		return ""
	}
	return " (stderr: " + s + ")"
}

// Matrix probes the same targets from every pod, one exec per pod (plus retry
// rounds), with at most parallel pods at a time (all when parallel <= 0). The
// answer has one row per pod, in the order of pods.
func (r *Runner) Matrix(ctx context.Context, pods []Pod, targets []batch.Target, parallel int) ([][]Cell, error) {
	if parallel <= 0 || parallel > len(pods) {
		parallel = len(pods)
	}
	rows := make([][]Cell, len(pods))
	errs := make([]error, len(pods))
	sem := make(chan struct{}, max(parallel, 1))
	var wg sync.WaitGroup
	for i, p := range pods {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			rows[i], errs[i] = r.Probe(ctx, p, targets)
		}()
	}
	wg.Wait()
	return rows, errors.Join(errs...)
}
