package parts

import (
	"bufio"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"
)

// A suite's Times are committed beside it (suites/<suite>/parts-times.tsv) so
// that a machine with no last run, a fresh one or CI's first, still balances
// its parts by measured times rather than by a second per spec. One line per
// group, tab-separated: the group ("setup" for the per-process setup and
// teardown, "*" for every group's mean, "(none)" for the specs without the
// key) and seconds; lines starting with # are comments.

const (
	setupLine = "setup"
	noKeyLine = "(none)"
)

// WriteTimes writes t in the committed form, groups by name, after the
// comment lines given.
func WriteTimes(w io.Writer, t Times, comments ...string) error {
	bw := bufio.NewWriter(w)
	for _, c := range comments {
		fmt.Fprintf(bw, "# %s\n", c)
	}
	fmt.Fprintf(bw, "%s\t%.1f\n", setupLine, t.Setup.Seconds())
	// "*" sorts before every family name (letters and digits).
	groups := slices.Sorted(maps.Keys(t.PerSpec))
	for _, g := range groups {
		name := g
		if g == "" {
			name = noKeyLine
		}
		fmt.Fprintf(bw, "%s\t%.1f\n", name, t.PerSpec[g].Seconds())
	}
	return bw.Flush()
}

// ReadTimes reads what WriteTimes wrote; name (the file's) goes into errors.
func ReadTimes(r io.Reader, name string) (Times, error) {
	t := Times{PerSpec: map[string]time.Duration{}}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		group, secs, ok := strings.Cut(line, "\t")
		v, err := strconv.ParseFloat(strings.TrimSpace(secs), 64)
		if !ok || err != nil || v < 0 {
			return Times{}, fmt.Errorf("%s:%d: %q: want <group><TAB><seconds, 0 or more>", name, n, line)
		}
		d := time.Duration(v * float64(time.Second))
		switch group {
		case setupLine:
			t.Setup = d
		case noKeyLine:
			t.PerSpec[""] = d
		default:
			t.PerSpec[group] = d
		}
	}
	if err := sc.Err(); err != nil {
		return Times{}, fmt.Errorf("reading %s: %w", name, err)
	}
	return t, nil
}
