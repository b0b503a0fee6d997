// Package flatnetctl builds the real flatnetctl command and runs it against
// the cluster under test, as a user would: suites judge what it prints, not
// the packages behind it.
package flatnetctl

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/flatnet/flatnet/suites/internal/cmdstream"
)

// CLI is a built flatnetctl and the kubeconfig it is run with.
type CLI struct {
	Path       string
	Kubeconfig string
}

// PrebuiltEnv names a flatnetctl already built from this tree (make e2e builds
// one beside the suites' binaries, keyed by the tree's hash): Build uses it
// instead of compiling again.
const PrebuiltEnv = "FLATNET_FLATNETCTL"

// Build compiles dataplane/cmd/flatnetctl of the repository at root into
// dir: the binary under test is always this tree's, never a stale bin/ copy.
// When $FLATNET_FLATNETCTL names one built from this tree, that one is used.
func Build(ctx context.Context, root, dir, kubeconfig string) (CLI, error) {
	if p := os.Getenv(PrebuiltEnv); p != "" {
		st, err := os.Stat(p)
		if err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
			return CLI{}, fmt.Errorf("%s=%s: not an executable flatnetctl (%v); unset it to build one", PrebuiltEnv, p, err)
		}
		return CLI{Path: p, Kubeconfig: kubeconfig}, nil
	}
	bin := filepath.Join(dir, "flatnetctl")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./dataplane/cmd/flatnetctl")
	// The environment as it is: the build then shares the cache of the suite's own.
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return CLI{}, fmt.Errorf("building flatnetctl (go build ./dataplane/cmd/flatnetctl in %s): %w\n%s", root, err, out)
	}
	return CLI{Path: bin, Kubeconfig: kubeconfig}, nil
}

// Result is one run of the command.
type Result struct {
	Args           []string
	Stdout, Stderr string
	ExitCode       int
}

func (r Result) String() string {
	return fmt.Sprintf("flatnetctl %s: exit %d, stdout %q, stderr %q", strings.Join(r.Args, " "), r.ExitCode, r.Stdout, r.Stderr)
}

// Run runs flatnetctl args with --kubeconfig. A non-zero exit is part of
// the Result (bad input must fail, and how is what a suite checks); the error
// is for a command that could not run at all.
func (c CLI) Run(ctx context.Context, args ...string) (Result, error) {
	full := append([]string{"--kubeconfig", c.Kubeconfig}, args...)
	cmd := exec.CommandContext(ctx, c.Path, full...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := Result{Args: args, Stdout: stdout.String(), Stderr: stderr.String()}
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit):
		r.ExitCode = exit.ExitCode()
	default:
		return r, fmt.Errorf("running flatnetctl %s: %w", strings.Join(args, " "), err)
	}
	return r, nil
}

// Start runs flatnetctl args with --kubeconfig in the background (a command
// that keeps printing: flows --follow).
func (c CLI) Start(ctx context.Context, args ...string) (*cmdstream.Stream, error) {
	full := append([]string{"--kubeconfig", c.Kubeconfig}, args...)
	return cmdstream.Start(ctx, func(ctx context.Context) *exec.Cmd { return exec.CommandContext(ctx, c.Path, full...) })
}
