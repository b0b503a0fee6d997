// Package runreport is what `make e2e` makes of the Ginkgo JSON reports of its
// suite runs: the suites run as separate processes (several at once, then the
// disruptive specs alone), so one suite may have two reports; Merge folds them
// into one report per suite, and the result is written as one junit.xml and
// one JSON report, summarised as a table, or listed spec by spec (a dry run).
package runreport

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/onsi/ginkgo/v2/reporters"
	"github.com/onsi/ginkgo/v2/types"
)

// Read reads Ginkgo JSON reports (each file a list of suite reports, as
// --json-report writes them), in order.
func Read(paths ...string) ([]types.Report, error) {
	var out []types.Report
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("reading ginkgo report: %w", err)
		}
		var rs []types.Report
		if err := json.Unmarshal(data, &rs); err != nil {
			return nil, fmt.Errorf("decoding ginkgo report %s: %w", p, err)
		}
		out = append(out, rs...)
	}
	return out, nil
}

// Merge folds the reports of one suite (the same SuitePath) into one, in the
// order suites first appear: a spec that ran in one of the runs is reported
// as it ran there, not as the skip of the run whose label filter left it out;
// the suite-level nodes (BeforeSuite, AfterSuite ...) of every run are kept,
// since each ran; the run time is the sum of the runs'.
func Merge(reports []types.Report) []types.Report {
	var out []types.Report
	for _, r := range reports {
		i := slices.IndexFunc(out, func(o types.Report) bool { return o.SuitePath == r.SuitePath })
		if i < 0 {
			out = append(out, r)
			continue
		}
		runTime := out[i].RunTime + r.RunTime
		willRun := out[i].PreRunStats.SpecsThatWillRun + r.PreRunStats.SpecsThatWillRun
		merged := out[i].Add(r)
		merged.RunTime = runTime
		merged.PreRunStats.SpecsThatWillRun = willRun
		merged.SpecReports = dedupeSpecs(merged.SpecReports)
		out[i] = merged
	}
	return out
}

// dedupeSpecs keeps one report per It (by location and text): the first that
// did not skip, else the first.
func dedupeSpecs(specs types.SpecReports) types.SpecReports {
	var out types.SpecReports
	at := map[string]int{}
	for _, s := range specs {
		if s.LeafNodeType != types.NodeTypeIt {
			out = append(out, s)
			continue
		}
		key := s.LeafNodeLocation.String() + "\x00" + s.FullText()
		i, seen := at[key]
		switch {
		case !seen:
			at[key] = len(out)
			out = append(out, s)
		case out[i].State == types.SpecStateSkipped && s.State != types.SpecStateSkipped:
			out[i] = s
		}
	}
	return out
}

// Write writes the reports as dir/junit.xml (one testsuite per suite, as the
// ginkgo CLI's merged report) and dir/report.json.
func Write(dir string, reports []types.Report) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("writing the e2e report: %w", err)
	}
	data, err := json.MarshalIndent(reports, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding the e2e JSON report: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "report.json"), data, 0o644); err != nil {
		return fmt.Errorf("writing the e2e JSON report: %w", err)
	}
	var parts []string
	for i, r := range reports {
		p := filepath.Join(dir, fmt.Sprintf(".junit-%d.xml", i))
		if err := reporters.GenerateJUnitReport(r, p); err != nil {
			return fmt.Errorf("writing the JUnit report of suite %s: %w", r.SuiteDescription, err)
		}
		parts = append(parts, p)
	}
	msgs, err := reporters.MergeAndCleanupJUnitReports(parts, filepath.Join(dir, "junit.xml"))
	if err == nil && len(msgs) > 0 {
		err = fmt.Errorf("%s", strings.Join(msgs, "; "))
	}
	if err != nil {
		return fmt.Errorf("merging the JUnit reports into %s: %w", filepath.Join(dir, "junit.xml"), err)
	}
	return nil
}

// Counts are a suite's specs by outcome (Its only).
type Counts struct {
	Specs, Passed, Failed, Skipped int
}

// Count counts r's Its: failed covers every failure state (panicked,
// interrupted, timed out ...).
func Count(r types.Report) Counts {
	its := r.SpecReports.WithLeafNodeType(types.NodeTypeIt)
	return Counts{
		Specs:   len(its),
		Passed:  its.CountWithState(types.SpecStatePassed),
		Failed:  its.CountWithState(types.SpecStateFailureStates),
		Skipped: its.CountWithState(types.SpecStateSkipped | types.SpecStatePending),
	}
}

// Failed says whether any suite failed (a spec, or the suite itself).
func Failed(reports []types.Report) bool {
	return slices.ContainsFunc(reports, func(r types.Report) bool {
		return !r.SuiteSucceeded || Count(r).Failed > 0
	})
}

// Failures is one line per failed spec or suite node of reports: suite, spec,
// the failure message on one line (Gomega's first line alone says "Expected")
// and where it failed, cut to fit, so a log's tail (CI's) says what failed
// without the whole log.
func Failures(reports []types.Report) []string {
	var lines []string
	for _, r := range reports {
		for _, s := range r.SpecReports {
			if !s.State.Is(types.SpecStateFailureStates) {
				continue
			}
			msg := strings.Join(strings.Fields(s.Failure.Message), " ")
			lines = append(lines, fmt.Sprintf("%s: %s [%s]: %s (%s:%d)", suiteName(r), truncate(specName(s), 90), s.State,
				truncate(msg, 160), filepath.Base(s.Failure.Location.FileName), s.Failure.Location.LineNumber))
		}
		for _, why := range r.SpecialSuiteFailureReasons {
			lines = append(lines, suiteName(r)+": "+truncate(why, 200))
		}
	}
	return lines
}

