package agent

import (
	"os"
	"testing"

	"golang.org/x/mod/modfile"
	"golang.org/x/mod/semver"
)

// The version header names the Cilium release of go.mod's Hubble API, in the
// form the hubble CLI parses (a semantic version, without flatnet's name): a
// go.mod bump that leaves it behind fails here.
func TestHubbleAPIVersionIsGoModsCilium(t *testing.T) {
	b, err := os.ReadFile("../../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	mf, err := modfile.Parse("go.mod", b, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := ""
	for _, r := range mf.Require {
		if r.Mod.Path == "github.com/cilium/cilium" {
			want = r.Mod.Version
		}
	}
	if want == "" {
		t.Fatal("go.mod requires no github.com/cilium/cilium")
	}
	if "v"+hubbleAPIVersion != want || !semver.IsValid(want) {
		t.Errorf("hubbleAPIVersion = %q, want %q of go.mod without its v: update it with go.mod", hubbleAPIVersion, want)
	}
}
