package agnhost

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"

	clientexec "k8s.io/client-go/util/exec"

	"github.com/flatnet/flatnet/probes/podexec"
)

// Result is one `agnhost connect` run in a pod, judged.
type Result struct {
	Cmdline   string
	Answer    Answer
	Reachable bool
	// Word is the failure's first word (TIMEOUT, REFUSED, ...), empty on success.
	Word string
}

func (r Result) String() string {
	if r.Reachable {
		return r.Cmdline + ": connected (no output)"
	}
	return fmt.Sprintf("%s: %s (exit %d)", r.Cmdline, strings.TrimSpace(r.Answer.Stderr+r.Answer.Stdout), r.Answer.ExitCode)
}

// Connect runs the seed article's command line, `./agnhost connect
// <addr>:<port> --timeout=<timeout> --protocol=tcp`, in pod's bash through
// the executor and judges the answer by agnhost's contract. The error is for
// an exec that could not run or an answer that is no agnhost verdict.
func Connect(ctx context.Context, ex podexec.Executor, pod podexec.Pod, addr string, port int32, timeout string) (Result, error) {
	r := Result{Cmdline: fmt.Sprintf("./agnhost connect %s:%d --timeout=%s --protocol=tcp", addr, port, timeout)}
	var stdout, stderr bytes.Buffer
	err := ex.Exec(ctx, pod, []string{"bash", "-c", r.Cmdline}, nil, &stdout, &stderr)
	r.Answer = Answer{Stdout: stdout.String(), Stderr: stderr.String()}
	var exit clientexec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit):
		r.Answer.ExitCode = exit.ExitStatus()
	default:
		return r, fmt.Errorf("exec %q in %s: %w", r.Cmdline, pod, err)
	}
	if r.Reachable, r.Word, err = Judge(r.Answer); err != nil {
		return r, fmt.Errorf("%s in %s: %w", r.Cmdline, pod, err)
	}
	return r, nil
}
