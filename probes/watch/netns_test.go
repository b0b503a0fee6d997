package watch_test

import (
	"bufio"
	"bytes"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/flatnet/flatnet/probes/internal/netnstest"
	"github.com/flatnet/flatnet/probes/internal/probetest"
)

var bins probetest.Binaries

func TestMain(m *testing.M) { bins.Main(m) }

// startWatch runs `probe watch` in the client namespace and returns once it printed
// READY; wait collects the CHANGED instant.
func startWatch(t *testing.T, n *netnstest.Net, args ...string) (wait func() (time.Time, string, int)) {
	t.Helper()
	cmd := exec.Command(bins.Probe(t), append([]string{"watch"}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	n.Start(t, cmd)
	lines := bufio.NewScanner(out)
	if !lines.Scan() || !strings.HasPrefix(lines.Text(), "READY ") {
		cmd.Wait()
		t.Fatalf("probe watch %q: no READY line (got %q), stderr %q", args, lines.Text(), stderr.String())
	}
	return func() (time.Time, string, int) {
		var last string
		for lines.Scan() {
			last = lines.Text()
		}
		code := probetest.ExitCode(t, cmd.Wait())
		var at time.Time
		if f := strings.Fields(last); len(f) >= 2 && f[0] == "CHANGED" {
			if at, err = time.Parse(time.RFC3339Nano, f[1]); err != nil {
				t.Fatalf("CHANGED line %q: %v", last, err)
			}
		}
		return at, stderr.String(), code
	}
}

// TestWatchTimesTheChange flips the test network's drop filter while `probe watch`
// runs and checks that the instant it reports lies between the flip and the moment
// the report arrived, in both directions.
func TestWatchTimesTheChange(t *testing.T) {
	n := netnstest.New(t)
	must(t, n.SetDrop(false))
	n.Listen(t, "tcp", fmt.Sprintf("%s:8080", netnstest.DropIP))
	target := fmt.Sprintf("%s:8080", netnstest.DropIP)
	for _, c := range []struct {
		until string
		drop  bool
	}{{"blocked", true}, {"open", false}} {
		wait := startWatch(t, n, target, "--until="+c.until, "--interval=5ms", "--timeout=200ms", "--deadline=20s")
		time.Sleep(100 * time.Millisecond) // let attempts in the old state pile up
		flipped := time.Now()
		must(t, n.SetDrop(c.drop))
		at, stderr, code := wait()
		reported := time.Now()
		if code != 0 {
			t.Fatalf("until %s: exit %d, stderr %q", c.until, code, stderr)
		}
		// An attempt started a moment before the flip may meet the new state: allow
		// one interval of slack before it, none after the report.
		if at.Before(flipped.Add(-5*time.Millisecond)) || at.After(reported) {
			t.Errorf("until %s: change reported at %s, flip at %s, report read at %s", c.until,
				at.Format(time.StampMicro), flipped.Format(time.StampMicro), reported.Format(time.StampMicro))
		}
	}
}

func TestWatchBadInputAndWrongStart(t *testing.T) {
	n := netnstest.New(t) // drop filter on: DropIP is blocked
	target := fmt.Sprintf("%s:8080", netnstest.DropIP)
	for _, c := range []struct {
		args  []string
		code  int
		names string
	}{
		{[]string{target, "--until=closed"}, 1, "--until"},
		{[]string{target, "--timeout=2s"}, 1, "--timeout"},
		{[]string{target, "--interval=0s"}, 1, "--interval"},
		{[]string{target, "--protocol=quic"}, 1, "--protocol"},
		{[]string{target, "--until=blocked", "--timeout=100ms"}, 2, "NOT-open"},
		{[]string{target, "--until=open", "--timeout=100ms", "--deadline=500ms"}, 3, "UNCHANGED"},
	} {
		cmd := exec.Command(bins.Probe(t), append([]string{"watch"}, c.args...)...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		n.Start(t, cmd)
		code := probetest.ExitCode(t, cmd.Wait())
		if code != c.code || !strings.Contains(stderr.String(), c.names) {
			t.Errorf("watch %q: exit %d, stderr %q; want exit %d naming %s", c.args, code, stderr.String(), c.code, c.names)
		}
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
