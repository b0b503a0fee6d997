package parts

import (
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
	ps, err := Split(dryRun(), lastRun(), Options{Key: "family", Parts: 2, Base: "!disruptive && !bench"})
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
	ps, err := Split(d, nil, Options{Key: "family", Parts: 4, Base: "!disruptive"})
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 1 || ps[0].Filter != "" || ps[0].Specs != 2 || ps[0].Estimate != 2*time.Second {
		t.Errorf("got %+v; want one part of the whole suite, 2 specs at a second each without history", ps)
	}

	ps, err = Split(dryRun(), nil, Options{Key: "family", Parts: 3, Base: "disruptive"})
	if err != nil || len(ps) != 1 || ps[0].Specs != 1 {
		t.Errorf("disruptive phase: %+v, %v; want one part with the one disruptive spec", ps, err)
	}
}

func TestSplitRefusesASpecInTwoFamilies(t *testing.T) {
	d := dryRun()
	d.SpecReports[0].LeafNodeLabels = append(d.SpecReports[0].LeafNodeLabels, "family:update")
	_, err := Split(d, nil, Options{Key: "family", Parts: 3})
	if err == nil || !strings.Contains(err.Error(), `"matrix np-a" has 2 family: labels`) {
		t.Errorf("got %v, want the spec named with its two family labels", err)
	}
}

func TestSplitRefusesBadOptions(t *testing.T) {
	for _, o := range []Options{{Key: "", Parts: 2}, {Key: "family", Parts: 0}, {Key: "family", Parts: 2, Base: "(("}} {
		if _, err := Split(dryRun(), nil, o); err == nil {
			t.Errorf("Split accepted %+v", o)
		}
	}
}

// Every spec of the dry run, whatever its phase or selection, runs in exactly
// one part for every number of parts: a later FOCUS finds it somewhere.
func TestEveryPartitionCoversEachSpecOnce(t *testing.T) {
	d := dryRun()
	for n := 1; n <= 6; n++ {
		ps, err := Split(d, lastRun(), Options{Key: "family", Parts: n, Base: "!disruptive && !bench"})
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
