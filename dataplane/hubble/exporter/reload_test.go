package exporter

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"google.golang.org/protobuf/proto"
)

// configMapDir lays out a ConfigMap volume as the kubelet does: the key is a
// symlink through ..data, a symlink to a timestamped directory, and an update
// writes a new directory and renames a new ..data over the old one.
type configMapDir struct {
	t   *testing.T
	dir string
	gen int
}

func (c *configMapDir) write(content string) {
	c.t.Helper()
	c.gen++
	ts := fmt.Sprintf("..2026_12_06_08_00_%02d.%d", c.gen, c.gen)
	if err := os.Mkdir(filepath.Join(c.dir, ts), 0o755); err != nil {
		c.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(c.dir, ts, "flowlogs.yaml"), []byte(content), 0o644); err != nil {
		c.t.Fatal(err)
	}
	old, _ := os.Readlink(filepath.Join(c.dir, "..data"))
	if err := os.Symlink(ts, filepath.Join(c.dir, "..data_tmp")); err != nil {
		c.t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(c.dir, "..data_tmp"), filepath.Join(c.dir, "..data")); err != nil {
		c.t.Fatal(err)
	}
	if c.gen == 1 {
		if err := os.Symlink("..data/flowlogs.yaml", filepath.Join(c.dir, "flowlogs.yaml")); err != nil {
			c.t.Fatal(err)
		}
	}
	if old != "" {
		if err := os.RemoveAll(filepath.Join(c.dir, old)); err != nil {
			c.t.Fatal(err)
		}
	}
}

// The Manager follows its ConfigMap: it adds, changes and removes exporters
// without a restart, refuses a bad config whole and keeps the one in force.
func TestReloadFollowsConfigMap(t *testing.T) {
	m, logs := newTestManager(t, 0)
	cm := &configMapDir{t: t, dir: filepath.Dir(m.opts.ConfigFile)}
	m.opts.Poll = 1 << 62 // change notices alone: the poll would hide a missed one
	cm.write("flowLogs: [{name: all, filePath: all.log}]\n")
	runManager(t, m)
	eventually(t, "exporter all", func() bool { return slices.Equal(names(m), []string{"all"}) })

	sent := func(i int, ns, verdict string) *flowpb.Flow {
		f := flowOf(i, ns, verdict)
		m.Export(f)
		return f
	}
	f1 := sent(1, "ns-a", "FORWARDED")

	// Change all's filter in place (same file), add drops.
	cm.write(`
flowLogs:
- name: all
  filePath: all.log
  includeFilters: [{source_pod: ["ns-b/"]}]
- name: drops
  filePath: drops/drops.log
  includeFilters: [{verdict: [DROPPED]}]
  fieldMask: [source.namespace, verdict]
`)
	eventually(t, "exporters all and drops", func() bool {
		es := m.running()
		return len(es) == 2 && es[0].name == "all" && len(es[0].view.Load().config.IncludeFilters) == 1
	})
	f2 := sent(2, "ns-b", "FORWARDED")
	f3 := sent(3, "ns-a", "DROPPED")

	// A bad config (an unknown field in one entry) changes nothing.
	cm.write(`
flowLogs:
- {name: all, filePath: all.log}
- {name: drops, filePath: drops/drops.log, includeFilter: [{verdict: [FORWARDED]}]}
`)
	eventually(t, "the bad config refused", func() bool { return counter(m, "", "failure") == 1 })
	if !strings.Contains(logs.String(), `flowLogs[1] (\"drops\"): unknown field \"includeFilter\"`) {
		t.Errorf("the refusal does not name the entry and field:\n%s", logs)
	}
	f4 := sent(4, "ns-b", "DROPPED")

	// Remove all.
	cm.write("flowLogs: [{name: drops, filePath: drops/drops.log, includeFilters: [{verdict: [DROPPED]}], fieldMask: [source.namespace, verdict]}]\n")
	eventually(t, "exporter drops alone", func() bool { return slices.Equal(names(m), []string{"drops"}) })
	f5 := sent(5, "ns-b", "DROPPED")
	m.stopAll()

	check := func(file string, mask []string, want ...*flowpb.Flow) {
		t.Helper()
		mk, _ := newMask(mask)
		got := readLines(t, filepath.Join(m.opts.Dir, file))
		if len(got) != len(want) {
			t.Fatalf("%s: %d lines, want %d", file, len(got), len(want))
		}
		for i := range got {
			if w := mk.apply(want[i]); !proto.Equal(got[i].GetFlow(), w) {
				t.Errorf("%s line %d:\n%v\nwant\n%v", file, i+1, got[i].GetFlow(), w)
			}
		}
	}
	check("all.log", nil, f1, f2, f4)
	check("drops/drops.log", []string{"source.namespace", "verdict"}, f3, f4, f5)
	for op, want := range map[string]float64{"add": 2, "update": 1, "remove": 1, "failure": 1} {
		if got := counter(m, "", op); got != want {
			t.Errorf("hubble_dynamic_exporter_reconfigurations_total{op=%q} = %v, want %v", op, got, want)
		}
	}
}

