package skiplist

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// The files the scripts read must parse, whatever they hold today.
func TestTheRepositorysFilesParse(t *testing.T) {
	for _, f := range []string{"known-divergences", "k8s-conformance-skips"} {
		if _, err := Read(filepath.Join("..", f)); err != nil {
			t.Error(err)
		}
	}
}

func TestRead(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	os.WriteFile(good, []byte("# comment\n\nfoo-.*\twhy not\n\\[sig-network\\] DNS\tno upstream resolver offline \n"), 0o644)
	d, err := Read(good)
	want := []Entry{{Pattern: "foo-.*", Why: "why not"}, {Pattern: `\[sig-network\] DNS`, Why: "no upstream resolver offline"}}
	if err != nil || !slices.Equal(d, want) {
		t.Errorf("Read = %v, %v; want %v", d, err, want)
	}
	if got := Args(d); !slices.Equal(got, []string{"--skip", "foo-.*", "--skip", `\[sig-network\] DNS`}) {
		t.Errorf("Args = %q", got)
	}
	for text, want := range map[string]string{"a foo-bar spec": "why not", "[sig-network] DNS should resolve": "no upstream resolver offline", "other": ""} {
		if why, ok := Why(d, text); why != want || ok != (want != "") {
			t.Errorf("Why(%q) = %q, %v; want %q", text, why, ok, want)
		}
	}
	for _, bad := range []string{"no tab here\n", "(unclosed\twhy\n", "pattern\t \n"} {
		p := filepath.Join(dir, "bad")
		os.WriteFile(p, []byte(bad), 0o644)
		if _, err := Read(p); err == nil || !strings.Contains(err.Error(), "bad:1") {
			t.Errorf("%q: %v, want an error naming the line", bad, err)
		}
	}
	if _, err := Read(filepath.Join(dir, "missing")); err == nil {
		t.Error("a missing file was accepted")
	}
}
