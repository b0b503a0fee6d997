package report

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/flatnet/flatnet/suites/internal/junit"
	"github.com/flatnet/flatnet/suites/reachability"
)

// Report is a whole suite run.
type Report struct {
	Title   string
	Started time.Time
	// Notes are printed at the top: the cluster, the image, the random seed
	// (so a failure can be replayed), anything a reader needs.
	Notes []string
	Cases []CaseResult
}

// CaseResult is one policy case.
type CaseResult struct {
	Name        string
	Family      string
	Description string
	Steps       []StepResult
	// Skipped, when set, is why the case did not run (e.g. no SCTP in this
	// kernel).
	Skipped string
	// Error, when set, is what broke the case before its probes could be
	// judged (setup failed): reported as an error, not a mismatch.
	Error string
	// Problems are failures the tables do not show, e.g. an open path seen
	// blocked while a policy change was being applied; any fails the case.
	Problems []string
}

// StepResult is one step of a case: its policies and what was observed.
type StepResult struct {
	Name        string
	Duration    time.Duration
	Policies    []string // the policies in force
	Manifest    string   // the YAML applied, for the HTML report
	Comparisons []*reachability.Comparison
}

// Duration is the case's total time.
func (c CaseResult) Duration() time.Duration {
	var d time.Duration
	for _, s := range c.Steps {
		d += s.Duration
	}
	return d
}

// Failed says whether any probe of the case mismatched or was missing, or
// the case found another problem.
func (c CaseResult) Failed() bool {
	if len(c.Problems) > 0 {
		return true
	}
	for _, s := range c.Steps {
		for _, cmp := range s.Comparisons {
			if !cmp.OK() {
				return true
			}
		}
	}
	return false
}

func seconds(d time.Duration) string { return fmt.Sprintf("%.3f", d.Seconds()) }

// WriteJUnit writes the report as JUnit XML: one testsuite per family, one
// testcase per policy case. A case with mismatches fails with the grids and
// the mismatch list as its text.
func WriteJUnit(w io.Writer, r *Report) error {
	out := junit.TestSuites{Name: r.Title}
	var total time.Duration
	index := map[string]int{}
	for _, c := range r.Cases {
		i, ok := index[c.Family]
		if !ok {
			i = len(out.Suites)
			index[c.Family] = i
			s := junit.TestSuite{Name: c.Family}
			if !r.Started.IsZero() {
				s.Timestamp = r.Started.UTC().Format(time.RFC3339)
			}
			if len(r.Notes) > 0 {
				s.Props = &junit.Properties{}
				for n, note := range r.Notes {
					s.Props.Props = append(s.Props.Props, junit.Property{Name: fmt.Sprintf("note.%d", n), Value: note})
				}
			}
			out.Suites = append(out.Suites, s)
		}
		tc, err := junitCase(c)
		if err != nil {
			return err
		}
		s := &out.Suites[i]
		s.Cases = append(s.Cases, tc)
		s.Tests++
		switch {
		case tc.Skipped != nil:
			s.Skipped++
		case tc.Error != nil:
			s.Errors++
		case tc.Failure != nil:
			s.Failures++
		}
		total += c.Duration()
	}
	for i := range out.Suites {
		s := &out.Suites[i]
		var d time.Duration
		for _, c := range r.Cases {
			if c.Family == s.Name {
				d += c.Duration()
			}
		}
		s.Time = seconds(d)
		out.Tests += s.Tests
		out.Failures += s.Failures
		out.Errors += s.Errors
		out.Skipped += s.Skipped
	}
	out.Time = seconds(total)
	return junit.Write(w, out)
}

func junitCase(c CaseResult) (junit.TestCase, error) {
	tc := junit.TestCase{Name: c.Name, Classname: "flatnet.policy." + c.Family, Time: seconds(c.Duration())}
	var text strings.Builder
	if c.Description != "" {
		text.WriteString(c.Description + "\n\n")
	}
	var failed []string
	for _, s := range c.Steps {
		fmt.Fprintf(&text, "== step %q (%s), policies: %s\n", s.Name, s.Duration.Round(time.Millisecond), strings.Join(s.Policies, ", "))
		for _, cmp := range s.Comparisons {
			if err := WriteComparison(&text, cmp); err != nil {
				return junit.TestCase{}, err
			}
			if !cmp.OK() {
				failed = append(failed, fmt.Sprintf("step %q: %s", s.Name, cmp.Summary()))
			}
		}
	}
	failed = append(failed, c.Problems...)
	for _, p := range c.Problems {
		text.WriteString(p + "\n")
	}
	switch {
	case c.Skipped != "":
		tc.Skipped = &junit.Skipped{Message: c.Skipped}
	case c.Error != "":
		tc.Error = &junit.Problem{Message: c.Error, Type: "setup", Text: text.String()}
	case len(failed) > 0:
		tc.Failure = &junit.Problem{Message: strings.Join(failed, "; "), Type: "mismatch", Text: text.String()}
	default:
		tc.SystemOut = text.String()
	}
	return tc, nil
}
