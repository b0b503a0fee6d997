package exporter

import (
	"os"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// The agent's manifest ships an empty flow log config and documents an example:
// both must be configs the agent accepts, in the directory the manifest mounts.
func TestManifestConfig(t *testing.T) {
	raw, err := os.ReadFile("../../manifests/agent.yaml")
	if err != nil {
		t.Fatal(err)
	}
	const dir = "/var/log/flatnet/flows"
	for _, doc := range strings.Split(string(raw), "\n---\n") {
		var cm struct {
			Kind     string
			Metadata struct{ Name string }
			Data     map[string]string
		}
		if err := yaml.Unmarshal([]byte(doc), &cm); err != nil || cm.Kind != "ConfigMap" || cm.Metadata.Name != "flatnet-flowlogs" {
			continue
		}
		cfg, err := Parse([]byte(cm.Data["flowlogs.yaml"]), dir)
		if err != nil || len(cfg.FlowLogs) != 0 {
			t.Errorf("the shipped config: %+v, %v; want no exporters", cfg, err)
		}
		_, example, ok := strings.Cut(doc, "# Example:\n")
		if !ok {
			t.Fatal("the ConfigMap documents no example")
		}
		var lines []string
		for _, l := range strings.Split(example, "\n") {
			if !strings.HasPrefix(l, "#   ") {
				break
			}
			lines = append(lines, strings.TrimPrefix(l, "#   "))
		}
		cfg, err = Parse([]byte(strings.Join(lines, "\n")), dir)
		if err != nil || len(cfg.FlowLogs) != 1 || !cfg.FlowLogs[0].FileCompress || cfg.FlowLogs[0].End == nil {
			t.Errorf("the documented example: %+v, %v", cfg, err)
		}
		for _, arg := range []string{"--flow-export-config=/etc/flatnet/flowlogs/flowlogs.yaml", "--flow-export-dir=" + dir} {
			if !strings.Contains(string(raw), arg) {
				t.Errorf("the agent is not started with %s", arg)
			}
		}
		return
	}
	t.Fatal("no ConfigMap flatnet-flowlogs in agent.yaml")
}
