package report

import (
	"bytes"
	"encoding/xml"
	"strconv"
	"strings"
	"testing"

	"github.com/flatnet/flatnet/fixtures/oracle"
	"github.com/flatnet/flatnet/suites/reachability"
)

func TestGridIsAlignedAndReadsBack(t *testing.T) {
	ports := []reachability.PortProtocol{{Port: 80, Protocol: oracle.TCP}, {Port: 81, Protocol: oracle.UDP}}
	from := []string{"x/a", "node/kind-worker2", "world/192.0.2.10"}
	to := []string{"x/a", "y/bb", "s-zzz-c"}
	exp, _ := reachability.NewTable("expected", from, to, ports)
	obs, _ := reachability.NewTable("observed", from, to, ports)
	n := 0
	for _, k := range exp.Keys() {
		n++
		_ = exp.Set(k, reachability.Cell{Reachable: n%2 == 0})
		if n%5 == 0 {
			continue // not probed
		}
		_ = obs.Set(k, reachability.Cell{Reachable: n%2 == 0 != (n%7 == 0)})
	}
	for _, p := range ports {
		var buf bytes.Buffer
		if err := WriteGrid(&buf, obs, exp, p); err != nil {
			t.Fatal(err)
		}
		text := buf.String()
		lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
		if len(lines) != 1+len(from) {
			t.Fatalf("%d lines:\n%s", len(lines), text)
		}
		// Mechanical alignment: every line equally wide, and each column's
		// label in the header starts where every row's cell of that column
		// starts.
		starts := columnStarts(lines[0], to)
		for i, l := range lines {
			if len(l) != len(lines[0]) {
				t.Errorf("line %d width %d, header %d:\n%s", i, len(l), len(lines[0]), text)
			}
		}
		for ri, f := range from {
			line := lines[1+ri]
			if !strings.HasPrefix(line, f+" ") {
				t.Errorf("row %d does not start with its label %q: %q", ri, f, line)
			}
			for ci, d := range to {
				s := starts[ci]
				if line[s-1] != ' ' {
					t.Errorf("row %s column %s: not aligned:\n%s", f, d, text)
				}
				got := strings.Fields(line[s:])[0]
				want := mark(obs, exp, reachability.Key{From: f, To: d, PortProtocol: p})
				if got != want {
					t.Errorf("%s -> %s %s: grid shows %q, want %q", f, d, p, got, want)
				}
			}
		}
		if !strings.Contains(text, MarkMismatch) || !strings.Contains(text, MarkUnknown) {
			t.Errorf("grid lacks mismatch or unknown marks:\n%s", text)
		}
	}
}

// columnStarts finds, in the header, where each destination label starts,
// searching after the previous one.
func columnStarts(header string, to []string) []int {
	var out []int
	pos := strings.Index(header, " ") // past the title
	for _, d := range to {
		i := strings.Index(header[pos:], " "+d)
		out = append(out, pos+i+1)
		pos += i + 1 + len(d)
	}
	return out
}

func TestWriteComparisonListsMismatchesWithPoliciesAndFlows(t *testing.T) {
	s := buildSample(t)
	var buf bytes.Buffer
	cmp := s.report.Cases[1].Steps[0].Comparisons[0]
	if err := WriteComparison(&buf, cmp); err != nil {
		t.Fatal(err)
	}
	text := buf.String()
	for _, want := range []string{"mismatches (" + strconv.Itoa(len(cmp.Mismatches)) + "):", "expected blocked, observed reachable",
		"policies: NetworkPolicy x/default-deny-ingress", "flow: ", "oracle: denied: egress of x/a: not isolated | ingress of x/b: no rule allows"} {
		if !strings.Contains(text, want) {
			t.Errorf("comparison text lacks %q:\n%s", want, text)
		}
	}
	t.Logf("\n%s", text[:min(len(text), 1500)])
}

// The JUnit file is read back with a schema of its own, as a CI system would.
type junitIn struct {
	XMLName  xml.Name `xml:"testsuites"`
	Tests    int      `xml:"tests,attr"`
	Failures int      `xml:"failures,attr"`
	Errors   int      `xml:"errors,attr"`
	Skipped  int      `xml:"skipped,attr"`
	Time     string   `xml:"time,attr"`
	Suites   []struct {
		Name     string `xml:"name,attr"`
		Tests    int    `xml:"tests,attr"`
		Failures int    `xml:"failures,attr"`
		Time     string `xml:"time,attr"`
		Cases    []struct {
			Name      string `xml:"name,attr"`
			Classname string `xml:"classname,attr"`
			Time      string `xml:"time,attr"`
			Failure   *struct {
				Message string `xml:"message,attr"`
				Text    string `xml:",chardata"`
			} `xml:"failure"`
			Error *struct {
				Message string `xml:"message,attr"`
			} `xml:"error"`
			Skipped *struct {
				Message string `xml:"message,attr"`
			} `xml:"skipped"`
			SystemOut string `xml:"system-out"`
		} `xml:"testcase"`
	} `xml:"testsuite"`
}

