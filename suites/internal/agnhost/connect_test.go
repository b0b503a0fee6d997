package agnhost

import (
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The real probe binary, run as the article runs it (argv[0] agnhost), against
// loopback: a listener (success, no output) and a closed port (REFUSED). The
// TIMEOUT line needs a dropping path, which the probes' own netns tests cover.
func TestJudgeReadsTheRealProbe(t *testing.T) {
	bin := buildProbe(t)
	open, closedAddr := loopbackPorts(t)

	for _, c := range []struct {
		target    string
		reachable bool
		word      string
	}{{open, true, ""}, {closedAddr, false, "REFUSED"}} {
		cmd := exec.Command(bin, "connect", c.target, "--timeout=3s", "--protocol=tcp")
		var stdout, stderr strings.Builder
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		code := 0
		if err := cmd.Run(); err != nil {
			var ee *exec.ExitError
			if !errors.As(err, &ee) {
				t.Fatal(err)
			}
			code = ee.ExitCode()
		}
		reachable, word, err := Judge(Answer{ExitCode: code, Stdout: stdout.String(), Stderr: stderr.String()})
		if err != nil || reachable != c.reachable || word != c.word {
			t.Errorf("connect %s: Judge = %v %q %v, want %v %q (exit %d, stderr %q)", c.target, reachable, word, err, c.reachable, c.word, code, stderr.String())
		}
	}
}

// buildProbe builds the real probe binary as ./agnhost in a directory of its own.
func buildProbe(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "agnhost")
	build := exec.Command("go", "build", "-o", bin, "github.com/flatnet/flatnet/probes/cmd/probe")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the probe: %v\n%s", err, out)
	}
	return bin
}

// loopbackPorts returns a loopback address that accepts connections (until
// the test ends) and one that refuses them.
func loopbackPorts(t *testing.T) (open, closed string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	c, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed = c.Addr().String()
	c.Close()
	return l.Addr().String(), closed
}

func TestJudgeRefusesOffContractAnswers(t *testing.T) {
	for _, a := range []Answer{
		{ExitCode: 0, Stdout: "hello"},
		{ExitCode: 1, Stderr: "connection failed"},
		{ExitCode: 1},
		{ExitCode: 137, Stderr: "TIMEOUT"},
	} {
		if _, _, err := Judge(a); err == nil {
			t.Errorf("Judge(%+v) accepted an answer outside agnhost's contract", a)
		}
	}
	if r, w, err := Judge(Answer{ExitCode: 1, Stderr: "TIMEOUT\n"}); err != nil || r || w != "TIMEOUT" {
		t.Errorf("the article's TIMEOUT: %v %q %v", r, w, err)
	}
	if r, w, err := Judge(Answer{ExitCode: 1, Stderr: "OTHER: no route to host\n"}); err != nil || r || w != "OTHER" {
		t.Errorf("OTHER with detail: %v %q %v", r, w, err)
	}
}
