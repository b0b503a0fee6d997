package exporter

import (
	"fmt"
	"strings"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"google.golang.org/protobuf/proto"
)

// Cilium's own example config (pkg/hubble/exporter/testdata), less the
// aggregation flatnet does not do, with its files in flatnet's directory.
const ciliumExample = `
flowLogs:
- name: "test001"
  filePath: "/var/log/flatnet/flows/test001.log"
  fieldMask: []
  includeFilters: []
  excludeFilters: []
  fileMaxSizeMb: 0
  fileMaxBackups: 0
  fileCompress: false
  end: "2023-10-09T23:59:59-07:00"
- name: "test002"
  filePath: "pa/test002.log"
  fieldMask: ["source.namespace", "source.pod_name", "destination.namespace", "destination.pod_name", "verdict"]
  includeFilters:
  - source_pod: ["default/"]
    source_label: ["networking.example.com/flow-logs=enabled"]
    event_type:
    - type: 1
  - destination_pod: ["frontend/nginx-975996d4c-7hhgt"]
  excludeFilters: []
  fileMaxSizeMb: 10
  fileMaxBackups: 3
  fileCompress: true
- name: "test003"
  filePath: "/var/log/flatnet/flows/test003.log"
  excludeFilters:
  - destination_pod: ["ingress/"]
  fileMaxSizeMb: 1
  fileMaxBackups: 1
`

func TestParseCiliumExample(t *testing.T) {
	cfg, err := Parse([]byte(ciliumExample), "/var/log/flatnet/flows")
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.FlowLogs) != 3 {
		t.Fatalf("%d flow logs, want 3", len(cfg.FlowLogs))
	}
	a, b, c := cfg.FlowLogs[0], cfg.FlowLogs[1], cfg.FlowLogs[2]
	end := time.Date(2023, 10, 9, 23, 59, 59, 0, time.FixedZone("", -7*3600))
	if a.Name != "test001" || a.FilePath != "/var/log/flatnet/flows/test001.log" || a.End == nil || !a.End.Equal(end) {
		t.Errorf("test001 = %+v", a)
	}
	// Zero size and backups are Cilium's defaults, 10 MB and 5.
	if a.FileMaxSizeMB != 10 || a.FileMaxBackups != 5 || a.FileCompress {
		t.Errorf("test001 rotation = %d MB × %d compress=%v, want 10 × 5 false", a.FileMaxSizeMB, a.FileMaxBackups, a.FileCompress)
	}
	// A relative path is inside the directory.
	if b.FilePath != "/var/log/flatnet/flows/pa/test002.log" || b.FileMaxSizeMB != 10 || b.FileMaxBackups != 3 || !b.FileCompress || b.End != nil {
		t.Errorf("test002 = %+v", b)
	}
	if len(b.FieldMask) != 5 || b.FieldMask[4] != "verdict" {
		t.Errorf("test002 field mask = %v", b.FieldMask)
	}
	want := []*flowpb.FlowFilter{
		{SourcePod: []string{"default/"}, SourceLabel: []string{"networking.example.com/flow-logs=enabled"},
			EventType: []*flowpb.EventTypeFilter{{Type: 1}}},
		{DestinationPod: []string{"frontend/nginx-975996d4c-7hhgt"}},
	}
	if len(b.IncludeFilters) != 2 || !proto.Equal(b.IncludeFilters[0], want[0]) || !proto.Equal(b.IncludeFilters[1], want[1]) {
		t.Errorf("test002 include filters = %v, want %v", b.IncludeFilters, want)
	}
	if c.FileMaxSizeMB != 1 || c.FileMaxBackups != 1 || len(c.ExcludeFilters) != 1 || c.ExcludeFilters[0].DestinationPod[0] != "ingress/" {
		t.Errorf("test003 = %+v", c)
	}
}

func TestParseEmpty(t *testing.T) {
	for _, in := range []string{"", "flowLogs: []\n", "# nothing yet\n", `{"flowLogs": []}`, "flowLogs:\n"} {
		cfg, err := Parse([]byte(in), "/d")
		if err != nil || len(cfg.FlowLogs) != 0 {
			t.Errorf("Parse(%q) = %+v, %v; want no flow logs", in, cfg, err)
		}
	}
}