// An unchanged file is not applied again, and a missing one means no exporters.
func TestReloadMissingAndUnchanged(t *testing.T) {
	m, _ := newTestManager(t, 0)
	if err := m.Reload(); err != nil || len(names(m)) != 0 {
		t.Fatalf("missing file: %v, exporters %v; want none and no error", err, names(m))
	}
	if err := os.WriteFile(m.opts.ConfigFile, []byte("flowLogs: [{name: a, filePath: a.log}]"), 0o644); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := m.Reload(); err != nil {
			t.Fatal(err)
		}
	}
	if got := counter(m, "", "add"); got != 1 {
		t.Errorf("%v adds for one file read three times, want 1", got)
	}
	if err := os.Remove(m.opts.ConfigFile); err != nil {
		t.Fatal(err)
	}
	if err := m.Reload(); err != nil || len(names(m)) != 0 {
		t.Errorf("removed file: %v, exporters %v; want none", err, names(m))
	}
}

// A file that cannot be opened refuses the whole config: the exporter that
// could start does not, the running one stays.
func TestApplyIsAllOrNothing(t *testing.T) {
	m, _ := newTestManager(t, 0)
	apply(t, m, "flowLogs: [{name: a, filePath: a.log}]")
	if err := os.Mkdir(filepath.Join(m.opts.Dir, "taken.log"), 0o755); err != nil { // a directory where a file should go
		t.Fatal(err)
	}
	cfg, err := Parse([]byte("flowLogs: [{name: b, filePath: b.log}, {name: c, filePath: taken.log}]"), m.opts.Dir)
	if err != nil {
		t.Fatal(err)
	}
	err = m.Apply(cfg)
	if err == nil || !strings.Contains(err.Error(), `flowLogs[1] ("c"): filePath: opening it to append`) {
		t.Fatalf("Apply = %v, want the refusal of c's file", err)
	}
	if !slices.Equal(names(m), []string{"a"}) {
		t.Errorf("exporters %v after a refused config, want [a]", names(m))
	}
	if _, err := os.Stat(filepath.Join(m.opts.Dir, "b.log")); err == nil {
		t.Errorf("b.log was created by a refused config")
	}
	// A symlink out of the directory is refused too.
	if err := os.Symlink(t.TempDir(), filepath.Join(m.opts.Dir, "out")); err != nil {
		t.Fatal(err)
	}
	cfg, _ = Parse([]byte("flowLogs: [{name: d, filePath: out/d.log}]"), m.opts.Dir)
	if err := m.Apply(cfg); err == nil || !strings.Contains(err.Error(), "leads out of") {
		t.Errorf("Apply through a symlink out = %v, want a refusal", err)
	}
	m.stopAll()
}

// A valid config the node cannot apply yet (its file's place is taken) is
// reported once and applied as soon as it can be, without a change.
func TestReloadRetriesWhatTheNodeRefused(t *testing.T) {
	m, _ := newTestManager(t, 0)
	taken := filepath.Join(m.opts.Dir, "a.log")
	if err := os.Mkdir(taken, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(m.opts.ConfigFile, []byte("flowLogs: [{name: a, filePath: a.log}]"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := m.Reload(); err == nil || !strings.Contains(err.Error(), `flowLogs[0] ("a"): filePath: opening it to append`) {
		t.Fatalf("Reload = %v, want a.log refused", err)
	}
	if err := m.Reload(); err != nil || len(names(m)) != 0 {
		t.Fatalf("second Reload = %v, exporters %v; want the same failure, unreported", err, names(m))
	}
	if got := counter(m, "", "failure"); got != 1 {
		t.Errorf("%v failures counted, want 1", got)
	}
	if err := os.Remove(taken); err != nil {
		t.Fatal(err)
	}
	if err := m.Reload(); err != nil || !slices.Equal(names(m), []string{"a"}) {
		t.Errorf("Reload once a.log can be written = %v, exporters %v; want [a]", err, names(m))
	}
	m.stopAll()
}
