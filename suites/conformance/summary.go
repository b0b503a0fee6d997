// Package conformance turns a run of Kubernetes' own e2e suite (make
// k8s-conformance) into what people and CI read: the specs the focus
// selected, with why each skipped one was skipped (from the skip list), as
// JUnit and as a one-line-per-spec summary; and it reads the image names
// those specs run from the e2e framework's manifest, so the images built
// offline carry exactly those names.
package conformance

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/flatnet/flatnet/suites/internal/junit"
	"github.com/flatnet/flatnet/suites/skiplist"
)

// ginkgoReport is the part of a Ginkgo JSON report (--json-report) the
// summary reads. Its own types are not used: e2e.test is built with the
// Ginkgo of the Kubernetes release under test, which need not be flatnet's.
type ginkgoReport struct {
	SpecReports []struct {
		ContainerHierarchyTexts []string
		LeafNodeType            string
		LeafNodeText            string
		State                   string
		RunTime                 int64 // nanoseconds
		Failure                 struct {
			Message  string
			Location struct {
				FileName   string
				LineNumber int
			}
		}
	}
}

// Spec is one spec the focus selected, as the summary and the JUnit show it.
type Spec struct {
	Name    string  `json:"name"`
	State   string  `json:"state"`
	Seconds float64 `json:"secs"`
	// Message and At are the failure's message and file:line.
	Message string `json:"msg"`
	At      string `json:"at"`
	// Why a skipped spec was skipped: the skip list's reason, else its own
	// Skip message.
	Why string `json:"why"`
}

// Passed says the spec passed. A spec neither passed nor skipped (failed,
// panicked, timed out, interrupted, aborted) failed.
func (s Spec) Passed() bool { return s.State == "passed" }

// Skipped says the spec did not run.
func (s Spec) Skipped() bool { return s.State == "skipped" }

// Specs reads a Ginkgo JSON report and returns its It specs whose full text
// matches focus, sorted by text: the report lists every spec of the suite,
// the run selected only these.
func Specs(r io.Reader, focus string, skips []skiplist.Entry) ([]Spec, error) {
	re, err := regexp.Compile(focus)
	if err != nil {
		return nil, fmt.Errorf("focus %q: %w", focus, err)
	}
	var reports []ginkgoReport
	if err := json.NewDecoder(r).Decode(&reports); err != nil {
		return nil, fmt.Errorf("reading the ginkgo JSON report: %w", err)
	}
	var out []Spec
	for _, rep := range reports {
		for _, sr := range rep.SpecReports {
			if sr.LeafNodeType != "It" {
				continue
			}
			s := Spec{
				Name:    strings.Join(append(slices.Clone(sr.ContainerHierarchyTexts), sr.LeafNodeText), " "),
				State:   sr.State,
				Seconds: float64(sr.RunTime) / 1e9,
				Message: sr.Failure.Message,
			}
			if !re.MatchString(s.Name) {
				continue
			}
			if l := sr.Failure.Location; l.FileName != "" {
				s.At = fmt.Sprintf("%s:%d", l.FileName, l.LineNumber)
			}
			if s.Skipped() {
				if why, ok := skiplist.Why(skips, s.Name); ok {
					s.Why = why
				} else {
					s.Why = s.Message
				}
			}
			out = append(out, s)
		}
	}
	slices.SortStableFunc(out, func(a, b Spec) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// ReadSpecs is Specs of the report file at path.
func ReadSpecs(path, focus string, skips []skiplist.Entry) ([]Spec, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading the ginkgo JSON report: %w", err)
	}
	defer f.Close()
	return Specs(f, focus, skips)
}

// Counts are how many specs passed, failed and were skipped.
type Counts struct{ Passed, Failed, Skipped int }

// Count counts specs by outcome.
func Count(specs []Spec) Counts {
	var c Counts
	for _, s := range specs {
		switch {
		case s.Passed():
			c.Passed++
		case s.Skipped():
			c.Skipped++
		default:
			c.Failed++
		}
	}
	return c
}

// WriteSummary prints one line per spec (PASS, SKIP with why, FAIL with
// its state and place), then the counts.
func WriteSummary(w io.Writer, specs []Spec) error {
	var b strings.Builder
	b.WriteString("\n")
	for _, s := range specs {
		switch {
		case s.Passed():
			fmt.Fprintf(&b, "  PASS %s\n", s.Name)
		case s.Skipped():
			fmt.Fprintf(&b, "  SKIP %s\n         (%s)\n", s.Name, s.Why)
		default:
			fmt.Fprintf(&b, "  FAIL %s\n         %s at %s\n", s.Name, s.State, s.At)
		}
	}
	c := Count(specs)
	fmt.Fprintf(&b, "\n  %d specs: %d passed, %d failed, %d skipped\n", len(specs), c.Passed, c.Failed, c.Skipped)
	_, err := io.WriteString(w, b.String())
	return err
}

// junitFailed are the states JUnit counts as failures.
var junitFailed = []string{"failed", "panicked", "timedout", "interrupted", "aborted"}

func seconds(s float64) string { return strconv.FormatFloat(s, 'f', -1, 64) }

// WriteJUnit writes the specs as one JUnit test suite named after the focus.
func WriteJUnit(w io.Writer, focus string, specs []Spec) error {
	const classname = "Kubernetes e2e suite"
	suite := junit.TestSuite{Name: classname + ": " + focus, Tests: len(specs)}
	var total float64
	for _, s := range specs {
		total += s.Seconds
		c := junit.TestCase{Name: s.Name, Classname: classname, Time: seconds(s.Seconds)}
		switch {
		case s.Passed():
		case s.Skipped():
			suite.Skipped++
			c.Skipped = &junit.Skipped{Message: s.Why}
		default:
			if slices.Contains(junitFailed, s.State) {
				suite.Failures++
			}
			c.Failure = &junit.Problem{Message: s.State + " at " + s.At, Type: s.State, Text: s.Message}
		}
		suite.Cases = append(suite.Cases, c)
	}
	suite.Time = seconds(total)
	return junit.Write(w, junit.TestSuites{Tests: suite.Tests, Failures: suite.Failures, Skipped: suite.Skipped, Time: suite.Time, Suites: []junit.TestSuite{suite}})
}
