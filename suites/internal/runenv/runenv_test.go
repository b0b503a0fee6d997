package runenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func env(kv map[string]string) Lookup {
	return func(k string) (string, bool) { v, ok := kv[k]; return v, ok }
}

func repoWithSubnetLine(t *testing.T, line string) string {
	t.Helper()
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "kind-configs"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "kind-configs", "network.env"), []byte("# comment\n"+line+"\nOTHER=1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return root
}

func TestReadDefaults(t *testing.T) {
	root := repoWithSubnetLine(t, "NODE_SUBNET=${NODE_SUBNET:-10.77.0.0/16}")
	now := time.Unix(1700000000, 42)
	s, err := Read(env(map[string]string{"PROBE_IMAGE": "flatnet/probe:abc"}), root, now)
	if err != nil {
		t.Fatal(err)
	}
	if s.ProbeImage != "flatnet/probe:abc" || s.ArtifactsDir != filepath.Join(root, "_artifacts", "e2e") {
		t.Errorf("image %q artifacts %q", s.ProbeImage, s.ArtifactsDir)
	}
	if s.SeedFromEnv || s.Seed != uint64(now.UnixNano()) {
		t.Errorf("seed %d (from env %v), want the time %d", s.Seed, s.SeedFromEnv, now.UnixNano())
	}
	if s.NodeSubnet.String() != "10.77.0.0/16" {
		t.Errorf("node subnet %s, want the network.env default 10.77.0.0/16", s.NodeSubnet)
	}
	if s.ProbeTimeout != DefaultProbeTimeout || s.EnforceTimeout != DefaultEnforceTimeout || s.RandomCases != DefaultRandomCases {
		t.Errorf("defaults not applied: %+v", s)
	}
}

func TestReadOverrides(t *testing.T) {
	s, err := Read(env(map[string]string{
		"PROBE_IMAGE": "img:1", "ARTIFACTS": "/tmp/a", "FLATNET_SEED": "18446744073709551615",
		"FLATNET_RANDOM_CASES": "0", "FLATNET_PROBE_TIMEOUT": "2s", "FLATNET_ENFORCE_TIMEOUT": "1m",
		"FLATNET_NODE_SUBNET": "10.1.2.3/8",
	}), "/nonexistent", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if s.ArtifactsDir != "/tmp/a" || !s.SeedFromEnv || s.Seed != 18446744073709551615 || s.RandomCases != 0 ||
		s.ProbeTimeout != 2*time.Second || s.EnforceTimeout != time.Minute || s.NodeSubnet.String() != "10.0.0.0/8" {
		t.Errorf("overrides not applied: %+v", s)
	}
}

func TestReadRefusesBadValues(t *testing.T) {
	root := repoWithSubnetLine(t, "NODE_SUBNET=10.224.0.0/16")
	for _, c := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{}, "PROBE_IMAGE is not set"},
		{map[string]string{"PROBE_IMAGE": "flatnet/probe:latest"}, ":latest"},
		{map[string]string{"PROBE_IMAGE": "i:1", "FLATNET_SEED": "-3"}, "FLATNET_SEED"},
		{map[string]string{"PROBE_IMAGE": "i:1", "FLATNET_RANDOM_CASES": "many"}, "FLATNET_RANDOM_CASES"},
		{map[string]string{"PROBE_IMAGE": "i:1", "FLATNET_PROBE_TIMEOUT": "0s"}, "FLATNET_PROBE_TIMEOUT"},
		{map[string]string{"PROBE_IMAGE": "i:1", "FLATNET_ENFORCE_TIMEOUT": "soon"}, "FLATNET_ENFORCE_TIMEOUT"},
		{map[string]string{"PROBE_IMAGE": "i:1", "FLATNET_NODE_SUBNET": "10.224.0.1"}, "FLATNET_NODE_SUBNET"},
	} {
		_, err := Read(env(c.env), root, time.Now())
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Read(%v) = %v, want an error naming %s", c.env, err, c.want)
		}
	}
	if _, err := Read(env(map[string]string{"PROBE_IMAGE": "i:1"}), t.TempDir(), time.Now()); err == nil || !strings.Contains(err.Error(), "FLATNET_NODE_SUBNET") {
		t.Errorf("without network.env: %v, want a hint to set FLATNET_NODE_SUBNET", err)
	}
}

// The repository's own network.env, read here and by the shell that the
// cluster scripts use, must give the same subnet.
func TestRepositoryNetworkEnvMatchesShell(t *testing.T) {
	wd, _ := os.Getwd()
	root, err := RepoRoot(wd)
	if err != nil {
		t.Fatal(err)
	}
	s, err := Read(env(map[string]string{"PROBE_IMAGE": "i:1"}), root, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("bash", "-c", `unset NODE_SUBNET; source kind-configs/network.env; echo "$NODE_SUBNET"`)
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("sourcing network.env: %v", err)
	}
	if got := strings.TrimSpace(string(out)); got != s.NodeSubnet.String() {
		t.Errorf("shell says NODE_SUBNET=%s, runenv read %s", got, s.NodeSubnet)
	}
}
