package agent

import (
	"context"
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/flatnet/flatnet/dataplane/bpf"
	"github.com/flatnet/flatnet/dataplane/enforce"
	"github.com/flatnet/flatnet/dataplane/flows"
	hubblemetrics "github.com/flatnet/flatnet/dataplane/hubble/metrics"
	"github.com/flatnet/flatnet/dataplane/identity"
)

const dashboardFile = "../manifests/observability/flatnet-dashboard.json"

// noDatapath stands in for the BPF datapath: only the collectors' descriptions matter.
type noDatapath struct{}

func (noDatapath) Counters(context.Context) ([]bpf.Counter, error) { return nil, nil }
func (noDatapath) EventsLost(context.Context) (uint64, error)      { return 0, nil }
func (noDatapath) Identities(context.Context) (map[identity.Sum]identity.ID, error) {
	return nil, nil
}

type noPods struct{}

func (noPods) LocalPods() map[int]string { return nil }

// allHubbleMetrics enables every Hubble metric flatnet serves: the dashboard may
// show the ones --hubble-metrics leaves off by default (their panels say so).
const allHubbleMetrics = "flow drop tcp policy port-distribution flows-to-world"

// hubbleMetrics is what --hubble-metrics=specs enables, on a datapath that
// loses no events.
func hubbleMetrics(t *testing.T, specs string) *hubblemetrics.Metrics {
	t.Helper()
	parsed, err := hubblemetrics.ParseSpecs(specs)
	if err != nil {
		t.Fatal(err)
	}
	hm, err := hubblemetrics.New(hubblemetrics.Config{Specs: parsed, Datapath: noDatapath{}})
	if err != nil {
		t.Fatal(err)
	}
	return hm
}

// agentMetricNames is every family the agent exports, from the registry Run builds
// (NewMetrics plus registerPolicyMetrics), described rather than listed here.
func agentMetricNames(t *testing.T) map[string]bool {
	m := NewMetrics()
	registerPolicyMetrics(m, noDatapath{}, noPods{}, enforce.NewMetrics(), flows.NewPolicyDrops(), hubbleMetrics(t, allHubbleMetrics))
	names := map[string]bool{}
	for _, n := range m.Names() {
		names[n] = true
	}
	if !names["flatnet_datapath_packets_total"] || !names["flatnet_cni_operation_duration_seconds"] {
		t.Fatalf("the agent's registry lacks its own families: %v", m.Names())
	}
	return names
}

// Series Prometheus itself adds to every scrape.
var synthetic = map[string]bool{"up": true, "scrape_duration_seconds": true, "scrape_samples_scraped": true}

