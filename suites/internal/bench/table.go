package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// Row is one line of a comparison: a figure on two sides and their ratio.
type Row struct {
	Figure string  `json:"figure"`
	Unit   string  `json:"unit"`
	A      float64 `json:"a"`
	B      float64 `json:"b"`
	// Ratio is A/B; NaN when either side is missing.
	Ratio  float64 `json:"ratio"`
	Better Better  `json:"better"`
	// Verdict is "ahead", "behind" or "even" (within 3%) for A, or "" when
	// there is nothing to compare.
	Verdict string `json:"verdict"`
	How     string `json:"how,omitempty"`
	// AOwn, BOwn are each side's value over its own same-run baseline (pod
	// over host network, SYNs delivered over sent): comparable across two
	// clusters under different load. NaN when there is none.
	AOwn float64 `json:"-"`
	BOwn float64 `json:"-"`
	// Baseline names what AOwn and BOwn divide by.
	Baseline string `json:"baseline,omitempty"`
}

// MarshalJSON writes a missing value or ratio (NaN) as null.
func (r Row) MarshalJSON() ([]byte, error) {
	type plain Row
	n := func(v float64) *float64 {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return nil
		}
		return &v
	}
	return json.Marshal(struct {
		plain
		A     *float64 `json:"a"`
		B     *float64 `json:"b"`
		Ratio *float64 `json:"ratio"`
		AOwn  *float64 `json:"a_over_own_baseline"`
		BOwn  *float64 `json:"b_over_own_baseline"`
	}{plain(r), n(r.A), n(r.B), n(r.Ratio), n(r.AOwn), n(r.BOwn)})
}

// Table is a set of rows with its two sides named and the runs' loads.
type Table struct {
	Title    string    `json:"title"`
	A, B     string    `json:"-"`
	SideA    string    `json:"a_name"`
	SideB    string    `json:"b_name"`
	Rows     []Row     `json:"rows"`
	Loads    []string  `json:"loads"`
	Machine  string    `json:"machine,omitempty"`
	Taken    time.Time `json:"taken"`
	Notes    []string  `json:"notes,omitempty"`
	Trace    []Phase   `json:"trace,omitempty"`
	TraceFor []string  `json:"trace_for,omitempty"`
}

func row(name, unit string, a, b float64, better Better, how string) Row {
	r := Row{Figure: name, Unit: unit, A: a, B: b, Ratio: a / b, Better: better, How: how, AOwn: math.NaN(), BOwn: math.NaN()}
	if math.IsNaN(a) || math.IsNaN(b) || b == 0 {
		r.Ratio = math.NaN()
		return r
	}
	switch {
	case math.Abs(r.Ratio-1) <= 0.03:
		r.Verdict = "even"
	case (r.Ratio < 1) == (better == Lower):
		r.Verdict = "ahead"
	default:
		r.Verdict = "behind"
	}
	return r
}

// Peers puts two runs side by side, figure by figure (a's order, then any
// figure only b has); each ratio is a's value over b's.
func Peers(a, b Result) Table {
	t := Table{Title: fmt.Sprintf("%s (%s) vs %s (%s)", a.CNI, a.Cluster, b.CNI, b.Cluster), SideA: a.CNI, SideB: b.CNI, Taken: a.Started,
		Loads: []string{fmt.Sprintf("%s: load %s at start, %s at end", a.Cluster, a.LoadStart, a.LoadEnd),
			fmt.Sprintf("%s: load %s at start, %s at end", b.Cluster, b.LoadStart, b.LoadEnd)}}
	seen := map[string]bool{}
	for _, f := range a.Figures {
		seen[f.Name] = true
		g, ok := b.Figure(f.Name)
		bv := math.NaN()
		if ok {
			bv = g.Value
		}
		r := row(f.Name, f.Unit, f.Value, bv, f.Better, f.How)
		r.AOwn, r.Baseline = overOwn(f), f.BaselineName
		if ok {
			r.BOwn = overOwn(g)
		}
		t.Rows = append(t.Rows, r)
	}
	for _, n := range a.NotMeasured {
		t.Notes = append(t.Notes, fmt.Sprintf("not measured on %s: %s", a.CNI, n))
	}
	for _, n := range b.NotMeasured {
		t.Notes = append(t.Notes, fmt.Sprintf("not measured on %s: %s", b.CNI, n))
	}
	for _, g := range b.Figures {
		if !seen[g.Name] {
			t.Rows = append(t.Rows, row(g.Name, g.Unit, math.NaN(), g.Value, g.Better, g.How))
		}
	}
	t.Trace = append(a.Trace, b.Trace...)
	for range a.Trace {
		t.TraceFor = append(t.TraceFor, a.CNI)
	}
	for range b.Trace {
		t.TraceFor = append(t.TraceFor, b.CNI)
	}
	return t
}

