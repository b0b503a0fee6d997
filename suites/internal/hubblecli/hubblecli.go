// Package hubblecli runs the upstream hubble CLI (github.com/cilium/cilium/hubble,
// which `make tools` builds into bin/hubble from tools/hubble) against a Hubble
// server as a user would, and reads its `-o json` output with Hubble's own API
// types (protojson into observerpb): suites judge what the real tool shows.
// Refusal reads how a request that should fail was refused, whether through
// the CLI or a gRPC client, by the server itself or by agents behind
// hubble-relay.
package hubblecli

import (
	"bufio"
	"bytes"
	"context"
	"debug/buildinfo"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	observerpb "github.com/cilium/cilium/api/v1/observer"
	"golang.org/x/mod/modfile"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/flatnet/flatnet/suites/internal/cmdstream"
)

// EnvPath names the variable holding the CLI's path (scripts/e2e.sh sets it);
// DefaultPath, relative to the repository, is where `make tools` puts it.
const (
	EnvPath     = "FLATNET_HUBBLE_CLI"
	DefaultPath = "bin/hubble"
)

// The upstream CLI's main package and the module it is released in.
const (
	cliPackage    = "github.com/cilium/cilium/hubble"
	ciliumModule  = "github.com/cilium/cilium"
	outputLimit   = 4 << 10
	stdoutMaxLine = 4 << 20
)

// CLI is the hubble binary, the server it talks to and a home of its own.
type CLI struct {
	Path    string
	Server  string
	Version string // the Cilium release it was built from
	home    string
}

// Locate finds the CLI (EnvPath, else DefaultPath; relative to repoRoot) and checks,
// from its build information, that it is the upstream hubble built from the
// Cilium release flatnet's go.mod takes Hubble's API from: nothing home-made
// in its place, no other version. home becomes the CLI's HOME and
// XDG_CONFIG_HOME, so no config file of the machine's user changes it.
func Locate(repoRoot, server, home string) (CLI, error) {
	path := os.Getenv(EnvPath)
	if path == "" {
		path = DefaultPath
	}
	if !filepath.IsAbs(path) {
		path = filepath.Join(repoRoot, path) // not the suite package's directory, where ginkgo runs it
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return CLI{}, err
	}
	bi, err := buildinfo.ReadFile(abs)
	if err != nil {
		return CLI{}, fmt.Errorf("reading the hubble CLI %s: %w (make tools builds it from tools/hubble; %s=<path> names another)", abs, err, EnvPath)
	}
	if bi.Path != cliPackage {
		return CLI{}, fmt.Errorf("%s is %q, not the upstream hubble CLI %s", abs, bi.Path, cliPackage)
	}
	want, err := requiredVersion(filepath.Join(repoRoot, "go.mod"))
	if err != nil {
		return CLI{}, err
	}
	if got := moduleVersion(bi); got != want {
		return CLI{}, fmt.Errorf("%s is built from %s %q, but go.mod requires %s (flatnet's Hubble API): rebuild it (make tools)", abs, ciliumModule, got, want)
	}
	return CLI{Path: abs, Server: server, Version: want, home: home}, nil
}

// requiredVersion is the version of github.com/cilium/cilium a go.mod requires.
func requiredVersion(gomod string) (string, error) {
	data, err := os.ReadFile(gomod)
	if err != nil {
		return "", fmt.Errorf("reading the version of %s flatnet's Hubble API comes from: %w", ciliumModule, err)
	}
	mf, err := modfile.ParseLax(gomod, data, nil)
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", gomod, err)
	}
	for _, r := range mf.Require {
		if r.Mod.Path == ciliumModule {
			return r.Mod.Version, nil
		}
	}
	return "", fmt.Errorf("%s requires no %s: where does the Hubble API come from?", gomod, ciliumModule)
}

// moduleVersion is the version of github.com/cilium/cilium in a build: its
// main module (go install ...@version) or a dependency (a tools module).
func moduleVersion(bi *debug.BuildInfo) string {
	if bi.Main.Path == ciliumModule {
		return bi.Main.Version
	}
	for _, d := range bi.Deps {
		if d.Path == ciliumModule {
			if d.Replace != nil {
				return d.Replace.Version
			}
			return d.Version
		}
	}
	return ""
}

// Result is one run of the CLI.
type Result struct {
	Args           []string
	Stdout, Stderr string
	ExitCode       int
}

func (r Result) String() string {
	return fmt.Sprintf("hubble %s: exit %d, stdout %q, stderr %q", strings.Join(r.Args, " "), r.ExitCode, clip(r.Stdout), clip(r.Stderr))
}

