// Package agnhost reads the answers of `agnhost connect`, the command the
// seed article runs (`./agnhost connect <ip>:80 --timeout=3s --protocol=tcp`)
// and the upstream e2e suites run once per cell, so suites judge it by its
// documented contract rather than by guesswork.
package agnhost

import (
	"fmt"
	"strings"
)

// Answer is what one `agnhost connect` printed and how it exited.
type Answer struct {
	ExitCode       int
	Stdout, Stderr string
}

// Judge reads an answer as agnhost's contract has it: success is exit 0 with
// no output at all ("If successful, there is simply no output"); failure is
// exit 1 with a line starting with TIMEOUT, REFUSED, DNS, OTHER or UNKNOWN on
// stderr. word is that first word (empty on success). Anything else means the
// probe did not behave as agnhost and is an error, never a verdict.
func Judge(a Answer) (reachable bool, word string, err error) {
	out := strings.TrimSpace(a.Stdout + a.Stderr)
	switch a.ExitCode {
	case 0:
		if out != "" {
			return false, "", fmt.Errorf("agnhost connect exited 0 but printed %q; success prints nothing", out)
		}
		return true, "", nil
	case 1:
		var w string
		if f := strings.Fields(out); len(f) > 0 {
			w = strings.TrimRight(f[0], ":")
		}
		switch w {
		case "TIMEOUT", "REFUSED", "DNS", "OTHER", "UNKNOWN":
			return false, w, nil
		}
		return false, "", fmt.Errorf("agnhost connect exited 1 printing %q; failures start with TIMEOUT, REFUSED, DNS, OTHER or UNKNOWN", out)
	}
	return false, "", fmt.Errorf("agnhost connect exited %d (output %q); it exits 0 or 1", a.ExitCode, out)
}