// Summarize prints one line per suite (specs passed, failed, skipped, run
// time), what failed a suite beyond its specs, and the slowest specs.
func Summarize(w io.Writer, reports []types.Report, slowest int) {
	type timed struct {
		suite string
		spec  types.SpecReport
	}
	var all []timed
	var reasons []string
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "suite\tspecs\tpassed\tfailed\tskipped\tseconds\t")
	for _, r := range reports {
		c := Count(r)
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%.0f\t\n", suiteName(r), c.Specs, c.Passed, c.Failed, c.Skipped, r.RunTime.Seconds())
		for _, why := range r.SpecialSuiteFailureReasons {
			reasons = append(reasons, suiteName(r)+": "+why)
		}
		for _, s := range r.SpecReports {
			if s.State != types.SpecStateSkipped {
				all = append(all, timed{suiteName(r), s})
			}
		}
	}
	_ = tw.Flush()
	for _, why := range reasons {
		fmt.Fprintln(w, "  "+why)
	}
	slices.SortStableFunc(all, func(a, b timed) int { return cmp.Compare(b.spec.RunTime, a.spec.RunTime) })
	if len(all) > slowest {
		all = all[:slowest]
	}
	if len(all) == 0 {
		return
	}
	fmt.Fprintln(w, "\nslowest:")
	for _, t := range all {
		fmt.Fprintf(w, "  %6.1fs  %-14s %s\n", t.spec.RunTime.Seconds(), t.suite, truncate(specName(t.spec), 100))
	}
}

// List prints every It of dry-run reports, one a line: suite, whether the
// run's filters (label filter, focus, skip) let it run, its text, its labels.
func List(w io.Writer, reports []types.Report) (run, total int) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, r := range reports {
		for _, s := range r.SpecReports.WithLeafNodeType(types.NodeTypeIt) {
			mark := "run"
			if s.State != types.SpecStatePassed {
				mark = "skip"
			} else {
				run++
			}
			total++
			fmt.Fprintf(tw, "%s\t%s\t%s  [%s]\n", suiteName(r), mark, s.FullText(), strings.Join(s.Labels(), ","))
		}
	}
	_ = tw.Flush()
	return run, total
}

// suiteName is the suite's package directory (netpol, hubble ...).
func suiteName(r types.Report) string {
	if r.SuitePath != "" {
		return filepath.Base(r.SuitePath)
	}
	return r.SuiteDescription
}

func specName(s types.SpecReport) string {
	if s.LeafNodeType == types.NodeTypeIt {
		return s.FullText()
	}
	return "[" + s.LeafNodeType.String() + "]"
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-1] + "…"
}

// Accounting compares a run with its listing (the suites' dry runs under the
// same filters): every spec the listing selects must have run exactly once,
// across all the run's processes (suites, their parts, the disruptive phase).
type Accounting struct {
	Listed, Selected, RanOnce int
	// Twice ran in two processes, NotRun in none (a failed BeforeSuite, an
	// interrupt, a part that never started), Unselected ran though the
	// filters leave them out.
	Twice, NotRun, Unselected []string
}

// OK says every selected spec ran once and nothing else ran.
func (a Accounting) OK() bool {
	return len(a.Twice)+len(a.NotRun)+len(a.Unselected) == 0
}

// Account counts, per It of the dry-run reports listed, the unmerged reports
// of ran in which its body ran (a spec skipped by a filter never starts; one
// that calls Skip does).
func Account(listed, ran []types.Report) Accounting {
	runs := map[string]int{}
	for _, r := range ran {
		for _, s := range r.SpecReports.WithLeafNodeType(types.NodeTypeIt) {
			if s.NumAttempts > 0 {
				runs[specKey(r, s)]++
			}
		}
	}
	var a Accounting
	for _, r := range listed {
		for _, s := range r.SpecReports.WithLeafNodeType(types.NodeTypeIt) {
			a.Listed++
			name := suiteName(r) + ": " + s.FullText()
			n := runs[specKey(r, s)]
			selected := s.State == types.SpecStatePassed
			switch {
			case selected && n == 1:
				a.Selected++
				a.RanOnce++
			case selected && n == 0:
				a.Selected++
				a.NotRun = append(a.NotRun, name)
			case selected:
				a.Selected++
				a.Twice = append(a.Twice, fmt.Sprintf("%s (%d times)", name, n))
			case n > 0:
				a.Unselected = append(a.Unselected, name)
			}
		}
	}
	return a
}

// Print writes the accounting as one line, then each spec that broke it.
func (a Accounting) Print(w io.Writer) {
	fmt.Fprintf(w, "specs: %d listed, %d selected by the filters: %d ran once, %d more than once, %d not run, %d ran unselected\n",
		a.Listed, a.Selected, a.RanOnce, len(a.Twice), len(a.NotRun), len(a.Unselected))
	for _, l := range []struct {
		what  string
		specs []string
	}{{"ran more than once", a.Twice}, {"not run", a.NotRun}, {"ran unselected", a.Unselected}} {
		for _, s := range l.specs {
			fmt.Fprintf(w, "  %s: %s\n", l.what, truncate(s, 140))
		}
	}
}

// specKey names an It across processes of one suite binary.
func specKey(r types.Report, s types.SpecReport) string {
	return suiteName(r) + "\x00" + s.LeafNodeLocation.String() + "\x00" + s.FullText()
}
