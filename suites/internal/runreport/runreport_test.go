package runreport

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/onsi/ginkgo/v2/reporters"
	"github.com/onsi/ginkgo/v2/types"
)

func spec(file string, line int, text string, state types.SpecState, d time.Duration, labels ...string) types.SpecReport {
	attempts := 1 // a spec skipped by a filter never starts
	if state == types.SpecStateSkipped {
		attempts = 0
	}
	return types.SpecReport{
		NumAttempts:  attempts,
		LeafNodeType: types.NodeTypeIt, LeafNodeText: text, LeafNodeLabels: labels,
		LeafNodeLocation:        types.CodeLocation{FileName: file, LineNumber: line},
		ContainerHierarchyTexts: []string{"suite"},
		State:                   state, RunTime: d,
	}
}

func suiteNode(t types.NodeType, d time.Duration) types.SpecReport {
	return types.SpecReport{LeafNodeType: t, State: types.SpecStatePassed, RunTime: d}
}

// Two runs of hubble (the concurrent one, the disruptive one) and one of netpol.
func runs() []types.Report {
	t0 := time.Date(2026, 12, 6, 11, 0, 0, 0, time.UTC)
	hubbleA := types.Report{
		SuitePath: "/r/suites/hubble", SuiteDescription: "hubble", SuiteSucceeded: true,
		StartTime: t0, EndTime: t0.Add(40 * time.Second), RunTime: 40 * time.Second,
		PreRunStats: types.PreRunStats{TotalSpecs: 3, SpecsThatWillRun: 2},
		SpecReports: types.SpecReports{
			suiteNode(types.NodeTypeBeforeSuite, 5*time.Second),
			spec("/r/suites/hubble/a_test.go", 10, "observes", types.SpecStatePassed, 20*time.Second),
			spec("/r/suites/hubble/a_test.go", 20, "stops an agent", types.SpecStateSkipped, 0, "disruptive"),
			spec("/r/suites/hubble/a_test.go", 30, "filters", types.SpecStatePassed, 10*time.Second),
		},
	}
	netpol := types.Report{
		SuitePath: "/r/suites/netpol", SuiteDescription: "netpol", SuiteSucceeded: false,
		StartTime: t0, EndTime: t0.Add(90 * time.Second), RunTime: 90 * time.Second,
		SpecReports: types.SpecReports{
			spec("/r/suites/netpol/n_test.go", 5, "matrix", types.SpecStateFailed, 80*time.Second),
		},
	}
	hubbleB := types.Report{
		SuitePath: "/r/suites/hubble", SuiteDescription: "hubble", SuiteSucceeded: true,
		StartTime: t0.Add(100 * time.Second), EndTime: t0.Add(130 * time.Second), RunTime: 30 * time.Second,
		PreRunStats: types.PreRunStats{TotalSpecs: 3, SpecsThatWillRun: 1},
		SpecReports: types.SpecReports{
			suiteNode(types.NodeTypeBeforeSuite, 6*time.Second),
			spec("/r/suites/hubble/a_test.go", 10, "observes", types.SpecStateSkipped, 0),
			spec("/r/suites/hubble/a_test.go", 20, "stops an agent", types.SpecStatePassed, 25*time.Second, "disruptive"),
			spec("/r/suites/hubble/a_test.go", 30, "filters", types.SpecStateSkipped, 0),
		},
	}
	return []types.Report{hubbleA, netpol, hubbleB}
}

func TestMergeKeepsTheRunEachSpecRanIn(t *testing.T) {
	merged := Merge(runs())
	if len(merged) != 2 || suiteName(merged[0]) != "hubble" || suiteName(merged[1]) != "netpol" {
		t.Fatalf("want hubble then netpol, got %d suites", len(merged))
	}
	h := merged[0]
	if c := Count(h); c != (Counts{Specs: 3, Passed: 3}) {
		t.Errorf("hubble counts %+v, want 3 specs passed (each from the run it ran in)", c)
	}
	if n := len(h.SpecReports.WithLeafNodeType(types.NodeTypeBeforeSuite)); n != 2 {
		t.Errorf("%d BeforeSuite reports, want both runs'", n)
	}
	if h.RunTime != 70*time.Second || h.PreRunStats.SpecsThatWillRun != 3 {
		t.Errorf("run time %s, specs that will run %d; want 70s (40+30) and 3", h.RunTime, h.PreRunStats.SpecsThatWillRun)
	}
	if c := Count(merged[1]); c != (Counts{Specs: 1, Failed: 1}) || !Failed(merged) {
		t.Errorf("netpol counts %+v, Failed %v: want its failure kept", c, Failed(merged))
	}
}