func clip(s string) string {
	if len(s) <= outputLimit {
		return s
	}
	return s[:outputLimit] + fmt.Sprintf("... (%d bytes more)", len(s)-outputLimit)
}

// command is the CLI with args and --server, in its own environment: the
// caller's without HUBBLE_* (the CLI reads its flags from those too).
func (c CLI) command(ctx context.Context, args []string) (*exec.Cmd, []string) {
	full := append(append([]string(nil), args...), "--server", c.Server)
	cmd := exec.CommandContext(ctx, c.Path, full...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "HUBBLE_") && !strings.HasPrefix(kv, "HOME=") && !strings.HasPrefix(kv, "XDG_CONFIG_HOME=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "HOME="+c.home, "XDG_CONFIG_HOME="+c.home)
	return cmd, full
}

// Run runs the CLI to its end. A non-zero exit is part of the Result (bad
// input must fail, and how is what a suite checks); the error is for a
// command that could not run at all.
func (c CLI) Run(ctx context.Context, args ...string) (Result, error) {
	cmd, full := c.command(ctx, args)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := Result{Args: full, Stdout: stdout.String(), Stderr: stderr.String()}
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit) && ctx.Err() == nil:
		r.ExitCode = exit.ExitCode()
	default:
		return r, fmt.Errorf("running hubble %s: %w", strings.Join(full, " "), err)
	}
	return r, nil
}

// ParseLines reads `-o json` output: one GetFlowsResponse per line, in
// proto3's JSON mapping, as the CLI writes flows to stdout and node status
// events to stderr. Blank lines are skipped; any other line that is not a
// GetFlowsResponse is an error naming it.
func ParseLines(out string) ([]*observerpb.GetFlowsResponse, error) {
	var rs []*observerpb.GetFlowsResponse
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 64<<10), stdoutMaxLine)
	for n := 1; sc.Scan(); n++ {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		r := &observerpb.GetFlowsResponse{}
		if err := protojson.Unmarshal(line, r); err != nil {
			return nil, fmt.Errorf("line %d is no GetFlowsResponse (%v): %s", n, err, clip(string(line)))
		}
		rs = append(rs, r)
	}
	return rs, sc.Err()
}

// Line is one response a following CLI printed, with when it was read.
type Line struct {
	At   time.Time
	Resp *observerpb.GetFlowsResponse
}

// Stream is a CLI left running (`observe --follow -o json`), its stdout read
// line by line as it comes.
type Stream struct {
	Args []string
	out  *cmdstream.Stream
	done chan struct{}

	mu    sync.Mutex
	lines []Line
	err   error // a line that was no GetFlowsResponse
}

// Start starts the CLI with args and reads its stdout in the background
// until Stop.
func (c CLI) Start(ctx context.Context, args ...string) (*Stream, error) {
	var full []string
	out, err := cmdstream.Start(ctx, func(ctx context.Context) *exec.Cmd {
		cmd, f := c.command(ctx, args)
		full = f
		return cmd
	})
	if err != nil {
		return nil, fmt.Errorf("hubble %s: %w", strings.Join(args, " "), err)
	}
	s := &Stream{Args: full, out: out, done: make(chan struct{})}
	go s.read()
	return s, nil
}

func (s *Stream) read() {
	defer close(s.done)
	for l := range s.out.Lines {
		r := &observerpb.GetFlowsResponse{}
		err := protojson.Unmarshal([]byte(l.Text), r)
		s.mu.Lock()
		if err != nil && s.err == nil {
			s.err = fmt.Errorf("hubble %s printed a line that is no GetFlowsResponse (%v): %s", strings.Join(s.Args, " "), err, clip(l.Text))
		} else if err == nil {
			s.lines = append(s.lines, Line{At: l.At, Resp: r})
		}
		s.mu.Unlock()
	}
}

// Lines is what the CLI printed so far; the error is for a line that was no
// GetFlowsResponse, or the CLI having ended (a follow never ends by itself).
func (s *Stream) Lines() ([]Line, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := append([]Line(nil), s.lines...)
	if s.err != nil {
		return out, s.err
	}
	select {
	case <-s.done: // every line it printed is in out
		return out, fmt.Errorf("hubble %s ended (%s); stderr: %s", strings.Join(s.Args, " "), s.out.Ended(), clip(s.out.Stderr()))
	default:
	}
	return out, nil
}

// Stop ends the CLI and returns what it wrote to stderr.
func (s *Stream) Stop() string {
	stderr := s.out.Stop()
	<-s.done
	return stderr
}
