package agent

import (
	"os/exec"
	"strings"
	"testing"
)

// The agent and the plugin meet in podnet (the plumbing), endpointapi (the
// socket) and cniconf (the conflist the agent writes and the plugin parses):
// the agent must not depend on the plugin or any package under it, nor its
// tests on them.
func TestAgentDoesNotImportThePlugin(t *testing.T) {
	const plugin = "github.com/flatnet/flatnet/dataplane/cni"
	out, err := exec.Command("go", "list", "-deps", "-test", "github.com/flatnet/flatnet/dataplane/agent").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, pkg := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if pkg == plugin || strings.HasPrefix(pkg, plugin+" [") || strings.HasPrefix(pkg, plugin+"/") {
			t.Errorf("the agent depends on %s", pkg)
		}
	}
}
