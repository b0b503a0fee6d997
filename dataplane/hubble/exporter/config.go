package exporter

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"
)

// Defaults of Cilium's dynamic exporter for an entry that leaves the rotation unset.
const (
	DefaultFileMaxSizeMB  = 10
	DefaultFileMaxBackups = 5
)

// MaxFlowLogs caps the exporters of one config: each holds a queue of flows, a
// goroutine and a file, so their number bounds the memory flow logs take.
const MaxFlowLogs = 32

// Config is the dynamic exporter's file, as Cilium's hubble-flowlog-config
// ConfigMap holds it: `flowLogs: [{name, filePath, ...}]`.
type Config struct {
	FlowLogs []FlowLog
}

// FlowLog is one exporter: the flows matching IncludeFilters and none of
// ExcludeFilters, cut down to FieldMask, appended to FilePath until End.
type FlowLog struct {
	Name string
	// FilePath is absolute and inside the exporters' directory (Parse resolves a
	// relative one against it).
	FilePath       string
	FieldMask      []string
	IncludeFilters []*flowpb.FlowFilter
	ExcludeFilters []*flowpb.FlowFilter
	// End, when set, is when the exporter stops writing (it stays configured).
	End            *time.Time
	FileMaxSizeMB  int
	FileMaxBackups int
	FileCompress   bool
}

// rawFlowLog is an entry as written: filters stay raw so they are decoded by
// protojson (FlowFilter's own field names, snake_case or camelCase) one by one,
// and an error can name the filter.
type rawFlowLog struct {
	Name           string            `json:"name"`
	FilePath       string            `json:"filePath"`
	FieldMask      []string          `json:"fieldMask"`
	IncludeFilters []json.RawMessage `json:"includeFilters"`
	ExcludeFilters []json.RawMessage `json:"excludeFilters"`
	End            *string           `json:"end"`
	FileMaxSizeMB  *int              `json:"fileMaxSizeMb"`
	FileMaxBackups *int              `json:"fileMaxBackups"`
	FileCompress   bool              `json:"fileCompress"`
	// Cilium's aggregation fields, recognised only to refuse them by name.
	FieldAggregate      json.RawMessage `json:"fieldAggregate"`
	AggregationInterval json.RawMessage `json:"aggregationInterval"`
}

// validName is an exporter name: it labels metrics and log lines.
var validName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// Parse reads a config file (YAML or JSON) and checks every entry, the file paths
// against dir (absolute, clean). The error names each bad entry and field, all of
// them at once; nothing of a bad file is used.
func Parse(data []byte, dir string) (Config, error) {
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return Config{}, fmt.Errorf("not YAML or JSON: %w", err)
	}
	var top struct {
		FlowLogs []json.RawMessage `json:"flowLogs"`
	}
	if len(bytes.TrimSpace(js)) > 0 && string(bytes.TrimSpace(js)) != "null" {
		if err := strictJSON(js, &top); err != nil {
			return Config{}, fmt.Errorf("%w (the file holds one key, flowLogs: a list of exporters)", err)
		}
	}
	if len(top.FlowLogs) > MaxFlowLogs {
		return Config{}, fmt.Errorf("flowLogs: %d exporters, at most %d; give one exporter several include filters instead", len(top.FlowLogs), MaxFlowLogs)
	}
	var (
		cfg   Config
		errs  []error
		seen  = map[string]int{} // name → index
		paths = map[string]int{} // cleaned path → index
	)
	for i, raw := range top.FlowLogs {
		fl, err := parseEntry(raw, dir)
		where := entryName(i, raw)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", where, err))
			continue
		}
		if j, dup := seen[fl.Name]; dup {
			errs = append(errs, fmt.Errorf("%s: name: %q is also flowLogs[%d]'s; names must be unique", where, fl.Name, j))
		}
		if j, dup := paths[fl.FilePath]; dup {
			errs = append(errs, fmt.Errorf("%s: filePath: %s is also flowLogs[%d]'s; give each exporter a file of its own", where, fl.FilePath, j))
		}
		seen[fl.Name], paths[fl.FilePath] = i, i
		cfg.FlowLogs = append(cfg.FlowLogs, fl)
	}
	if len(errs) > 0 {
		return Config{}, errors.Join(errs...)
	}
	return cfg, nil
}

// entryName is how errors name entry i: its index and, if it has one, its name.
func entryName(i int, raw json.RawMessage) string {
	var n struct {
		Name string `json:"name"`
	}
	if json.Unmarshal(raw, &n) == nil && n.Name != "" {
		return fmt.Sprintf("flowLogs[%d] (%q)", i, n.Name)
	}
	return fmt.Sprintf("flowLogs[%d]", i)
}