// Every refusal names the entry and the field, and says what would do.
func TestParseRefuses(t *testing.T) {
	for _, tc := range []struct {
		name, yaml string
		want       []string
	}{
		{"top-level typo", "flowlogs: []", []string{`unknown field "flowlogs"`, "flowLogs"}},
		{"not yaml", "flowLogs: [", []string{"not YAML or JSON"}},
		{"no name", "flowLogs: [{filePath: a.log}]", []string{"flowLogs[0]: name", "letters"}},
		{"bad name", `flowLogs: [{name: "a b", filePath: a.log}]`, []string{`flowLogs[0] ("a b"): name: "a b"`}},
		{"duplicate name", "flowLogs: [{name: a, filePath: a.log}, {name: a, filePath: b.log}]",
			[]string{`flowLogs[1] ("a"): name: "a" is also flowLogs[0]'s`}},
		{"duplicate path", "flowLogs: [{name: a, filePath: x.log}, {name: b, filePath: /d/./x.log}]",
			[]string{`flowLogs[1] ("b"): filePath: /d/x.log is also flowLogs[0]'s`}},
		{"no path", "flowLogs: [{name: a}]", []string{`flowLogs[0] ("a"): filePath: missing; name a file in /d`}},
		{"outside", "flowLogs: [{name: a, filePath: /etc/cron.d/x}]",
			[]string{`flowLogs[0] ("a"): filePath: /etc/cron.d/x is not a file inside /d`}},
		{"escapes", "flowLogs: [{name: a, filePath: ../etc/x}]", []string{`filePath: ../etc/x is not a file inside /d`}},
		{"escapes absolute", "flowLogs: [{name: a, filePath: /d/../etc/x}]", []string{`filePath: /d/../etc/x is not a file inside /d`}},
		{"the directory itself", "flowLogs: [{name: a, filePath: /d/}]", []string{`filePath: /d/ is not a file inside /d`}},
		{"stdout", "flowLogs: [{name: a, filePath: stdout}]", []string{"filePath: stdout: flatnet writes flow logs to files only"}},
		{"entry typo", "flowLogs: [{name: a, filepath: a.log}]", []string{`flowLogs[0] ("a"): unknown field "filepath"`}},
		{"wrong type", "flowLogs: [{name: a, filePath: a.log, fileMaxSizeMb: ten}]", []string{`flowLogs[0] ("a")`, "fileMaxSizeMb"}},
		{"negative size", "flowLogs: [{name: a, filePath: a.log, fileMaxSizeMb: -1}]", []string{`flowLogs[0] ("a"): fileMaxSizeMb: -1`}},
		{"negative backups", "flowLogs: [{name: a, filePath: a.log, fileMaxBackups: -2}]", []string{`fileMaxBackups: -2`}},
		{"bad end", "flowLogs: [{name: a, filePath: a.log, end: tomorrow}]", []string{`flowLogs[0] ("a"): end: "tomorrow": want an RFC 3339 time`}},
		{"bad mask", "flowLogs: [{name: a, filePath: a.log, fieldMask: [source.podname]}]",
			[]string{`flowLogs[0] ("a"): fieldMask:`, "source.podname", "source.pod_name"}},
		{"mask through a list", "flowLogs: [{name: a, filePath: a.log, fieldMask: [ingress_denied_by.name]}]",
			[]string{`flowLogs[0] ("a"): fieldMask:`}},
		{"unknown filter field", "flowLogs: [{name: a, filePath: a.log, includeFilters: [{source_podz: [x/]}]}]",
			[]string{`flowLogs[0] ("a"): includeFilters[0]:`, "source_podz"}},
		{"bad filter value", "flowLogs: [{name: a, filePath: a.log, excludeFilters: [{}, {verdict: [MAYBE]}]}]",
			[]string{`flowLogs[0] ("a"): excludeFilters[1]:`, "MAYBE"}},
		{"filter the filter package refuses", "flowLogs: [{name: a, filePath: a.log, excludeFilters: [{source_ip: [10.0.0/8]}]}]",
			[]string{`flowLogs[0] ("a"): excludeFilters[0].source_ip[0]`, "10.0.0/8"}},
		{"aggregation", "flowLogs: [{name: a, filePath: a.log, fieldAggregate: [source]}]",
			[]string{`flowLogs[0] ("a"): fieldAggregate, aggregationInterval: flatnet does not aggregate flows`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.yaml), "/d")
			if err == nil {
				t.Fatalf("Parse(%s) accepted it", tc.yaml)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}

// The number of exporters is bounded: each has a queue, a goroutine and a file.
func TestParseBoundsExporters(t *testing.T) {
	var b strings.Builder
	b.WriteString("flowLogs:\n")
	for i := range MaxFlowLogs + 1 {
		fmt.Fprintf(&b, "- {name: e%d, filePath: e%d.log}\n", i, i)
	}
	if _, err := Parse([]byte(b.String()), "/d"); err == nil || !strings.Contains(err.Error(), "flowLogs: 33 exporters, at most 32") {
		t.Errorf("Parse of %d exporters = %v, want refused", MaxFlowLogs+1, err)
	}
}

// One file with several mistakes names all of them.
func TestParseNamesEveryMistake(t *testing.T) {
	_, err := Parse([]byte(`
flowLogs:
- {name: good, filePath: good.log}
- {name: out, filePath: /tmp/x.log}
- {name: typo, filePath: t.log, includeFilter: []}
`), "/d")
	if err == nil {
		t.Fatal("accepted")
	}
	for _, w := range []string{`flowLogs[1] ("out"): filePath`, `flowLogs[2] ("typo"): unknown field "includeFilter"`} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not say %q", err, w)
		}
	}
	if strings.Contains(err.Error(), "good") {
		t.Errorf("error %q blames the good entry", err)
	}
}
