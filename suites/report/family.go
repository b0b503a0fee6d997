package report

import (
	"fmt"
	"io"
	"strings"
)

// FamilyRate is one line of the pass-rate table: a family's cases and how
// they ended. A case broken in setup (Error) counts as failed; a skipped one
// counts apart and never as passed.
type FamilyRate struct {
	Family                         string
	Cases, Passed, Failed, Skipped int
}

// PassPercent is the share of the family's cases that ran and passed, in
// percent; a family none of whose cases ran has none.
func (f FamilyRate) PassPercent() (float64, bool) {
	ran := f.Cases - f.Skipped
	if ran == 0 {
		return 0, false
	}
	return 100 * float64(f.Passed) / float64(ran), true
}

// PassText is PassPercent as the tables print it: "87.5", or "-" when no
// case ran.
func (f FamilyRate) PassText() string {
	if p, ok := f.PassPercent(); ok {
		return fmt.Sprintf("%.1f", p)
	}
	return "-"
}

// FamilyRates counts cases by family, families in the order they first
// appear, then a last line "all" over every case.
func FamilyRates(cases []CaseResult) []FamilyRate {
	var out []FamilyRate
	index := map[string]int{}
	total := FamilyRate{Family: "all"}
	for _, c := range cases {
		i, ok := index[c.Family]
		if !ok {
			i = len(out)
			index[c.Family] = i
			out = append(out, FamilyRate{Family: c.Family})
		}
		for _, f := range []*FamilyRate{&out[i], &total} {
			f.Cases++
			switch {
			case c.Skipped != "":
				f.Skipped++
			case c.Error != "" || c.Failed():
				f.Failed++
			default:
				f.Passed++
			}
		}
	}
	if len(out) == 0 {
		return nil
	}
	return append(out, total)
}

// WriteFamilyTable prints the pass-rate table of cases, one aligned line per
// family (as policy-assistant prints its per-tag summary): names to the
// left, counts to the right.
func WriteFamilyTable(w io.Writer, cases []CaseResult) error {
	rates := FamilyRates(cases)
	width := len("family")
	for _, f := range rates {
		width = max(width, len(f.Family))
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%-*s  %5s  %6s  %6s  %7s  %6s\n", width, "family", "cases", "passed", "failed", "skipped", "pass %")
	for _, f := range rates {
		fmt.Fprintf(&b, "%-*s  %5d  %6d  %6d  %7d  %6s\n", width, f.Family, f.Cases, f.Passed, f.Failed, f.Skipped, f.PassText())
	}
	if _, err := io.WriteString(w, b.String()); err != nil {
		return fmt.Errorf("write pass-rate table: %w", err)
	}
	return nil
}
