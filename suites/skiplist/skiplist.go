// Package skiplist reads the files that name specs a run skips, each with
// why: suites/known-divergences (flatnet's suites, skipped by make e2e unless
// STRICT=1) and suites/k8s-conformance-skips (Kubernetes' own conformance
// specs). Both have one format, "<ginkgo spec-text regexp><TAB><why>" with #
// comments and blank lines, and this is its one reader: the scripts turn it
// into --skip flags and the reports into reasons, through the same code.
package skiplist

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
)

// Entry is one line: specs whose text matches Pattern are skipped for Why.
type Entry struct {
	Pattern, Why string
}

// Read reads a skip file.
func Read(path string) ([]Entry, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading the skip list: %w", err)
	}
	defer f.Close()
	return Parse(f, path)
}

// Parse reads a skip list from r; name (the file's path) prefixes errors,
// which name the line and the format.
func Parse(r io.Reader, name string) ([]Entry, error) {
	var out []Entry
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if strings.TrimSpace(line) == "" || strings.HasPrefix(line, "#") {
			continue
		}
		pattern, why, ok := strings.Cut(line, "\t")
		if !ok || pattern == "" || strings.TrimSpace(why) == "" {
			return nil, fmt.Errorf("%s:%d: want <spec-text regexp><TAB><why>, got %q", name, n, line)
		}
		// Ginkgo compiles --skip with Go's regexp: a pattern it would refuse
		// fails here, naming the line, instead of failing the whole run.
		if _, err := regexp.Compile(pattern); err != nil {
			return nil, fmt.Errorf("%s:%d: %q is not a regexp: %w", name, n, pattern, err)
		}
		out = append(out, Entry{Pattern: pattern, Why: strings.TrimSpace(why)})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading %s: %w", name, err)
	}
	return out, nil
}

// Args are the ginkgo flags that skip every entry: --skip <pattern> each.
func Args(entries []Entry) []string {
	var out []string
	for _, e := range entries {
		out = append(out, "--skip", e.Pattern)
	}
	return out
}

// Why is the reason of the first entry whose pattern matches the spec text,
// and whether one does.
func Why(entries []Entry, text string) (string, bool) {
	for _, e := range entries {
		if regexp.MustCompile(e.Pattern).MatchString(text) {
			return e.Why, true
		}
	}
	return "", false
}
