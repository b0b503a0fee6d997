// Package parts splits one suite's specs into parts that `make e2e` runs as
// separate processes side by side, as it runs suites: by the value of a label
// set key each spec carries once (netpol's `family:<name>`), balanced by the
// time each family took in the last run. Each part is a Ginkgo label filter;
// together they select every spec exactly once, which Split checks on the
// suite's dry-run report before any part starts.
package parts

import (
	"cmp"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/onsi/ginkgo/v2/types"
)

// Part is one process's share of a suite.
type Part struct {
	// Filter is the part's Ginkgo label filter, "" for the whole suite.
	Filter string
	// Families are the key's values the part runs; the last part also
	// runs every spec the others do not name (specs without the key, values
	// no spec selected by the run's filters carries).
	Families []string
	// Specs counts the specs the part will run (selected by the run's
	// filters), Estimate their time by the last run plus the suite's setup.
	Specs    int
	Estimate time.Duration
}

// Options say how to split.
type Options struct {
	// Key is the label set key whose value groups specs ("family").
	Key string
	// Parts is how many parts at most; fewer when fewer groups have specs
	// to run.
	Parts int
	// Base is the label filter of the phase the parts belong to (e.g.
	// "!disruptive && !bench"); specs outside it are not counted.
	Base string
}

// Split divides the Its of dry-run, one suite's Ginkgo dry-run report (every
// spec, "passed" when the run's filters select it), into at most opts.Parts
// parts. times (History of the last run: specs are matched by their key's
// value, so renamed or random specs still count; or a suite's committed
// ReadTimes) gives each group's time per spec; a group it lacks weighs its
// mean, and without any every spec weighs a second. Groups go to
// the least loaded part, heaviest first; the lightest part takes every value
// the others do not name (and specs without the key), so a spec is never left
// out: Split fails if a spec of the report would run in no part or in two.
func Split(dryRun types.Report, times Times, opts Options) ([]Part, error) {
	if opts.Key == "" || opts.Parts < 1 {
		return nil, fmt.Errorf("splitting suite %s: want a label key and 1 or more parts, got key %q and %d parts", dryRun.SuiteDescription, opts.Key, opts.Parts)
	}
	base, err := types.ParseLabelFilter(opts.Base)
	if err != nil {
		return nil, fmt.Errorf("splitting suite %s: the phase's label filter %q: %w", dryRun.SuiteDescription, opts.Base, err)
	}
	its := dryRun.SpecReports.WithLeafNodeType(types.NodeTypeIt)
	perSpec, overhead := times.PerSpec, times.Setup
	load := map[string]time.Duration{} // per group, of the specs that will run
	count := map[string]int{}
	var groups []string
	for _, s := range its {
		g, err := group(s, opts.Key)
		if err != nil {
			return nil, err
		}
		if !slices.Contains(groups, g) {
			groups = append(groups, g)
		}
		if s.State != types.SpecStatePassed || !base(s.Labels()) {
			continue // a dry run reports the specs its filters leave out as skipped
		}
		count[g]++
		load[g] += cmp.Or(perSpec[g], perSpec["*"], time.Second)
	}
	// Specs without the key can only be named as "none of the others": they
	// go to the part that ends lightest, which becomes the last.
	var busy []string
	for _, g := range groups {
		if count[g] > 0 && g != "" {
			busy = append(busy, g)
		}
	}
	slices.SortFunc(busy, func(a, b string) int { return cmp.Or(cmp.Compare(load[b], load[a]), cmp.Compare(a, b)) })
	n := max(1, min(opts.Parts, len(busy)))
	parts := make([]Part, n)
	lightest := func() int {
		i := 0
		for j := range parts {
			if parts[j].Estimate < parts[i].Estimate {
				i = j
			}
		}
		return i
	}
	for _, g := range busy {
		i := lightest()
		parts[i].Families = append(parts[i].Families, g)
		parts[i].Specs += count[g]
		parts[i].Estimate += load[g]
	}
	rest := lightest()
	parts[rest].Specs += count[""]
	parts[rest].Estimate += load[""]
	restPart := parts[rest]
	parts = append(slices.Delete(parts, rest, rest+1), restPart)
	slices.SortStableFunc(parts[:n-1], func(a, b Part) int { return cmp.Compare(b.Estimate, a.Estimate) })
	if n > 1 {
		var named []string
		for i := range parts[:n-1] {
			parts[i].Filter = anyOf(opts.Key, parts[i].Families)
			named = append(named, parts[i].Families...)
		}
		parts[n-1].Filter = "!(" + anyOf(opts.Key, named) + ")"
	}
	for i := range parts {
		parts[i].Estimate += overhead
		slices.Sort(parts[i].Families)
	}
	return parts, check(its, parts)
}

