package report

import (
	"fmt"
	"io"
	"text/tabwriter"
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
// family (as policy-assistant prints its per-tag summary).
func WriteFamilyTable(w io.Writer, cases []CaseResult) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "family\tcases\tpassed\tfailed\tskipped\tpass %\t")
	for _, f := range FamilyRates(cases) {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%s\t\n", f.Family, f.Cases, f.Passed, f.Failed, f.Skipped, f.PassText())
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write pass-rate table: %w", err)
	}
	return nil
}
