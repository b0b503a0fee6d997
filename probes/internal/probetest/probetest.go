// Package probetest builds the binaries probe tests run: flatnet's probe (also
// linked as "agnhost", so it answers as agnhost does) and upstream agnhost, built
// from the k8s.io/kubernetes module pinned in tools/go.mod for side-by-side comparison.
package probetest

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// Binaries holds built binaries for one test process.
type Binaries struct {
	once    sync.Once
	dir     string
	err     error
	agOnce  sync.Once
	agnhost string
	agErr   error
}

// Probe returns the path of a freshly built probe binary, and next to it an
// "agnhost" link to the same file. It is built once per Binaries.
func (b *Binaries) Probe(t testing.TB) string {
	t.Helper()
	b.once.Do(func() {
		b.dir, b.err = os.MkdirTemp("", "flatnet-probe-test-")
		if b.err != nil {
			return
		}
		out := filepath.Join(b.dir, "probe")
		cmd := exec.Command("go", "build", "-o", out, "github.com/flatnet/flatnet/probes/cmd/probe")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if msg, err := cmd.CombinedOutput(); err != nil {
			b.err = &buildError{what: "probe", out: string(msg), err: err}
			return
		}
		b.err = os.Symlink("probe", filepath.Join(b.dir, "agnhost"))
	})
	if b.err != nil {
		t.Fatalf("building probe: %v", b.err)
	}
	return filepath.Join(b.dir, "probe")
}

// ProbeAsAgnhost is the probe binary invoked under the name agnhost.
func (b *Binaries) ProbeAsAgnhost(t testing.TB) string {
	t.Helper()
	return filepath.Join(filepath.Dir(b.Probe(t)), "agnhost")
}

// Agnhost returns upstream agnhost, built in the repository's tools module into
// bin/agnhost-upstream and rebuilt only when tools/go.sum or the Go version changed.
func (b *Binaries) Agnhost(t testing.TB) string {
	t.Helper()
	b.agOnce.Do(func() { b.agnhost, b.agErr = buildAgnhost() })
	if b.agErr != nil {
		t.Fatalf("building upstream agnhost: %v", b.agErr)
	}
	return b.agnhost
}

func buildAgnhost() (string, error) {
	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", err
	}
	root := filepath.Dir(strings.TrimSpace(string(gomod)))
	tools := filepath.Join(root, "tools")
	sum, err := os.ReadFile(filepath.Join(tools, "go.sum"))
	if err != nil {
		return "", err
	}
	gover, err := exec.Command("go", "env", "GOVERSION").Output()
	if err != nil {
		return "", err
	}
	h := sha256.Sum256(append(sum, gover...))
	key := hex.EncodeToString(h[:8])
	out := filepath.Join(root, "bin", "agnhost-upstream")
	if stamp, err := os.ReadFile(out + ".inputs"); err == nil && string(stamp) == key {
		if _, err := os.Stat(out); err == nil {
			return out, nil
		}
	}
	cmd := exec.Command("go", "build", "-o", out, "k8s.io/kubernetes/test/images/agnhost")
	cmd.Dir = tools
	if msg, err := cmd.CombinedOutput(); err != nil {
		return "", &buildError{what: "agnhost", out: string(msg), err: err}
	}
	return out, os.WriteFile(out+".inputs", []byte(key), 0o644)
}

// Main runs the package's tests and then removes the probe b built; a test
// package's TestMain is `func TestMain(m *testing.M) { bins.Main(m) }`.
func (b *Binaries) Main(m *testing.M) {
	code := m.Run()
	if b.dir != "" {
		os.RemoveAll(b.dir)
	}
	os.Exit(code)
}

// ExitCode is the exit status of a command that has finished with err (0 for
// nil); any error other than a non-zero exit fails t.
func ExitCode(t testing.TB, err error) int {
	t.Helper()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		t.Fatalf("waiting for the command: %v", err)
	}
	return 0
}

type buildError struct {
	what, out string
	err       error
}

func (e *buildError) Error() string {
	return "go build " + e.what + ": " + e.err.Error() + "\n" + e.out
}
