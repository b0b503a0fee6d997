package perf

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	probeperf "github.com/flatnet/flatnet/probes/perf"
)

// Cell is one path × test × policy count.
type Cell struct {
	Path     Path
	Test     probeperf.Test
	Policies int
	// Load1 is the machine's 1-minute load average when the cell started.
	Load1  float64
	Result *probeperf.Result
	Err    error
}

// headline is the figure a cell is compared on: transactions/s, or Gbit/s for
// TCP_STREAM (higher is better for both).
func (c Cell) headline() float64 {
	if c.Result == nil {
		return 0
	}
	if c.Test == probeperf.TCPStream {
		return c.Result.GbitPerS
	}
	return c.Result.TransactionsPerS
}

// Summary is the cell as one short line of progress.
func (c Cell) Summary() string {
	switch {
	case c.Err != nil:
		return "FAILED: " + c.Err.Error()
	case c.Result.LatencyUS != nil:
		l := c.Result.LatencyUS
		return fmt.Sprintf("p50 %.0f µs  p99 %.0f µs  %.0f trans/s", l.P50, l.P99, c.Result.TransactionsPerS)
	}
	return fmt.Sprintf("%.2f Gbit/s", c.Result.GbitPerS)
}

// LoadSample is the machine's load average at one moment of the run. The kind
// nodes share this machine's kernel, so it is the nodes' load too.
type LoadSample struct {
	When               string
	One, Five, Fifteen float64
}

// ReadLoad reads /proc/loadavg.
func ReadLoad() (LoadSample, error) {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return LoadSample{}, fmt.Errorf("reading the load average: %w", err)
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return LoadSample{}, fmt.Errorf("/proc/loadavg: unexpected %q", b)
	}
	var l LoadSample
	for i, p := range []*float64{&l.One, &l.Five, &l.Fifteen} {
		if *p, err = strconv.ParseFloat(f[i], 64); err != nil {
			return LoadSample{}, fmt.Errorf("/proc/loadavg field %d: %w", i+1, err)
		}
	}
	return l, nil
}

// Report is a whole run.
type Report struct {
	Cluster string
	Started time.Time
	Nodes   []string
	NodeIPs []string
	Cells   []Cell
	Load    []LoadSample
	// Notes say what was not measured and why.
	Notes []string
}

// Baseline is the host → host cell of the same test and policy count, nil when
// it was not measured or failed.
func (r *Report) Baseline(c Cell) *Cell {
	for i := range r.Cells {
		b := &r.Cells[i]
		if b.Path == HostToHost && b.Test == c.Test && b.Policies == c.Policies && b.Err == nil {
			return b
		}
	}
	return nil
}

// Ratio is c's headline over the baseline's: 1.00 is as fast as host → host,
// 0.50 half as many transactions (or half the throughput). Zero when there is no
// baseline.
func (r *Report) Ratio(c Cell) float64 {
	b := r.Baseline(c)
	if b == nil || c.Err != nil || b.headline() == 0 {
		return 0
	}
	return c.headline() / b.headline()
}

// WriteTable prints the report as one aligned table, then the load averages
// and the notes.
func (r *Report) WriteTable(w io.Writer) error {
	fmt.Fprintf(w, "cluster %s, nodes %s, %s\n", r.Cluster, strings.Join(r.Nodes, " and "), r.Started.Format(time.RFC3339))
	// Numbers align right; the path and test names are padded to one width
	// first, so they read left-aligned.
	pw, tw0 := len("path"), len("test")
	for _, c := range r.Cells {
		pw, tw0 = max(pw, utf8.RuneCountInString(string(c.Path))), max(tw0, len(c.Test))
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "%-*s\t%-*s\tpolicies\tp50 µs\tp90 µs\tp99 µs\ttrans/s\tGbit/s\tvs host→host\tload1\t\n", pw, "path", tw0, "test")
	for _, c := range r.Cells {
		row := []string{fmt.Sprintf("%-*s", pw, c.Path), fmt.Sprintf("%-*s", tw0, c.Test), strconv.Itoa(c.Policies)}
		switch {
		case c.Err != nil:
			row = append(row, "FAILED", "", "", "", "", "", num(c.Load1, 2))
		default:
			lat := []string{"-", "-", "-"}
			if l := c.Result.LatencyUS; l != nil {
				lat = []string{num(l.P50, 1), num(l.P90, 1), num(l.P99, 1)}
			}
			rate, gbit := num(c.Result.TransactionsPerS, 0), "-"
			if c.Test == probeperf.TCPStream {
				rate, gbit = "-", num(c.Result.GbitPerS, 2)
			}
			ratio := "-"
			if x := r.Ratio(c); x > 0 {
				ratio = num(x, 2) + "x"
			}
			if c.Result.Errors > 0 || c.Result.Lost > 0 {
				ratio += fmt.Sprintf(" (%d lost, %d errors)", c.Result.Lost, c.Result.Errors)
			}
			row = append(row, lat[0], lat[1], lat[2], rate, gbit, ratio, num(c.Load1, 2))
		}
		fmt.Fprintln(tw, strings.Join(row, "\t")+"\t")
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, l := range r.Load {
		fmt.Fprintf(w, "load average %-14s %.2f %.2f %.2f\n", l.When+":", l.One, l.Five, l.Fifteen)
	}
	for _, c := range r.Cells {
		if c.Err != nil {
			fmt.Fprintf(w, "FAILED %s %s %d policies: %v\n", c.Path, c.Test, c.Policies, c.Err)
		}
	}
	for _, n := range r.Notes {
		fmt.Fprintln(w, "note: "+n)
	}
	return nil
}

func num(v float64, prec int) string { return strconv.FormatFloat(v, 'f', prec, 64) }
