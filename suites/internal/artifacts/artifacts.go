// Package artifacts writes a suite's truth-table report where CI collects
// it: the HTML page people read and a JUnit file of the matrices, beside the
// JUnit Ginkgo writes for the specs.
package artifacts

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"

	"github.com/flatnet/flatnet/suites/report"
)

// Write renders r as <dir>/<base>.html and <dir>/<base>.junit.xml and returns
// the two paths. Both are rendered before either is written, so a rendering
// error leaves no half report behind.
func Write(dir, base string, r *report.Report) ([]string, error) {
	var page, junit bytes.Buffer
	if err := report.WriteHTML(&page, r); err != nil {
		return nil, err
	}
	if err := report.WriteJUnit(&junit, r); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating the artifacts directory: %w", err)
	}
	paths := []string{filepath.Join(dir, base+".html"), filepath.Join(dir, base+".junit.xml")}
	for i, data := range [][]byte{page.Bytes(), junit.Bytes()} {
		if err := os.WriteFile(paths[i], data, 0o644); err != nil {
			return nil, fmt.Errorf("writing the report: %w", err)
		}
	}
	return paths, nil
}
