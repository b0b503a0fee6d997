// Package notrun says which specs of a run were not run, and why, so a
// suite's report lists them beside those that passed or failed: a known
// divergence (suites/known-divergences, which make e2e skips unless
// STRICT=1), a label filter, a --focus or --skip given by hand, the spec's
// own Skip, or an interrupted run.
package notrun

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/onsi/ginkgo/v2/types"

	"github.com/flatnet/flatnet/suites/report"
	"github.com/flatnet/flatnet/suites/skiplist"
)

// Cases lists the specs of r that did not run as report cases with
// Skipped set to why. A spec that skipped itself and already recorded a
// case with that reason (in recorded) is not listed twice.
func Cases(r types.Report, known []skiplist.Entry, recorded []report.CaseResult) []report.CaseResult {
	var out []report.CaseResult
	for _, s := range r.SpecReports {
		if s.LeafNodeType != types.NodeTypeIt || s.State != types.SpecStateSkipped {
			continue
		}
		why := Reason(r, s, known)
		if slices.ContainsFunc(recorded, func(c report.CaseResult) bool { return c.Skipped == why }) {
			continue
		}
		out = append(out, report.CaseResult{
			Name:        s.LeafNodeText,
			Family:      strings.Join(s.Labels(), ", "),
			Description: s.FullText(),
			Skipped:     why,
		})
	}
	return out
}

// Reason says why spec s of r was skipped, judging it as Ginkgo's filters
// did (the suite description, a space, the spec's texts).
func Reason(r types.Report, s types.SpecReport, known []skiplist.Entry) string {
	if s.Failure.Message != "" {
		return s.Failure.Message // its own Skip
	}
	cfg := r.SuiteConfig
	text := r.SuiteDescription + " " + s.FullText()
	var whys []string
	for _, skip := range cfg.SkipStrings {
		re, err := regexp.Compile(skip)
		if err != nil || !re.MatchString(text) {
			continue
		}
		i := slices.IndexFunc(known, func(d skiplist.Entry) bool { return d.Pattern == skip })
		if i >= 0 {
			whys = append(whys, "known divergence (suites/known-divergences; STRICT=1 runs it): "+known[i].Why)
		} else {
			whys = append(whys, fmt.Sprintf("skipped by --skip %q", skip))
		}
	}
	if len(cfg.FocusStrings) > 0 {
		focus := regexp.MustCompile(strings.Join(cfg.FocusStrings, "|"))
		if !focus.MatchString(text) {
			whys = append(whys, fmt.Sprintf("not matched by --focus %q", strings.Join(cfg.FocusStrings, "|")))
		}
	}
	if cfg.LabelFilter != "" {
		if match, err := types.ParseLabelFilter(cfg.LabelFilter); err == nil && !match(append(r.SuiteLabels, s.Labels()...)) {
			whys = append(whys, fmt.Sprintf("not selected by --label-filter %q (its labels: %s)", cfg.LabelFilter, strings.Join(s.Labels(), ", ")))
		}
	}
	if len(whys) == 0 {
		return "not run: the run was interrupted, or a setup it depends on failed"
	}
	return strings.Join(whys, "; ")
}

// Add appends to r the specs of g that did not run, with why, reading the
// known divergences from divergencesFile; it returns how many it added.
func Add(r *report.Report, g types.Report, divergencesFile string) (int, error) {
	known, err := skiplist.Read(divergencesFile)
	if err != nil {
		return 0, err
	}
	cases := Cases(g, known, r.Cases)
	r.Cases = append(r.Cases, cases...)
	return len(cases), nil
}
