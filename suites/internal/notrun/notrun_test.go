package notrun

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/onsi/ginkgo/v2/types"

	"github.com/flatnet/flatnet/suites/report"
	"github.com/flatnet/flatnet/suites/skiplist"
)

func spec(leaf string, labels []string, state types.SpecState, skipMsg string) types.SpecReport {
	return types.SpecReport{
		ContainerHierarchyTexts:  []string{"policy conformance matrix"},
		ContainerHierarchyLabels: [][]string{{"flatnet"}},
		LeafNodeType:             types.NodeTypeIt, LeafNodeText: leaf, LeafNodeLabels: labels,
		State: state, Failure: types.Failure{Message: skipMsg},
	}
}

func TestCasesSayWhyEachSpecWasNotRun(t *testing.T) {
	known := []skiplist.Entry{{Pattern: "cnp-cidr-not-in-cluster", Why: "CIDR rules match cluster addresses in flatnet"}}
	r := types.Report{
		SuiteDescription: "netpol",
		SuiteConfig: types.SuiteConfig{
			SkipStrings: []string{"cnp-cidr-not-in-cluster", "slow-case"},
			LabelFilter: "!bench",
		},
		SpecReports: types.SpecReports{
			spec("baseline: every path open", []string{"baseline"}, types.SpecStatePassed, ""),
			spec("cnp-cidr-not-in-cluster: CIDR over the node subnet", []string{"cidr"}, types.SpecStateSkipped, ""),
			spec("slow-case: something", []string{"update"}, types.SpecStateSkipped, ""),
			spec("9x9 bench", []string{"bench"}, types.SpecStateSkipped, ""),
			spec("SCTP on 80 and 81", []string{"sctp"}, types.SpecStateSkipped, "no SCTP in this kernel"),
			spec("after an interrupt", nil, types.SpecStateSkipped, ""),
			{LeafNodeType: types.NodeTypeBeforeSuite, State: types.SpecStateSkipped},
		},
	}
	recorded := []report.CaseResult{{Name: "sctp", Skipped: "no SCTP in this kernel"}}
	got := map[string]string{}
	for _, c := range Cases(r, known, recorded) {
		got[c.Name] = c.Skipped
		if c.Description == "" || !strings.Contains(c.Family, "flatnet") {
			t.Errorf("%s: description %q, family %q: want the full text and the labels", c.Name, c.Description, c.Family)
		}
	}
	want := map[string]string{
		"cnp-cidr-not-in-cluster: CIDR over the node subnet": "known divergence (suites/known-divergences; STRICT=1 runs it): CIDR rules match cluster addresses in flatnet",
		"slow-case: something":                               `skipped by --skip "slow-case"`,
		"9x9 bench":                                          `not selected by --label-filter "!bench" (its labels: flatnet, bench)`,
		"after an interrupt":                                 "not run: the run was interrupted, or a setup it depends on failed",
	}
	if len(got) != len(want) {
		t.Errorf("cases %v, want %v", got, want)
	}
	for name, why := range want {
		if got[name] != why {
			t.Errorf("%s: %q, want %q", name, got[name], why)
		}
	}
	r.SuiteConfig = types.SuiteConfig{FocusStrings: []string{"baseline"}}
	if why := Reason(r, r.SpecReports[2], known); why != `not matched by --focus "baseline"` {
		t.Errorf("focus: %q", why)
	}
}

func TestAddAppendsToTheReport(t *testing.T) {
	p := filepath.Join(t.TempDir(), "known")
	os.WriteFile(p, []byte("cidr\tbecause\n"), 0o644)
	r := &report.Report{Cases: []report.CaseResult{{Name: "ran"}}}
	g := types.Report{SuiteConfig: types.SuiteConfig{SkipStrings: []string{"cidr"}},
		SpecReports: types.SpecReports{spec("a cidr case", nil, types.SpecStateSkipped, "")}}
	n, err := Add(r, g, p)
	if err != nil || n != 1 || len(r.Cases) != 2 || !strings.HasSuffix(r.Cases[1].Skipped, "because") {
		t.Errorf("Add = %d, %v; cases %+v", n, err, r.Cases)
	}
	if _, err := Add(r, g, filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("a missing divergences file was accepted")
	}
}
