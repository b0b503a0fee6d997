package artifacts

import (
	"encoding/xml"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/flatnet/flatnet/suites/report"
)

func TestWriteBothFiles(t *testing.T) {
	dir := t.TempDir() + "/nested/e2e"
	r := &report.Report{Title: "t", Started: time.Now(), Cases: []report.CaseResult{
		{Name: "sctp", Family: "networkpolicy", Skipped: "no SCTP in this kernel"},
		{Name: "broken", Family: "seed", Error: "CRD missing"},
	}}
	paths, err := Write(dir, "netpol", r)
	if err != nil {
		t.Fatal(err)
	}
	html, err := os.ReadFile(paths[0])
	if err != nil || !strings.Contains(string(html), "no SCTP in this kernel") {
		t.Errorf("HTML %s: %v, skip reason missing", paths[0], err)
	}
	data, err := os.ReadFile(paths[1])
	if err != nil {
		t.Fatal(err)
	}
	var suites struct {
		Tests   int `xml:"tests,attr"`
		Skipped int `xml:"skipped,attr"`
		Errors  int `xml:"errors,attr"`
	}
	if err := xml.Unmarshal(data, &suites); err != nil {
		t.Fatalf("JUnit is not XML: %v", err)
	}
	if suites.Tests != 2 || suites.Skipped != 1 || suites.Errors != 1 {
		t.Errorf("JUnit counts %+v, want 2 tests, 1 skipped, 1 error", suites)
	}
}
