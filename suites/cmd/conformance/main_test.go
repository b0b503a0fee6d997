package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func run(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	c := command()
	c.SetArgs(args)
	c.SetOut(&out)
	c.SetErr(&errOut)
	err := c.Execute()
	return out.String(), errOut.String(), err
}

// What the scripts read: one argument per line on stdout (mapfile -t), the
// reasons on stderr; "PASSED FAILED" (read -r) and the two files.
func TestOutputsAsTheScriptsReadThem(t *testing.T) {
	dir := t.TempDir()
	skips := filepath.Join(dir, "skips")
	os.WriteFile(skips, []byte("# comment\n\\[sig-network\\] DNS\tno upstream resolver offline\n"), 0o644)
	out, errOut, err := run(t, "skip-args", "--explain", "skipping known divergence", skips)
	if err != nil || out != "--skip\n\\[sig-network\\] DNS\n" || errOut != "WARN skipping known divergence '\\[sig-network\\] DNS': no upstream resolver offline\n" {
		t.Errorf("skip-args: %q, %q, %v", out, errOut, err)
	}
	out, errOut, err = run(t, "summarize", "--report", filepath.Join("..", "..", "conformance", "testdata", "report.json"),
		"--focus", `\[sig-network\].*\[Conformance\]`, "--skips", skips, "--skip", "Proxy", "--out", dir)
	if err != nil || out != "1 1\n" || !strings.Contains(errOut, "(SKIP=Proxy on the command line)") || !strings.Contains(errOut, "(no upstream resolver offline)") {
		t.Errorf("summarize: %q, %q, %v", out, errOut, err)
	}
	for _, f := range []string{"specs.json", "junit.xml"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Error(err)
		}
	}
	out, _, err = run(t, "images", "--manifest", filepath.Join("..", "..", "conformance", "testdata", "manifest.go.txt"), "Pause", "Agnhost")
	if err != nil || out != "Pause registry.k8s.io/pause:3.10.1\nAgnhost registry.k8s.io/e2e-test-images/agnhost:2.59\n" {
		t.Errorf("images: %q, %v", out, err)
	}
	if _, _, err := run(t, "skip-args", filepath.Join(dir, "missing")); err == nil {
		t.Error("a missing skip list was accepted")
	}
}
