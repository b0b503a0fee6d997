package conformance

import (
	"bytes"
	"encoding/xml"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flatnet/flatnet/suites/skiplist"
)

const focus = `\[sig-network\].*\[Conformance\]`

func sampleSpecs(t *testing.T) []Spec {
	t.Helper()
	skips := []skiplist.Entry{
		{Pattern: `\[sig-network\] DNS`, Why: "no upstream resolver offline"},
		{Pattern: `ConfigMap`, Why: "outside the focus anyway"},
	}
	specs, err := ReadSpecs(filepath.Join("testdata", "report.json"), focus, skips)
	if err != nil {
		t.Fatal(err)
	}
	return specs
}

// The focus selects the It specs of [sig-network] only, sorted by text;
// a skipped spec says why: the skip list's reason, else its own Skip.
func TestSpecsSelectTheFocusAndSayWhy(t *testing.T) {
	specs := sampleSpecs(t)
	want := []Spec{
		{Name: "[sig-network] DNS should provide DNS for the cluster  [Conformance]", State: "skipped", Why: "no upstream resolver offline"},
		{Name: "[sig-network] Networking Granular Checks: Pods should function for intra-pod communication: udp [NodeConformance] [Conformance]", State: "failed", Seconds: 301,
			Message: "failed to reach pod 10.224.1.5 over udp <within 5m>", At: "k8s.io/kubernetes/test/e2e/common/network/networking.go:94"},
		{Name: "[sig-network] Proxy version v1 A set of valid responses are returned for both pod and service Proxy [Conformance]", State: "skipped", Seconds: 0.001,
			Message: "no proxy subresource on this provider", At: "proxy.go:12", Why: "no proxy subresource on this provider"},
		{Name: "[sig-network] Services should serve a basic endpoint from pods  [Conformance]", State: "passed", Seconds: 12.3456789},
	}
	if len(specs) != len(want) {
		t.Fatalf("%d specs, want %d: %+v", len(specs), len(want), specs)
	}
	for i := range want {
		if specs[i] != want[i] {
			t.Errorf("spec %d:\n got %+v\nwant %+v", i, specs[i], want[i])
		}
	}
	if c := Count(specs); c != (Counts{Passed: 1, Failed: 1, Skipped: 2}) {
		t.Errorf("Count = %+v", c)
	}
	if _, err := Specs(strings.NewReader("[]"), "(", nil); err == nil {
		t.Error("a focus that is no regexp was accepted")
	}
	if _, err := Specs(strings.NewReader("{not json"), focus, nil); err == nil {
		t.Error("a broken report was accepted")
	}
}

func TestSummaryHasOneLinePerSpecAndTheCounts(t *testing.T) {
	var b bytes.Buffer
	if err := WriteSummary(&b, sampleSpecs(t)); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"\n  SKIP [sig-network] DNS should provide DNS for the cluster  [Conformance]\n         (no upstream resolver offline)\n",
		"\n  FAIL [sig-network] Networking Granular Checks: Pods should function for intra-pod communication: udp [NodeConformance] [Conformance]\n         failed at k8s.io/kubernetes/test/e2e/common/network/networking.go:94\n",
		"\n  PASS [sig-network] Services should serve a basic endpoint from pods  [Conformance]\n",
		"\n\n  4 specs: 1 passed, 1 failed, 2 skipped\n",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, b.String())
		}
	}
}

func TestJUnitParsesBack(t *testing.T) {
	var b bytes.Buffer
	if err := WriteJUnit(&b, focus, sampleSpecs(t)); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(b.String(), `<?xml version="1.0" encoding="UTF-8"?>`) {
		t.Errorf("no XML header: %.60s", b.String())
	}
	var in struct {
		Tests    int    `xml:"tests,attr"`
		Failures int    `xml:"failures,attr"`
		Skipped  int    `xml:"skipped,attr"`
		Time     string `xml:"time,attr"`
		Suite    struct {
			Name  string `xml:"name,attr"`
			Tests int    `xml:"tests,attr"`
			Cases []struct {
				Name      string `xml:"name,attr"`
				Classname string `xml:"classname,attr"`
				Time      string `xml:"time,attr"`
				Skipped   *struct {
					Message string `xml:"message,attr"`
				} `xml:"skipped"`
				Failure *struct {
					Message string `xml:"message,attr"`
					Type    string `xml:"type,attr"`
					Text    string `xml:",chardata"`
				} `xml:"failure"`
			} `xml:"testcase"`
		} `xml:"testsuite"`
	}
	if err := xml.Unmarshal(b.Bytes(), &in); err != nil {
		t.Fatalf("%v\n%s", err, b.String())
	}
	if in.Tests != 4 || in.Failures != 1 || in.Skipped != 2 || in.Time != "313.3466789" || in.Suite.Tests != 4 {
		t.Errorf("totals: tests %d failures %d skipped %d time %s", in.Tests, in.Failures, in.Skipped, in.Time)
	}
	if in.Suite.Name != "Kubernetes e2e suite: "+focus || len(in.Suite.Cases) != 4 {
		t.Fatalf("suite %q with %d cases", in.Suite.Name, len(in.Suite.Cases))
	}
	dns, udp, svc := in.Suite.Cases[0], in.Suite.Cases[1], in.Suite.Cases[3]
	if dns.Skipped == nil || dns.Skipped.Message != "no upstream resolver offline" || dns.Failure != nil {
		t.Errorf("skipped case: %+v", dns)
	}
	if f := udp.Failure; f == nil || f.Type != "failed" || f.Message != "failed at k8s.io/kubernetes/test/e2e/common/network/networking.go:94" ||
		f.Text != "failed to reach pod 10.224.1.5 over udp <within 5m>" || udp.Time != "301" {
		t.Errorf("failed case: %+v %+v", udp, udp.Failure)
	}
	if svc.Skipped != nil || svc.Failure != nil || svc.Classname != "Kubernetes e2e suite" || svc.Time != "12.3456789" {
		t.Errorf("passed case: %+v", svc)
	}
}

func TestImagesAreTheManifestsNames(t *testing.T) {
	path := filepath.Join("testdata", "manifest.go.txt")
	src, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	refs, err := Images(path, src, "Agnhost", "BusyBox", "Pause")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"Agnhost": "registry.k8s.io/e2e-test-images/agnhost:2.59",
		"BusyBox": "registry.k8s.io/e2e-test-images/busybox:1.37.0-1",
		"Pause":   "registry.k8s.io/pause:3.10.1",
	}
	for id, ref := range want {
		if refs[id] != ref {
			t.Errorf("%s: %q, want %q", id, refs[id], ref)
		}
	}
	if _, err := Images(path, src, "Nginx"); err == nil || !strings.Contains(err.Error(), "no image Nginx") {
		t.Errorf("an image the manifest lacks: %v", err)
	}
	if _, err := Images(path, src, "AuthenticatedAlpine"); err == nil || !strings.Contains(err.Error(), "PrivateRegistry") {
		t.Errorf("a registry initRegistry does not set: %v", err)
	}
	if _, err := Images(path, []byte("package image\nfunc {"), "Agnhost"); err == nil {
		t.Error("a manifest that is no Go was accepted")
	}
}