// group is the value of key a spec carries ("" for none); two values would
// put it in two parts.
func group(s types.SpecReport, key string) (string, error) {
	var values []string
	for _, l := range s.Labels() {
		k, v, ok := strings.Cut(l, ":")
		if ok && strings.EqualFold(strings.TrimSpace(k), key) {
			values = append(values, strings.ToLower(strings.TrimSpace(v)))
		}
	}
	switch len(values) {
	case 0:
		return "", nil
	case 1:
		return values[0], nil
	}
	return "", fmt.Errorf("spec %q has %d %s: labels (%s); give it one so it runs in one part", s.FullText(), len(values), key, strings.Join(values, ", "))
}

// anyOf is the label filter selecting the specs whose key is one of values.
func anyOf(key string, values []string) string {
	values = slices.Sorted(slices.Values(values))
	return fmt.Sprintf("%s: containsAny {%s}", key, strings.Join(values, ", "))
}

// Times are a suite's mean time per spec of each group (the key's value;
// "*" all groups, "" the specs without the key) and its mean setup and
// teardown per process: what Split weighs the groups by.
type Times struct {
	PerSpec map[string]time.Duration
	Setup   time.Duration
}

// Empty says whether t weighs nothing (no run gave times).
func (t Times) Empty() bool { return len(t.PerSpec) == 0 }

// History is, from the last run's reports of the suite (by its directory),
// the Times of the phase's specs (its label filter, opts.Base): a suite
// without the key is one group, and its 90 s disruptive spec must not weigh
// on each of its short side-by-side ones.
func History(last []types.Report, suite string, opts Options) (Times, error) {
	base, err := types.ParseLabelFilter(opts.Base)
	if err != nil {
		return Times{}, fmt.Errorf("weighing suite %s: the phase's label filter %q: %w", suite, opts.Base, err)
	}
	sum := map[string]time.Duration{}
	n := map[string]int{}
	var setup time.Duration
	processes := 0
	for _, r := range last {
		if filepath.Base(r.SuitePath) != suite {
			continue
		}
		for _, s := range r.SpecReports {
			switch {
			case s.LeafNodeType.Is(types.NodeTypeBeforeSuite):
				processes++
				setup += s.RunTime
			case s.LeafNodeType.Is(types.NodeTypeAfterSuite):
				setup += s.RunTime
			case s.LeafNodeType == types.NodeTypeIt && s.NumAttempts > 0 && base(s.Labels()):
				g, err := group(s, opts.Key)
				if err != nil {
					continue
				}
				for _, k := range []string{g, "*"} {
					sum[k] += s.RunTime
					n[k]++
				}
			}
		}
	}
	t := Times{PerSpec: map[string]time.Duration{}}
	for k, d := range sum {
		t.PerSpec[k] = d / time.Duration(n[k])
	}
	if processes > 0 {
		t.Setup = setup / time.Duration(processes)
	}
	return t, nil
}

// check holds the parts to their promise: every It of the dry run (selected
// or not: a later FOCUS must find it somewhere) matched by exactly one part.
func check(its types.SpecReports, parts []Part) error {
	filters := make([]types.LabelFilter, len(parts))
	for i, p := range parts {
		f, err := types.ParseLabelFilter(p.Filter)
		if err != nil {
			return fmt.Errorf("part %d's label filter %q: %w", i+1, p.Filter, err)
		}
		filters[i] = f
	}
	for _, s := range its {
		var in []int
		for i, f := range filters {
			if f(s.Labels()) {
				in = append(in, i+1)
			}
		}
		if len(in) != 1 {
			return fmt.Errorf("spec %q (labels %s) would run in parts %v: every spec must run in exactly one", s.FullText(), strings.Join(s.Labels(), ","), in)
		}
	}
	return nil
}
