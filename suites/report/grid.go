package report

import (
	"fmt"
	"io"
	"strings"
	"unicode/utf8"

	"github.com/flatnet/flatnet/suites/reachability"
)

// Grid marks.
const (
	MarkReachable = "."
	MarkBlocked   = "X"
	MarkUnknown   = "?" // not probed
	MarkMismatch  = "!" // appended to the observed mark when it differs from the expected one
	// MarkWrongReason is appended to an observed mark that equals the
	// expected one but whose flows do not prove it: blocked without the
	// policy drop the oracle predicts (a broken route, a lost packet), or
	// reachable without its forwarded flows (suites/internal/flowcheck).
	MarkWrongReason = "~"
)

// WriteGrid prints one port of a table as an aligned grid: rows are sources,
// columns destinations, '.' reachable and 'X' blocked. With a comparison
// (expected may be nil), observed cells that differ from expected carry '!'.
// Every line has the same width and every column starts at the same offset.
func WriteGrid(w io.Writer, t *reachability.Table, expected *reachability.Table, p reachability.PortProtocol) error {
	return writeGrid(w, t, expected, nil, p)
}

// writeGrid is WriteGrid marking c's cells for the wrong reason too (c may
// be nil).
func writeGrid(w io.Writer, t *reachability.Table, expected *reachability.Table, c *reachability.Comparison, p reachability.PortProtocol) error {
	header := []string{t.Title + " " + p.String()}
	header = append(header, t.To...)
	rows := [][]string{header}
	for _, f := range t.From {
		row := []string{f}
		for _, to := range t.To {
			k := reachability.Key{From: f, To: to, PortProtocol: p}
			m := mark(t, expected, k)
			if c != nil {
				if _, wrong := c.Wrong(k); wrong {
					m += MarkWrongReason
				}
			}
			row = append(row, m)
		}
		rows = append(rows, row)
	}
	widths := make([]int, len(header))
	for _, r := range rows {
		for i, s := range r {
			widths[i] = max(widths[i], utf8.RuneCountInString(s))
		}
	}
	for _, r := range rows {
		var b strings.Builder
		for i, s := range r {
			if i > 0 {
				b.WriteString(" ")
			}
			b.WriteString(s)
			b.WriteString(strings.Repeat(" ", widths[i]-utf8.RuneCountInString(s)))
		}
		b.WriteString("\n")
		if _, err := io.WriteString(w, b.String()); err != nil {
			return fmt.Errorf("write grid %q: %w", t.Title, err)
		}
	}
	return nil
}

func mark(t, expected *reachability.Table, k reachability.Key) string {
	c, ok := t.Get(k)
	if !ok {
		return MarkUnknown
	}
	m := MarkBlocked
	if c.Reachable {
		m = MarkReachable
	}
	if expected != nil {
		if e, ok := expected.Get(k); ok && e.Reachable != c.Reachable {
			m += MarkMismatch
		}
	}
	return m
}

// WriteComparison prints a comparison for people: the observed grid of each
// port with mismatches marked, then each mismatch with the oracle's reason,
// the policies involved, the probe's output and any flow lines.
func WriteComparison(w io.Writer, c *reachability.Comparison) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n(rows: from, columns: to; %s reachable, %s blocked, %s not probed, %s observed differs from expected, %s as expected but not for the oracle's reason (flows))\n",
		c.Summary(), MarkReachable, MarkBlocked, MarkUnknown, MarkMismatch, MarkWrongReason)
	if _, err := io.WriteString(w, b.String()); err != nil {
		return fmt.Errorf("write comparison %q: %w", c.Title, err)
	}
	for _, p := range c.Observed.Ports {
		if err := writeGrid(w, c.Observed, c.Expected, c, p); err != nil {
			return err
		}
		if _, err := io.WriteString(w, "\n"); err != nil {
			return err
		}
	}
	b.Reset()
	if len(c.Mismatches) > 0 {
		fmt.Fprintf(&b, "mismatches (%d):\n", len(c.Mismatches))
		for _, m := range c.Mismatches {
			fmt.Fprintf(&b, "  %s: expected %s, observed %s", m.Key, reachWord(m.Expected.Reachable), reachWord(m.Observed.Reachable))
			if m.Observed.Detail != "" {
				fmt.Fprintf(&b, " (%s)", m.Observed.Detail)
			}
			b.WriteString("\n")
			fmt.Fprintf(&b, "    oracle: %s\n", m.Expected.Detail)
			if len(m.Expected.Policies) > 0 {
				fmt.Fprintf(&b, "    policies: %s\n", strings.Join(m.Expected.Policies, ", "))
			} else {
				b.WriteString("    policies: none select either end\n")
			}
			for _, f := range m.Flows {
				fmt.Fprintf(&b, "    flow: %s\n", f)
			}
		}
	}
	if len(c.WrongReason) > 0 {
		fmt.Fprintf(&b, "for the wrong reason (%d), the verdict right but not proven by the flows:\n", len(c.WrongReason))
		for _, m := range c.WrongReason {
			fmt.Fprintf(&b, "  %s: %s", m.Key, reachWord(m.Observed.Reachable))
			if m.Observed.Detail != "" {
				fmt.Fprintf(&b, " (%s)", m.Observed.Detail)
			}
			fmt.Fprintf(&b, "\n    why: %s\n    oracle: %s\n", m.Why, m.Expected.Detail)
			for _, f := range m.Flows {
				fmt.Fprintf(&b, "    flow: %s\n", f)
			}
		}
	}
	if len(c.Missing) > 0 {
		fmt.Fprintf(&b, "not probed (%d):\n", len(c.Missing))
		for _, k := range c.Missing {
			fmt.Fprintf(&b, "  %s\n", k)
		}
	}
	if _, err := io.WriteString(w, b.String()); err != nil {
		return fmt.Errorf("write comparison %q: %w", c.Title, err)
	}
	return nil
}

func reachWord(r bool) string {
	if r {
		return "reachable"
	}
	return "blocked"
}