func parseEntry(raw json.RawMessage, dir string) (FlowLog, error) {
	var r rawFlowLog
	if err := strictJSON(raw, &r); err != nil {
		return FlowLog{}, err
	}
	if r.FieldAggregate != nil || r.AggregationInterval != nil {
		return FlowLog{}, errors.New("fieldAggregate, aggregationInterval: flatnet does not aggregate flows; remove them")
	}
	if !validName.MatchString(r.Name) {
		return FlowLog{}, fmt.Errorf("name: %q: want 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit", r.Name)
	}
	fl := FlowLog{Name: r.Name, FieldMask: r.FieldMask, FileCompress: r.FileCompress,
		FileMaxSizeMB: DefaultFileMaxSizeMB, FileMaxBackups: DefaultFileMaxBackups}
	var err error
	if fl.FilePath, err = confine(r.FilePath, dir); err != nil {
		return FlowLog{}, fmt.Errorf("filePath: %w", err)
	}
	if _, err := newMask(r.FieldMask); err != nil {
		return FlowLog{}, fmt.Errorf("fieldMask: %w", err)
	}
	if fl.IncludeFilters, err = decodeFilters(r.IncludeFilters); err != nil {
		return FlowLog{}, fmt.Errorf("includeFilters%w", err)
	}
	if fl.ExcludeFilters, err = decodeFilters(r.ExcludeFilters); err != nil {
		return FlowLog{}, fmt.Errorf("excludeFilters%w", err)
	}
	if _, err := compileFilters(fl.IncludeFilters, fl.ExcludeFilters); err != nil {
		return FlowLog{}, err
	}
	if r.End != nil {
		end, err := time.Parse(time.RFC3339, *r.End)
		if err != nil {
			return FlowLog{}, fmt.Errorf("end: %q: want an RFC 3339 time, e.g. 2026-12-31T23:59:59Z", *r.End)
		}
		fl.End = &end
	}
	// Zero keeps Cilium's meaning: the default.
	if r.FileMaxSizeMB != nil && *r.FileMaxSizeMB != 0 {
		if *r.FileMaxSizeMB < 0 {
			return FlowLog{}, fmt.Errorf("fileMaxSizeMb: %d: want a size in MB above 0 (0 or unset: %d)", *r.FileMaxSizeMB, DefaultFileMaxSizeMB)
		}
		fl.FileMaxSizeMB = *r.FileMaxSizeMB
	}
	if r.FileMaxBackups != nil && *r.FileMaxBackups != 0 {
		if *r.FileMaxBackups < 0 {
			return FlowLog{}, fmt.Errorf("fileMaxBackups: %d: want a count above 0 (0 or unset: %d)", *r.FileMaxBackups, DefaultFileMaxBackups)
		}
		fl.FileMaxBackups = *r.FileMaxBackups
	}
	return fl, nil
}

// confine returns path made absolute against dir, refusing one outside dir: the
// agent is privileged, and a ConfigMap must not make it write over host files.
func confine(path, dir string) (string, error) {
	if path == "" {
		return "", fmt.Errorf("missing; name a file in %s", dir)
	}
	if path == "stdout" {
		return "", fmt.Errorf("stdout: flatnet writes flow logs to files only; name a file in %s", dir)
	}
	p := path
	if !filepath.IsAbs(p) {
		p = filepath.Join(dir, p)
	}
	p = filepath.Clean(p)
	rel, err := filepath.Rel(dir, p)
	if err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, "../") {
		return "", fmt.Errorf("%s is not a file inside %s, the only directory flow logs may be written to", path, dir)
	}
	return p, nil
}

// decodeFilters decodes each filter with protojson, as Hubble reads FlowFilters
// (unknown fields refused); the error starts with the index: "[1]: ...".
func decodeFilters(raws []json.RawMessage) ([]*flowpb.FlowFilter, error) {
	out := make([]*flowpb.FlowFilter, 0, len(raws))
	for i, raw := range raws {
		f := new(flowpb.FlowFilter)
		if err := protojson.Unmarshal(raw, f); err != nil {
			return nil, fmt.Errorf("[%d]: %w (fields are FlowFilter's, e.g. source_pod, verdict)", i, err)
		}
		out = append(out, f)
	}
	return out, nil
}

// strictJSON decodes data into v refusing any key that is not exactly one of
// v's (encoding/json alone matches keys case-insensitively, so "filepath" would
// pass for filePath, and "flowlogs" would silently configure nothing).
func strictJSON(data []byte, v any) error {
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(data, &keys); err != nil {
		return err
	}
	known := jsonKeys(reflect.TypeOf(v).Elem())
	for k := range keys {
		if !slices.Contains(known, k) {
			return fmt.Errorf("unknown field %q (known: %s)", k, strings.Join(known, ", "))
		}
	}
	return json.Unmarshal(data, v)
}

// jsonKeys lists the json names of struct type t's fields.
func jsonKeys(t reflect.Type) []string {
	var out []string
	for i := range t.NumField() {
		if name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ","); name != "" {
			out = append(out, name)
		}
	}
	return out
}
