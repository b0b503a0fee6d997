package batch_test

import (
	"bytes"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/flatnet/flatnet/probes/batch"
	"github.com/flatnet/flatnet/probes/internal/netnstest"
	"github.com/flatnet/flatnet/probes/internal/probetest"
)

// matrix is a set of targets in the test network: open ports on ServerIP (each
// with a listener), closed ports on ServerIP, and ports on DropIP behind the drop
// program.
type matrix struct {
	targets []batch.Target
	want    map[string]batch.Verdict
}

func newMatrix(t testing.TB, n *netnstest.Net, open, closed, dropped int) matrix {
	t.Helper()
	m := matrix{want: map[string]batch.Verdict{}}
	add := func(ip netip.Addr, port int, v batch.Verdict) {
		target := netip.AddrPortFrom(ip, uint16(port)).String()
		m.targets = append(m.targets, batch.Target{Target: target})
		m.want[target] = v
	}
	// Interleave the classes, as a real matrix row would.
	for i := 0; i < max(open, closed, dropped); i++ {
		if i < open {
			n.Listen(t, "tcp", fmt.Sprintf("%s:%d", netnstest.ServerIP, 10000+i))
			add(netnstest.ServerIP, 10000+i, batch.Connected)
		}
		if i < closed {
			add(netnstest.ServerIP, 20000+i, batch.Refused)
		}
		if i < dropped {
			add(netnstest.DropIP, 30000+i, batch.Timeout)
		}
	}
	return m
}

