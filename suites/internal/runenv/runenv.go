// Package runenv reads the settings a policy suite takes from its environment
// (set by scripts/e2e.sh, or by hand against any cluster), so every suite reads
// them the same way and a bad value fails naming the variable and the fix.
package runenv

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Settings are the knobs of a suite run.
type Settings struct {
	// ProbeImage is the probe image every pod runs (PROBE_IMAGE).
	ProbeImage string
	// ArtifactsDir receives the HTML report and the matrices' JUnit
	// (ARTIFACTS, default <repo>/_artifacts/e2e as scripts/e2e.sh uses).
	ArtifactsDir string
	// Seed drives the random policy family (FLATNET_SEED, default the time);
	// SeedFromEnv says whether it was given, so the suite can say how to replay.
	Seed        uint64
	SeedFromEnv bool
	// RandomCases is how many random cases a run probes (FLATNET_RANDOM_CASES).
	RandomCases int
	// ProbeTimeout bounds each probe of a matrix (FLATNET_PROBE_TIMEOUT).
	ProbeTimeout time.Duration
	// EnforceTimeout bounds the wait for a policy change to show in the
	// probes (FLATNET_ENFORCE_TIMEOUT).
	EnforceTimeout time.Duration
	// NodeSubnet is the flat subnet of nodes and pods used by CIDR cases
	// (FLATNET_NODE_SUBNET, default NODE_SUBNET of kind-configs/network.env).
	NodeSubnet netip.Prefix
	// Placement is where the suites' pods may run (FLATNET_NODE_SELECTOR,
	// FLATNET_TOLERATIONS).
	Placement Placement
}

// Defaults that keep one matrix near one probe timeout and the whole policy
// suite within minutes.
const (
	DefaultRandomCases    = 4
	DefaultProbeTimeout   = 1500 * time.Millisecond
	DefaultEnforceTimeout = 30 * time.Second
)

// Lookup reads one variable; os.LookupEnv in suites, a map in tests.
type Lookup func(string) (string, bool)

// Read reads the settings. repoRoot locates the defaults that live in the
// repository (kind-configs/network.env, _artifacts/e2e); now seeds the random
// family when FLATNET_SEED is unset.
func Read(lookup Lookup, repoRoot string, now time.Time) (Settings, error) {
	s := Settings{
		RandomCases:    DefaultRandomCases,
		ProbeTimeout:   DefaultProbeTimeout,
		EnforceTimeout: DefaultEnforceTimeout,
	}
	get := func(k string) string {
		v, _ := lookup(k)
		return strings.TrimSpace(v)
	}
	s.ProbeImage = get("PROBE_IMAGE")
	if s.ProbeImage == "" {
		return Settings{}, fmt.Errorf("PROBE_IMAGE is not set: make e2e sets it to the probe image it built and loaded (scripts/probe-image.sh prints it); against another cluster, load that image into its nodes and export PROBE_IMAGE=<ref>")
	}
	if strings.HasSuffix(s.ProbeImage, ":latest") {
		return Settings{}, fmt.Errorf("PROBE_IMAGE=%s: a :latest tag makes the kubelet try to pull it and there is no registry; use the content-hash tag scripts/probe-image.sh prints", s.ProbeImage)
	}
	s.ArtifactsDir = get("ARTIFACTS")
	if s.ArtifactsDir == "" {
		s.ArtifactsDir = filepath.Join(repoRoot, "_artifacts", "e2e")
	}
	if v := get("FLATNET_SEED"); v != "" {
		seed, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return Settings{}, fmt.Errorf("FLATNET_SEED=%q: must be an unsigned decimal number (the seed a previous run printed)", v)
		}
		s.Seed, s.SeedFromEnv = seed, true
	} else {
		s.Seed = uint64(now.UnixNano())
	}
	if v := get("FLATNET_RANDOM_CASES"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return Settings{}, fmt.Errorf("FLATNET_RANDOM_CASES=%q: must be a number of cases, 0 or more", v)
		}
		s.RandomCases = n
	}
	for _, d := range []struct {
		name string
		into *time.Duration
	}{{"FLATNET_PROBE_TIMEOUT", &s.ProbeTimeout}, {"FLATNET_ENFORCE_TIMEOUT", &s.EnforceTimeout}} {
		v := get(d.name)
		if v == "" {
			continue
		}
		t, err := time.ParseDuration(v)
		if err != nil || t <= 0 {
			return Settings{}, fmt.Errorf("%s=%q: must be a positive duration such as 1500ms or 30s", d.name, v)
		}
		*d.into = t
	}
	subnet := get("FLATNET_NODE_SUBNET")
	source := "FLATNET_NODE_SUBNET"
	if subnet == "" {
		var err error
		source = filepath.Join(repoRoot, "kind-configs", "network.env")
		if subnet, err = nodeSubnetFromEnvFile(source); err != nil {
			return Settings{}, err
		}
	}
	p, err := netip.ParsePrefix(subnet)
	if err != nil {
		return Settings{}, fmt.Errorf("%s: node subnet %q: %v: write a CIDR such as 10.224.0.0/16", source, subnet, err)
	}
	s.NodeSubnet = p.Masked()
	if s.Placement, err = ReadPlacement(lookup); err != nil {
		return Settings{}, err
	}
	return s, nil
}

// nodeSubnetFromEnvFile reads NODE_SUBNET's default from network.env, whose
// line is NODE_SUBNET=${NODE_SUBNET:-10.224.0.0/16} (shell syntax, so the
// default is what the cluster scripts use when nothing overrides it).
func nodeSubnetFromEnvFile(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("reading the node subnet: %w; set FLATNET_NODE_SUBNET=<cidr> when running outside the repository", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		v, ok := strings.CutPrefix(strings.TrimSpace(line), "NODE_SUBNET=")
		if !ok {
			continue
		}
		if inner, ok := strings.CutPrefix(v, "${NODE_SUBNET:-"); ok {
			v = strings.TrimSuffix(inner, "}")
		}
		return strings.Trim(v, `"'`), nil
	}
	return "", fmt.Errorf("%s has no NODE_SUBNET line; set FLATNET_NODE_SUBNET=<cidr>", path)
}

// RepoRoot finds the repository root (the directory holding go.mod) from dir
// upwards: Ginkgo runs each suite in its own package directory.
func RepoRoot(dir string) (string, error) {
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("no go.mod in %s or above: run the suites from inside the flatnet repository", dir)
		}
	}
}
