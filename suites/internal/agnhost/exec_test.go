package agnhost

import (
	"context"
	"errors"
	"io"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	clientexec "k8s.io/client-go/util/exec"

	"github.com/flatnet/flatnet/probes/podexec"
)

// localExec runs commands on this machine in dir, where ./agnhost is, and
// reports a non-zero exit as the API server's exec does (a
// k8s.io/client-go/util/exec.ExitError).
type localExec struct{ dir string }

func (e localExec) Exec(ctx context.Context, _ podexec.Pod, cmd []string, stdin io.Reader, stdout, stderr io.Writer) error {
	c := exec.CommandContext(ctx, cmd[0], cmd[1:]...)
	c.Dir, c.Stdin, c.Stdout, c.Stderr = e.dir, stdin, stdout, stderr
	err := c.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return clientexec.CodeExitError{Err: err, Code: ee.ExitCode()}
	}
	return err
}

// Connect runs the article's command line in bash with the real probe as
// ./agnhost and judges it: a listener connects, a closed port is REFUSED;
// an exec that cannot run is an error, not a verdict.
func TestConnectRunsTheArticlesCommandLine(t *testing.T) {
	ex := localExec{dir: filepath.Dir(buildProbe(t))}
	pod := podexec.Pod{Namespace: "ns", Name: "client"}
	open, closed := loopbackPorts(t)
	for _, c := range []struct {
		addr      string
		reachable bool
		word      string
	}{{open, true, ""}, {closed, false, "REFUSED"}} {
		host, p, _ := net.SplitHostPort(c.addr)
		port, _ := strconv.Atoi(p)
		r, err := Connect(context.Background(), ex, pod, host, int32(port), "3s")
		if err != nil || r.Reachable != c.reachable || r.Word != c.word {
			t.Errorf("Connect to %s = %+v, %v; want reachable %v, word %q", c.addr, r, err, c.reachable, c.word)
		}
		if want := "./agnhost connect " + c.addr + " --timeout=3s --protocol=tcp"; r.Cmdline != want {
			t.Errorf("command line %q, want the article's %q", r.Cmdline, want)
		}
	}
	if _, err := Connect(context.Background(), localExec{dir: filepath.Join(t.TempDir(), "missing")}, pod, "127.0.0.1", 80, "3s"); err == nil {
		t.Error("an exec that could not start was judged")
	}
}