var (
	stringLit  = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'`)
	matchers   = regexp.MustCompile(`\{[^{}]*\}`)
	ranges     = regexp.MustCompile(`\[[^\[\]]*\]`)
	grouping   = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)`)
	identifier = regexp.MustCompile(`[A-Za-z_:][A-Za-z0-9_:]*(\s*\()?`)
	labelVals  = regexp.MustCompile(`^\s*label_values\(\s*(?:([A-Za-z_:][A-Za-z0-9_:]*)?\s*(\{[^}]*\})?\s*,)?\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*$`)
	keywords   = map[string]bool{"and": true, "or": true, "unless": true, "bool": true, "offset": true, "inf": true, "nan": true, "Inf": true, "NaN": true}
)

// metricNames returns the metric names a PromQL expression selects: what is left
// after string literals, label matchers, range selectors, grouping clauses, Grafana
// variables, function calls, keywords and numbers are taken out.
func metricNames(expr string) []string {
	s := stringLit.ReplaceAllString(expr, `""`)
	s = matchers.ReplaceAllString(s, " ")
	s = ranges.ReplaceAllString(s, " ")
	s = grouping.ReplaceAllString(s, " ")
	s = regexp.MustCompile(`\$\{?\w+\}?`).ReplaceAllString(s, " ")
	var out []string
	for _, m := range identifier.FindAllStringSubmatchIndex(s, -1) {
		word := strings.TrimRight(s[m[0]:m[1]], " (")
		if m[2] >= 0 || keywords[word] { // a function call or a keyword
			continue
		}
		if m[0] > 0 && (s[m[0]-1] >= '0' && s[m[0]-1] <= '9' || s[m[0]-1] == '.') {
			continue // the exponent or unit of a number (1e3, 5m)
		}
		out = append(out, word)
	}
	return out
}

func TestMetricNames(t *testing.T) {
	for expr, want := range map[string][]string{
		`sum by (verdict, direction) (rate(flatnet_datapath_packets_total{node=~"$node",verdict="DROPPED"}[$__rate_interval]))`: {"flatnet_datapath_packets_total"},
		`histogram_quantile(0.99, sum by (le) (rate(a_bucket{op="ADD"}[5m])))`:                                                  {"a_bucket"},
		`max by (map) (x{n="a b"} / ignoring(map) y) > 0.9 and on(node) up == 1`:                                                {"x", "y", "up"},
		`topk(10, z) or vector(0)`: {"z"},
	} {
		if got := metricNames(expr); !slices.Equal(got, want) {
			t.Errorf("metricNames(%s) = %v, want %v", expr, got, want)
		}
	}
}

// known says whether name is a family the agent exports, or a histogram's series of one.
func known(names map[string]bool, name string) bool {
	if names[name] || synthetic[name] {
		return true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suffix); ok && names[base] {
			return true
		}
	}
	return false
}

type dashPanel struct {
	ID         *int              `json:"id"`
	Type       string            `json:"type"`
	Title      string            `json:"title"`
	Datasource *dashDatasource   `json:"datasource"`
	Targets    []json.RawMessage `json:"targets"`
	GridPos    *struct{ H, W, X, Y int }
	Panels     []dashPanel `json:"panels"` // a collapsed row's
}

type dashDatasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type dashTarget struct {
	Datasource *dashDatasource `json:"datasource"`
	RefID      string          `json:"refId"`
	Expr       string          `json:"expr"`
}

// TestDashboard: the Grafana dashboard is well formed (recent schema, a Prometheus
// datasource variable used by every panel and query, node and pod variables,
// unique panel ids, queries with refIds) and every metric its queries and
// variables name is one the agent registers.
func TestDashboard(t *testing.T) {
	raw, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		UID           string      `json:"uid"`
		Title         string      `json:"title"`
		SchemaVersion int         `json:"schemaVersion"`
		Panels        []dashPanel `json:"panels"`
		Templating    struct {
			List []struct {
				Name       string          `json:"name"`
				Type       string          `json:"type"`
				Query      json.RawMessage `json:"query"`
				Datasource *dashDatasource `json:"datasource"`
			} `json:"list"`
		} `json:"templating"`
	}
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	if d.UID == "" || d.Title == "" {
		t.Errorf("dashboard needs a uid and a title")
	}
	if d.SchemaVersion < 36 {
		t.Errorf("schemaVersion %d: want a recent one (>= 36, Grafana 9+)", d.SchemaVersion)
	}
	names := agentMetricNames(t)
	check := func(where, expr string) {
		t.Helper()
		got := metricNames(expr)
		if len(got) == 0 {
			t.Errorf("%s: %q selects no metric", where, expr)
		}
		for _, n := range got {
			if !known(names, n) {
				t.Errorf("%s: %q uses %s, which the agent does not export", where, expr, n)
			}
		}
	}

	vars := map[string]string{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v.Type
		if v.Type != "query" {
			continue
		}
		if v.Datasource == nil || v.Datasource.UID != "${datasource}" {
			t.Errorf("variable %s: datasource %v, want the ${datasource} variable", v.Name, v.Datasource)
		}
		var q struct {
			Query string `json:"query"`
		}
		if err := json.Unmarshal(v.Query, &q); err != nil {
			_ = json.Unmarshal(v.Query, &q.Query) // the older plain-string form
		}
		m := labelVals.FindStringSubmatch(q.Query)
		if m == nil || m[1] == "" {
			t.Errorf("variable %s: query %q, want label_values(<agent metric>, <label>)", v.Name, q.Query)
			continue
		}
		check("variable "+v.Name, m[1]+m[2])
	}
	if vars["datasource"] != "datasource" {
		t.Errorf("no datasource variable (type datasource) named datasource: %v", vars)
	}
	for _, want := range []string{"node", "pod"} {
		if vars[want] != "query" {
			t.Errorf("no %s query variable: %v", want, vars)
		}
	}

	ids := map[int]string{}
	var walk func([]dashPanel)
	queries := 0
	walk = func(ps []dashPanel) {
		for _, p := range ps {
			where := "panel " + p.Title
			if p.ID == nil {
				t.Errorf("%s: no id", where)
			} else if prev, dup := ids[*p.ID]; dup {
				t.Errorf("%s: id %d already used by %s", where, *p.ID, prev)
			} else {
				ids[*p.ID] = p.Title
			}
			if p.GridPos == nil || p.GridPos.W <= 0 || p.GridPos.H <= 0 || p.GridPos.X+p.GridPos.W > 24 {
				t.Errorf("%s: gridPos %+v", where, p.GridPos)
			}
			if p.Type == "row" {
				walk(p.Panels)
				continue
			}
			if p.Type == "" || p.Title == "" {
				t.Errorf("panel %d: needs a type and a title", *p.ID)
			}
			if p.Datasource == nil || p.Datasource.Type != "prometheus" || p.Datasource.UID != "${datasource}" {
				t.Errorf("%s: datasource %+v, want prometheus ${datasource}", where, p.Datasource)
			}
			if len(p.Targets) == 0 {
				t.Errorf("%s: no targets", where)
			}
			refs := map[string]bool{}
			for _, raw := range p.Targets {
				var tg dashTarget
				if err := json.Unmarshal(raw, &tg); err != nil {
					t.Fatalf("%s: target: %v", where, err)
				}
				if tg.RefID == "" || refs[tg.RefID] {
					t.Errorf("%s: refId %q missing or repeated", where, tg.RefID)
				}
				refs[tg.RefID] = true
				if tg.Datasource == nil || tg.Datasource.UID != "${datasource}" {
					t.Errorf("%s %s: datasource %+v, want ${datasource}", where, tg.RefID, tg.Datasource)
				}
				check(where+" "+tg.RefID, tg.Expr)
				queries++
			}
		}
	}
	walk(d.Panels)
	if queries == 0 {
		t.Fatal("no queries")
	}

	// The families the issue asks a dashboard to show are all used.
	for _, want := range []string{"flatnet_datapath_packets_total", "flatnet_endpoint_packets_total", "flatnet_policy_drop_events_total",
		"flatnet_cni_operation_duration_seconds_bucket", "flatnet_policy_compile_duration_seconds_bucket",
		"flatnet_policy_map_sync_duration_seconds_bucket", "flatnet_endpoints", "flatnet_identities",
		"flatnet_bpf_map_entries", "flatnet_flow_events_lost_total",
		// Hubble's names, so that Hubble-based dashboards' queries have a model here.
		"hubble_flows_processed_total", "hubble_drop_total", "hubble_tcp_flags_total", "hubble_policy_verdicts_total",
		"hubble_port_distribution_total", "hubble_flows_to_world_total", "hubble_lost_events_total"} {
		if !strings.Contains(string(raw), want) {
			t.Errorf("the dashboard does not show %s", want)
		}
	}
}
