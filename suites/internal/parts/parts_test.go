package parts

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/onsi/ginkgo/v2/types"
)

func it(line int, text string, state types.SpecState, d time.Duration, labels ...string) types.SpecReport {
	return types.SpecReport{
		LeafNodeType: types.NodeTypeIt, LeafNodeText: text, LeafNodeLabels: labels,
		LeafNodeLocation:        types.CodeLocation{FileName: "netpol_suite_test.go", LineNumber: line},
		ContainerHierarchyTexts: []string{"matrix"}, ContainerHierarchyLabels: [][]string{{"Serial"}},
		State: state, RunTime: d, NumAttempts: 1,
	}
}

func suite(specs ...types.SpecReport) types.Report {
	return types.Report{SuitePath: "/r/suites/netpol", SuiteDescription: "netpol", SpecReports: specs}
}

// A dry run as make e2e lists it: every It "passed" unless a filter left it out.
func dryRun() types.Report {
	p := types.SpecStatePassed
	return suite(
		it(1, "np-a", p, 0, "networkpolicy", "family:networkpolicy"),
		it(2, "np-b", p, 0, "networkpolicy", "family:networkpolicy"),
		it(3, "np-c", p, 0, "networkpolicy", "family:networkpolicy"),
		it(4, "cnp-endport", p, 0, "endport", "cilium", "family:endport"),
		it(5, "random-7-000", p, 0, "random", "family:random"),
		it(6, "random-7-001", p, 0, "random", "family:random"),
		it(7, "update-np", p, 0, "update", "family:update"),
		it(8, "flow validation", p, 0, "flatnet"),           // no family: the rest
		it(9, "restarts a node", p, 0, "disruptive"),        // another phase
		it(10, "bench", types.SpecStateSkipped, 0, "bench"), // left out by the dry run's filter
	)
}

// The last run: random cases are slow, under other seeds' names.
func lastRun() []types.Report {
	p := types.SpecStatePassed
	r := suite(
		types.SpecReport{LeafNodeType: types.NodeTypeBeforeSuite, RunTime: 20 * time.Second, State: p},
		it(1, "np-a", p, 5*time.Second, "networkpolicy", "family:networkpolicy"),
		it(2, "np-b", p, 7*time.Second, "networkpolicy", "family:networkpolicy"),
		it(5, "random-3-000", p, 60*time.Second, "random", "family:random"),
		it(7, "update-np", p, 30*time.Second, "update", "family:update"),
		it(8, "flow validation", p, 4*time.Second, "flatnet"),
		// Of the other phase: it weighs on no estimate of this one.
		it(9, "restarts a node", p, 300*time.Second, "disruptive"),
		types.SpecReport{LeafNodeType: types.NodeTypeAfterSuite, RunTime: 10 * time.Second, State: p},
	)
	other := types.Report{SuitePath: "/r/suites/seed", SpecReports: types.SpecReports{it(1, "x", p, time.Hour, "family:random")}}
	return []types.Report{r, other}
}

func TestSplitBalancesFamiliesByTheLastRun(t *testing.T) {
	ps, err := split(t, dryRun(), lastRun(), Options{Key: "family", Parts: 2, Base: "!disruptive && !bench"})
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 2 {
		t.Fatalf("%d parts, want 2", len(ps))
	}
	// random 2x60s alone; the rest: update 30 + networkpolicy 3x6 + endport
	// (the suite's mean, 106s/5) + the unlabelled spec 4, each plus 30s setup.
	if got := strings.Join(ps[0].Families, ","); got != "random" || ps[0].Specs != 2 || ps[0].Estimate != 150*time.Second {
		t.Errorf("part 1: %s, %d specs, %s; want random, 2 specs, 150s", got, ps[0].Specs, ps[0].Estimate)
	}
	if ps[0].Filter != "family: containsAny {random}" {
		t.Errorf("part 1 filter %q", ps[0].Filter)
	}
	if got := strings.Join(ps[1].Families, ","); got != "endport,networkpolicy,update" || ps[1].Specs != 6 || ps[1].Estimate != 103200*time.Millisecond {
		t.Errorf("part 2: %q, %d specs, %s; want the unlabelled, endport, networkpolicy, update, 6 specs and 103.2s", got, ps[1].Specs, ps[1].Estimate)
	}
	if ps[1].Filter != "!(family: containsAny {random})" {
		t.Errorf("the last part %q must be everything the others do not name", ps[1].Filter)
	}
}

func TestSplitNeverMorePartsThanFamiliesWithSpecs(t *testing.T) {
	d := dryRun()
	for i := range d.SpecReports {
		if !strings.HasPrefix(d.SpecReports[i].LeafNodeText, "random") {
			d.SpecReports[i].State = types.SpecStateSkipped // FOCUS=random-7
		}
	}
	ps, err := split(t, d, nil, Options{Key: "family", Parts: 4, Base: "!disruptive"})
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 1 || ps[0].Filter != "" || ps[0].Specs != 2 || ps[0].Estimate != 2*time.Second {
		t.Errorf("got %+v; want one part of the whole suite, 2 specs at a second each without history", ps)
	}

	ps, err = split(t, dryRun(), nil, Options{Key: "family", Parts: 3, Base: "disruptive"})
	if err != nil || len(ps) != 1 || ps[0].Specs != 1 {
		t.Errorf("disruptive phase: %+v, %v; want one part with the one disruptive spec", ps, err)
	}
}