func TestWriteOneJUnitAndReport(t *testing.T) {
	dir := t.TempDir()
	if err := Write(dir, Merge(runs())); err != nil {
		t.Fatal(err)
	}
	var ju reporters.JUnitTestSuites
	data, err := os.ReadFile(filepath.Join(dir, "junit.xml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := xml.Unmarshal(data, &ju); err != nil {
		t.Fatalf("junit.xml: %v", err)
	}
	if len(ju.TestSuites) != 2 || ju.Failures != 1 {
		t.Errorf("junit.xml has %d suites and %d failures, want 2 and 1", len(ju.TestSuites), ju.Failures)
	}
	left, _ := filepath.Glob(filepath.Join(dir, ".junit-*"))
	if len(left) != 0 {
		t.Errorf("per-suite parts left behind: %v", left)
	}
	var back []types.Report
	data, err = os.ReadFile(filepath.Join(dir, "report.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &back); err != nil || len(back) != 2 {
		t.Fatalf("report.json: %d suites, %v", len(back), err)
	}
	got, err := Read(filepath.Join(dir, "report.json"))
	if err != nil || len(got) != 2 {
		t.Fatalf("Read of the written report: %d suites, %v", len(got), err)
	}
}

func TestSummarizeAndList(t *testing.T) {
	merged := Merge(runs())
	var b bytes.Buffer
	Summarize(&b, merged, 2)
	out := b.String()
	for _, want := range []string{"suite", "hubble", "netpol", "slowest:", "80.0s  netpol         suite matrix", "25.0s  hubble         suite stops an agent"} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "20.0s") {
		t.Errorf("summary lists more than the 2 slowest:\n%s", out)
	}

	b.Reset()
	run, total := List(&b, runs()[:1]) // a dry run: the specs that would run are "passed"
	if run != 2 || total != 3 {
		t.Errorf("List: %d of %d selected, want 2 of 3", run, total)
	}
	if !strings.Contains(b.String(), "hubble  skip  suite stops an agent  [disruptive]") {
		t.Errorf("listing lacks the filtered-out spec with its label:\n%s", b.String())
	}
}

// listing is the dry runs of the same suites: every It "passed" when the
// filters select it.
func listing() []types.Report {
	var out []types.Report
	for _, r := range Merge(runs()) {
		r.SpecReports = slices.Clone(r.SpecReports)
		for i := range r.SpecReports {
			r.SpecReports[i].State, r.SpecReports[i].NumAttempts = types.SpecStatePassed, 0
		}
		out = append(out, r)
	}
	return out
}

func TestAccountEachSelectedSpecRanOnce(t *testing.T) {
	a := Account(listing(), runs())
	if !a.OK() || a.Listed != 4 || a.Selected != 4 || a.RanOnce != 4 {
		t.Errorf("got %+v, want 4 specs listed, selected and run once", a)
	}

	// A part that never started, and a part run twice.
	partial := runs()[:2]
	a = Account(listing(), partial)
	if a.OK() || len(a.NotRun) != 1 || !strings.Contains(a.NotRun[0], "stops an agent") {
		t.Errorf("without the disruptive run: %+v, want its spec not run", a)
	}
	twice := append(runs(), runs()[2])
	a = Account(listing(), twice)
	if a.OK() || len(a.Twice) != 1 || !strings.Contains(a.Twice[0], "stops an agent (2 times)") {
		t.Errorf("with the disruptive run twice: %+v, want its spec counted twice", a)
	}

	// A spec the filters leave out (FOCUS) that ran anyway.
	l := listing()
	l[0].SpecReports[1].State = types.SpecStateSkipped
	a = Account(l, runs())
	if a.OK() || a.Selected != 3 || len(a.Unselected) != 1 {
		t.Errorf("with hubble's first spec unselected: %+v, want it reported as run unselected", a)
	}
	var b bytes.Buffer
	a.Print(&b)
	if !strings.Contains(b.String(), "specs: 4 listed, 3 selected by the filters: 3 ran once, 0 more than once, 0 not run, 1 ran unselected") {
		t.Errorf("accounting line:\n%s", b.String())
	}
}

func TestFailuresNameSpecMessageAndPlace(t *testing.T) {
	reports := runs()
	failed := &reports[1].SpecReports[0]
	failed.Failure = types.Failure{
		Message:  "reachability differs from the oracle\n  x/a -> y/b: want X, got .",
		Location: types.CodeLocation{FileName: "/r/suites/netpol/steps_test.go", LineNumber: 42},
	}
	reports[1].SpecialSuiteFailureReasons = []string{"Interrupted by User"}
	got := Failures(reports)
	want := []string{
		"netpol: suite matrix [failed]: reachability differs from the oracle x/a -> y/b: want X, got . (steps_test.go:42)",
		"netpol: Interrupted by User",
	}
	if !slices.Equal(got, want) {
		t.Errorf("Failures:\n got %q\nwant %q", got, want)
	}
	if f := Failures(reports[:1]); len(f) != 0 {
		t.Errorf("Failures of a passed suite: %q, want none", f)
	}
}