func overOwn(f Figure) float64 {
	if f.Baseline == nil || *f.Baseline == 0 {
		return math.NaN()
	}
	return f.Value / *f.Baseline
}

// Baselines is one run against its own baselines (the same figure without the
// CNI's share); figures without one show their value alone.
func Baselines(a Result) Table {
	t := Table{Title: fmt.Sprintf("%s (%s) against its baselines", a.CNI, a.Cluster), SideA: a.CNI, SideB: "baseline", Taken: a.Started,
		Loads: []string{fmt.Sprintf("%s: load %s at start, %s at end", a.Cluster, a.LoadStart, a.LoadEnd)}, Trace: a.Trace}
	for _, f := range a.Figures {
		bv := math.NaN()
		how := f.How
		if f.Baseline != nil {
			bv = *f.Baseline
			how = "baseline: " + f.BaselineName + "; " + how
		}
		t.Rows = append(t.Rows, row(f.Name, f.Unit, f.Value, bv, f.Better, how))
	}
	for range a.Trace {
		t.TraceFor = append(t.TraceFor, a.CNI)
	}
	for _, n := range a.NotMeasured {
		t.Notes = append(t.Notes, "not measured: "+n)
	}
	return t
}

// Print writes t as an aligned table, then the loads, the start-up trace
// and how each figure was measured.
func (t Table) Print(w io.Writer) error {
	fmt.Fprintf(w, "%s, %s\n\n", t.Title, t.Taken.Format(time.RFC3339))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	own := slices.ContainsFunc(t.Rows, func(r Row) bool { return !math.IsNaN(r.AOwn) || !math.IsNaN(r.BOwn) })
	if own {
		fmt.Fprintf(tw, "figure\tunit\t%s\t%s\tratio\t%s is\t%s/own base\t%s/own base\town base\t\n", t.SideA, t.SideB, t.SideA, t.SideA, t.SideB)
	} else {
		fmt.Fprintf(tw, "figure\tunit\t%s\t%s\tratio\t%s is\t\n", t.SideA, t.SideB, t.SideA)
	}
	for _, r := range t.Rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t", r.Figure, r.Unit, num(r.A), num(r.B), ratio(r.Ratio), r.Verdict)
		if own {
			fmt.Fprintf(tw, "%s\t%s\t%s\t", ratio(r.AOwn), ratio(r.BOwn), r.Baseline)
		}
		fmt.Fprintln(tw)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "(ratio = %s / %s of the same run; \"ahead\" = better by more than 3%%, lower or higher as the figure wants", t.SideA, t.SideB)
	if own {
		fmt.Fprintf(w, ";\n /own base = each side over its own baseline of the same run, comparable when the two clusters ran under different load")
	}
	fmt.Fprintln(w, ")")
	for _, l := range t.Loads {
		fmt.Fprintln(w, l)
	}
	for _, n := range t.Notes {
		fmt.Fprintln(w, n)
	}
	if len(t.Trace) > 0 {
		fmt.Fprintln(w, "\nwhere a burst's start-up goes (per pod, as a pod watch saw it):")
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintf(tw, "cni\tburst\tphase\tp50 ms\tp90 ms\tmax ms\tpods\t\n")
		for i, p := range t.Trace {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%.0f\t%.0f\t%.0f\t%d\t\n", t.TraceFor[i], p.Burst, p.Phase, p.P50MS, p.P90MS, p.MaxMS, p.Complete)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	fmt.Fprintln(w, "\nhow each figure was measured:")
	for _, r := range t.Rows {
		if r.How != "" {
			fmt.Fprintf(w, "  %s: %s\n", r.Figure, r.How)
		}
	}
	return nil
}

func num(v float64) string {
	switch {
	case math.IsNaN(v):
		return "-"
	case math.Abs(v) >= 100:
		return fmt.Sprintf("%.0f", v)
	case math.Abs(v) >= 10:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.2f", v)
}

func ratio(v float64) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return "-"
	}
	return strings.TrimSpace(fmt.Sprintf("%.3f", v))
}