func TestSplitRefusesASpecInTwoFamilies(t *testing.T) {
	d := dryRun()
	d.SpecReports[0].LeafNodeLabels = append(d.SpecReports[0].LeafNodeLabels, "family:update")
	_, err := split(t, d, nil, Options{Key: "family", Parts: 3})
	if err == nil || !strings.Contains(err.Error(), `"matrix np-a" has 2 family: labels`) {
		t.Errorf("got %v, want the spec named with its two family labels", err)
	}
}

func TestSplitRefusesBadOptions(t *testing.T) {
	for _, o := range []Options{{Key: "", Parts: 2}, {Key: "family", Parts: 0}, {Key: "family", Parts: 2, Base: "(("}} {
		if _, err := split(t, dryRun(), nil, o); err == nil {
			t.Errorf("Split accepted %+v", o)
		}
	}
}

// Every spec of the dry run, whatever its phase or selection, runs in exactly
// one part for every number of parts: a later FOCUS finds it somewhere.
func TestEveryPartitionCoversEachSpecOnce(t *testing.T) {
	d := dryRun()
	for n := 1; n <= 6; n++ {
		ps, err := split(t, d, lastRun(), Options{Key: "family", Parts: n, Base: "!disruptive && !bench"})
		if err != nil {
			t.Fatalf("%d parts: %v", n, err)
		}
		for _, s := range d.SpecReports {
			matched := 0
			for _, p := range ps {
				if types.MustParseLabelFilter(p.Filter)(s.Labels()) {
					matched++
				}
			}
			if matched != 1 {
				t.Errorf("%d parts: spec %q in %d parts", n, s.LeafNodeText, matched)
			}
		}
	}
}

// split weighs by the last run's reports, as make e2e does when the machine has them.
func split(t *testing.T, d types.Report, last []types.Report, o Options) ([]Part, error) {
	t.Helper()
	times, err := History(last, "netpol", o)
	if err != nil {
		return nil, err
	}
	return Split(d, times, o)
}

// The committed form keeps what the last run weighed, so a machine without
// one splits the same way: the same parts as from the reports themselves.
func TestCommittedTimesSplitAsTheRunDid(t *testing.T) {
	o := Options{Key: "family", Parts: 2, Base: "!disruptive && !bench"}
	times, err := History(lastRun(), "netpol", o)
	if err != nil {
		t.Fatal(err)
	}
	var buf strings.Builder
	if err := WriteTimes(&buf, times, "a comment"); err != nil {
		t.Fatal(err)
	}
	read, err := ReadTimes(strings.NewReader(buf.String()), "netpol/parts-times.tsv")
	if err != nil {
		t.Fatalf("reading back\n%s: %v", buf.String(), err)
	}
	want, err := Split(dryRun(), times, o)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Split(dryRun(), read, o)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("from the file %d parts, from the run %d\n%s", len(got), len(want), buf.String())
	}
	for i := range want {
		if got[i].Filter != want[i].Filter || got[i].Estimate.Round(time.Second) != want[i].Estimate.Round(time.Second) {
			t.Errorf("part %d: from the file %+v, from the run %+v\n%s", i+1, got[i], want[i], buf.String())
		}
	}
	// The weights, not a second per spec: random (60 s a spec) is alone in a part.
	if !strings.Contains(buf.String(), "random\t60.0\n") || !strings.Contains(buf.String(), "(none)\t4.0\n") {
		t.Errorf("times file lacks random's 60 s or the specs without a family's 4 s:\n%s", buf.String())
	}
}

func TestReadTimesNamesTheBadLine(t *testing.T) {
	for _, bad := range []string{"random 60\n", "random\tsixty\n", "random\t-1\n"} {
		_, err := ReadTimes(strings.NewReader("# ok\nsetup\t3\n"+bad), "x.tsv")
		if err == nil || !strings.Contains(err.Error(), "x.tsv:3:") {
			t.Errorf("%q: error %v, want one naming x.tsv:3", bad, err)
		}
	}
}

// The committed times of the split suite read, and weigh its families
// (a family missing from them weighs their mean: never an error).
func TestCommittedNetpolTimesRead(t *testing.T) {
	f, err := os.Open("../../netpol/parts-times.tsv")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	times, err := ReadTimes(f, f.Name())
	if err != nil {
		t.Fatal(err)
	}
	if times.Setup <= 0 || times.PerSpec["*"] <= 0 || len(times.PerSpec) < 5 {
		t.Errorf("%s: setup %s, mean %s, %d groups; regenerate it with e2e times", f.Name(), times.Setup, times.PerSpec["*"], len(times.PerSpec))
	}
}
