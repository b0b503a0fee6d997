package agent

import (
	"os/exec"
	"strings"
	"testing"
)

// The agent and the plugin meet in podnet (the plumbing), endpointapi (the
// socket) and cni/netconf (the conflist the agent writes): the agent must not
// depend on the plugin itself, nor its tests on it.
func TestAgentDoesNotImportThePlugin(t *testing.T) {
	const plugin = "github.com/flatnet/flatnet/dataplane/cni"
	out, err := exec.Command("go", "list", "-deps", "-test", "github.com/flatnet/flatnet/dataplane/agent").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, pkg := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if pkg == plugin || strings.HasPrefix(pkg, plugin+" [") {
			t.Errorf("the agent depends on %s", pkg)
		}
	}
}