func (m matrix) input(t testing.TB) []byte {
	var buf bytes.Buffer
	if err := batch.EncodeTargets(&buf, m.targets); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// runBatch runs `probe batch` in the client namespace with the targets on stdin.
func runBatch(t testing.TB, n *netnstest.Net, stdin []byte, args ...string) ([]batch.Result, string, int) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(bins.Probe(t), append([]string{"batch"}, args...)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = bytes.NewReader(stdin), &stdout, &stderr
	n.Start(t, cmd)
	code := probetest.ExitCode(t, cmd.Wait())
	res, err := batch.DecodeResults(&stdout)
	if err != nil {
		t.Fatalf("the output breaks the JSON-lines contract: %v\n%s", err, stdout.String())
	}
	return res, stderr.String(), code
}

// TestBatchInNetns runs the probe binary in the client namespace over open,
// refused and dropped targets and checks every verdict.
func TestBatchInNetns(t *testing.T) {
	n := netnstest.New(t)
	m := newMatrix(t, n, 20, 20, 20)
	res, stderr, code := runBatch(t, n, m.input(t), "--timeout=2s")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if len(res) != len(m.targets) {
		t.Fatalf("%d results for %d targets", len(res), len(m.targets))
	}
	for i, r := range res {
		if r.Target != m.targets[i].Target {
			t.Fatalf("result %d is for %s, want %s: results must keep input order", i, r.Target, m.targets[i].Target)
		}
		if r.Verdict != m.want[r.Target] {
			t.Errorf("%s: %q (%s), want %q", r.Target, r.Verdict, r.Detail, m.want[r.Target])
		}
		if r.Verdict == batch.Timeout && r.LatencyMS < 2000 {
			t.Errorf("%s: timed out after %.1f ms, before the 2s deadline", r.Target, r.LatencyMS)
		}
	}
}

func TestBatchBadInput(t *testing.T) {
	n := netnstest.New(t)
	for _, c := range []struct {
		stdin string
		args  []string
		names string
	}{
		{"192.0.2.2:80\n", []string{"--timeout=0s"}, "--timeout"},
		{"192.0.2.2:80\n", []string{"--timeout=-3s"}, "--timeout"},
		{"192.0.2.2:80\n", []string{"--protocol=quic"}, "--protocol"},
		{"192.0.2.2:80\n192.0.2.2\n", nil, "line 2"},
		{"192.0.2.2:99999\n", nil, "port"},
	} {
		res, stderr, code := runBatch(t, n, []byte(c.stdin), c.args...)
		if code != 1 || len(res) != 0 || !strings.HasPrefix(stderr, "UNKNOWN: ") || !strings.Contains(stderr, c.names) {
			t.Errorf("%q %q: exit %d, %d results, stderr %q; want exit 1, no results, UNKNOWN naming %s", c.stdin, c.args, code, len(res), stderr, c.names)
		}
	}
}

// BenchmarkThousandTargets probes 1,000 targets (a third each open, refused and
// dropped, in the test network) once with one `probe batch` process and once with
// one `probe connect` process per target, one after the other, as a suite doing an
// exec per cell would. It reports both wall times, their ratio, and how many
// verdicts differed from the target's class (on a loaded machine an open port can
// miss a short deadline; the count says whether that happened).
func BenchmarkThousandTargets(b *testing.B) {
	n := netnstest.New(b)
	m := newMatrix(b, n, 334, 333, 333)
	const timeout = 250 * time.Millisecond
	in := m.input(b)
	bin := bins.Probe(b)
	var batchTotal, seqTotal time.Duration
	var batchWrong, seqWrong int
	for b.Loop() {
		start := time.Now()
		res, stderr, code := runBatch(b, n, in, "--timeout="+timeout.String())
		batchTotal += time.Since(start)
		if code != 0 || len(res) != len(m.targets) {
			b.Fatalf("batch: exit %d, %d results: %s", code, len(res), stderr)
		}
		for _, r := range res {
			if r.Verdict != m.want[r.Target] {
				batchWrong++
			}
		}

		start = time.Now()
		for _, tg := range m.targets {
			cmd := exec.Command(bin, "connect", tg.Target, "--timeout="+timeout.String())
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			n.Start(b, cmd)
			cmd.Wait()
			got := batch.Connected
			if w := strings.Fields(stderr.String()); len(w) > 0 {
				got = batch.Verdict(strings.ToLower(strings.TrimSuffix(w[0], ":")))
			}
			if got != m.want[tg.Target] {
				seqWrong++
			}
		}
		seqTotal += time.Since(start)
	}
	runs := float64(b.N)
	b.ReportMetric(batchTotal.Seconds()/runs, "batch-s")
	b.ReportMetric(seqTotal.Seconds()/runs, "one-process-each-s")
	b.ReportMetric(seqTotal.Seconds()/batchTotal.Seconds(), "speedup-x")
	b.ReportMetric(float64(batchWrong)/runs, "batch-misclassified")
	b.ReportMetric(float64(seqWrong)/runs, "one-process-misclassified")
}

// BenchmarkBatchParallel runs the 1,000-target batch at several --parallel caps:
// wall time against misclassified targets (a burst of SYNs larger than the
// kernel's per-CPU backlog loses packets, and a lost SYN looks like a drop rule).
func BenchmarkBatchParallel(b *testing.B) {
	n := netnstest.New(b)
	m := newMatrix(b, n, 334, 333, 333)
	in := m.input(b)
	for _, parallel := range []int{64, 128, 256, 1000} {
		b.Run(fmt.Sprintf("parallel=%d", parallel), func(b *testing.B) {
			wrong := map[batch.Verdict]int{}
			for b.Loop() {
				res, stderr, code := runBatch(b, n, in, "--timeout=250ms", fmt.Sprintf("--parallel=%d", parallel))
				if code != 0 || len(res) != len(m.targets) {
					b.Fatalf("exit %d, %d results: %s", code, len(res), stderr)
				}
				for _, r := range res {
					if r.Verdict != m.want[r.Target] {
						wrong[m.want[r.Target]]++
					}
				}
			}
			for _, v := range []batch.Verdict{batch.Connected, batch.Refused, batch.Timeout} {
				b.ReportMetric(float64(wrong[v])/float64(b.N), "misclassified-"+string(v))
			}
		})
	}
}