func TestJUnitParsesBack(t *testing.T) {
	s := buildSample(t)
	var buf bytes.Buffer
	if err := WriteJUnit(&buf, s.report); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(buf.String(), "<?xml") {
		t.Error("no XML declaration")
	}
	var in junitIn
	if err := xml.Unmarshal(buf.Bytes(), &in); err != nil {
		t.Fatalf("parse back: %v", err)
	}
	if in.Tests != 4 || in.Failures != 1 || in.Errors != 1 || in.Skipped != 1 {
		t.Errorf("totals tests=%d failures=%d errors=%d skipped=%d; want 4/1/1/1", in.Tests, in.Failures, in.Errors, in.Skipped)
	}
	sum := 0
	seen := map[string]bool{}
	for _, su := range in.Suites {
		sum += su.Tests
		if len(su.Cases) != su.Tests {
			t.Errorf("suite %s: tests=%d but %d testcases", su.Name, su.Tests, len(su.Cases))
		}
		for _, c := range su.Cases {
			seen[c.Name] = true
			if _, err := strconv.ParseFloat(c.Time, 64); err != nil {
				t.Errorf("%s: time %q: %v", c.Name, c.Time, err)
			}
			if !strings.HasPrefix(c.Classname, "flatnet.policy.") {
				t.Errorf("%s: classname %q", c.Name, c.Classname)
			}
			switch c.Name {
			case "np-deny-all-ingress":
				if c.Failure == nil || !strings.Contains(c.Failure.Message, "mismatched") || !strings.Contains(c.Failure.Text, "mismatches (") {
					t.Errorf("failing case not reported as a failure with its grids: %+v", c.Failure)
				}
				if c.Time != "1.500" {
					t.Errorf("failing case time %q, want 1.500", c.Time)
				}
			case "np-pod-selector":
				if c.Failure != nil || !strings.Contains(c.SystemOut, "probes as expected") {
					t.Errorf("passing case: failure %+v, system-out %q", c.Failure, c.SystemOut)
				}
			case "np-sctp":
				if c.Skipped == nil || !strings.Contains(c.Skipped.Message, "SCTP") {
					t.Errorf("skipped case: %+v", c.Skipped)
				}
			case "cnp-broken-setup":
				if c.Error == nil {
					t.Error("setup error not reported as an error")
				}
			}
		}
	}
	if sum != in.Tests || len(seen) != 4 {
		t.Errorf("suites hold %d tests (%d distinct), total says %d", sum, len(seen), in.Tests)
	}
	if f, err := strconv.ParseFloat(in.Time, 64); err != nil || f != 3.0 {
		t.Errorf("total time %q, want 3.000 (two cases of one 1.5 s step)", in.Time)
	}
}

// A case whose tables all agree but which found another problem (traffic
// blocked while a change was applied) fails, in JUnit and in the HTML.
func TestProblemsFailACaseWithMatchingTables(t *testing.T) {
	s := buildSample(t)
	var passing CaseResult
	for _, c := range s.report.Cases {
		if c.Name == "np-pod-selector" {
			passing = c
		}
	}
	if passing.Failed() {
		t.Fatal("sample case np-pod-selector should pass")
	}
	passing.Problems = []string{"step \"update\": 2 probes on paths open before and after the change were blocked while it was applied"}
	if !passing.Failed() {
		t.Fatal("a case with problems does not count as failed")
	}
	r := &Report{Title: "problems", Cases: []CaseResult{passing}}
	var junit, page bytes.Buffer
	if err := WriteJUnit(&junit, r); err != nil {
		t.Fatal(err)
	}
	var in junitIn
	if err := xml.Unmarshal(junit.Bytes(), &in); err != nil {
		t.Fatal(err)
	}
	if in.Failures != 1 || len(in.Suites) != 1 || in.Suites[0].Cases[0].Failure == nil ||
		!strings.Contains(in.Suites[0].Cases[0].Failure.Message, "while it was applied") {
		t.Errorf("JUnit: failures=%d, case %+v", in.Failures, in.Suites)
	}
	if err := WriteHTML(&page, r); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(page.String(), "while it was applied") || !strings.Contains(page.String(), "1 failed") {
		t.Error("the HTML page does not show the problem as a failure")
	}
}

// A cell right for the wrong reason keeps its observed mark, gains '~' (never
// '!'), and is listed with why and its flows, in the text and in the HTML.
func TestWrongReasonIsMarkedApartFromAMismatch(t *testing.T) {
	s := buildSample(t)
	cmp := s.report.Cases[0].Steps[0].Comparisons[0]
	if !cmp.OK() {
		t.Fatalf("sample case 0 should pass: %s", cmp.Summary())
	}
	k := cmp.Expected.Keys()[1]
	exp, _ := cmp.Expected.Get(k)
	obs, _ := cmp.Observed.Get(k)
	cmp.WrongReason = append(cmp.WrongReason, reachability.Mismatch{Key: k, Expected: exp, Observed: obs,
		Why: "blocked for the wrong reason: no policy drop recorded", Flows: []string{"no flow of this connection recorded in its poll's window"}})
	var buf bytes.Buffer
	if err := WriteComparison(&buf, cmp); err != nil {
		t.Fatal(err)
	}
	mark := MarkBlocked
	if obs.Reachable {
		mark = MarkReachable
	}
	text := buf.String()
	for _, want := range []string{" " + mark + MarkWrongReason + " ", "for the wrong reason (1)", "why: blocked for the wrong reason", "flow: no flow of this connection"} {
		if !strings.Contains(text, want) {
			t.Errorf("text lacks %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, MarkBlocked+MarkMismatch) || strings.Contains(text, MarkReachable+MarkMismatch) || cmp.OK() {
		t.Errorf("a wrong reason is no mismatch, and fails the comparison: OK=%v\n%s", cmp.OK(), text)
	}
	var page bytes.Buffer
	if err := WriteHTML(&page, s.report); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`class="blocked wrongreason"`, "for the wrong reason (1)", "no flow of this connection recorded"} {
		if obs.Reachable {
			want = strings.Replace(want, "blocked wrongreason", "reach wrongreason", 1)
		}
		if !strings.Contains(page.String(), want) {
			t.Errorf("HTML lacks %q", want)
		}
	}
}
