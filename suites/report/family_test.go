package report

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"golang.org/x/net/html"

	"github.com/flatnet/flatnet/suites/reachability"
)

func TestFamilyTable(t *testing.T) {
	bad, err := reachability.NewTable("t", []string{"a"}, []string{"b"}, []reachability.PortProtocol{{Port: 80, Protocol: "TCP"}})
	if err != nil {
		t.Fatal(err)
	}
	good, _ := reachability.NewTable("t", []string{"a"}, []string{"b"}, []reachability.PortProtocol{{Port: 80, Protocol: "TCP"}})
	k := bad.Keys()[0]
	_ = bad.Set(k, reachability.Cell{Reachable: true})
	_ = good.Set(k, reachability.Cell{Reachable: false})
	mismatch, err := reachability.Compare("t", good, bad)
	if err != nil {
		t.Fatal(err)
	}
	cases := []CaseResult{
		{Name: "r1", Family: "relabel"},
		{Name: "r2", Family: "relabel", Steps: []StepResult{{Comparisons: []*reachability.Comparison{mismatch}}}},
		{Name: "r3", Family: "relabel", Problems: []string{"gap"}},
		{Name: "n1", Family: "namespace", Error: "setup"},
		{Name: "s", Family: "sctp", Skipped: "no SCTP"},
	}
	rates := FamilyRates(cases)
	want := []FamilyRate{
		{Family: "relabel", Cases: 3, Passed: 1, Failed: 2},
		{Family: "namespace", Cases: 1, Failed: 1},
		{Family: "sctp", Cases: 1, Skipped: 1},
		{Family: "all", Cases: 5, Passed: 1, Failed: 3, Skipped: 1},
	}
	if len(rates) != len(want) {
		t.Fatalf("rates %+v", rates)
	}
	for i := range want {
		if rates[i] != want[i] {
			t.Errorf("line %d: %+v, want %+v", i, rates[i], want[i])
		}
	}
	var b strings.Builder
	if err := WriteFamilyTable(&b, cases); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimRight(b.String(), "\n"), "\n")
	if len(lines) != 5 {
		t.Fatalf("table:\n%s", b.String())
	}
	for _, l := range lines[1:] {
		if len(l) != len(lines[0]) {
			t.Errorf("lines not aligned:\n%s", b.String())
			break
		}
	}
	for _, s := range []string{"33.3", "0.0", " -", "25.0"} {
		if !strings.Contains(b.String(), s) {
			t.Errorf("table lacks %q:\n%s", s, b.String())
		}
	}
}

func TestHTMLHasThePassRateTable(t *testing.T) {
	s, page := renderSample(t)
	doc, err := html.Parse(bytes.NewReader(page))
	if err != nil {
		t.Fatal(err)
	}
	var rows [][]string
	walk(doc, func(n *html.Node) {
		if n.Data != "table" || !strings.Contains(attr(n, "class"), "families") {
			return
		}
		walk(n, func(tr *html.Node) {
			if tr.Data != "tr" {
				return
			}
			var cells []string
			for c := tr.FirstChild; c != nil; c = c.NextSibling {
				if c.Type == html.ElementNode && c.FirstChild != nil {
					cells = append(cells, c.FirstChild.Data)
				}
			}
			rows = append(rows, cells)
		})
	})
	rates := FamilyRates(s.report.Cases)
	if len(rows) != len(rates)+1 {
		t.Fatalf("pass-rate table rows %v, want a header and %d lines", rows, len(rates))
	}
	last := rows[len(rows)-1]
	all := rates[len(rates)-1]
	if last[0] != "all" || last[1] != fmt.Sprint(all.Cases) || last[5] != all.PassText() {
		t.Errorf("last line %v, want %+v", last, all)
	}
}
