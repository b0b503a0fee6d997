// Package bench measures one Kubernetes cluster's CNI the way a user meets it:
// a burst of pods starting (against the same burst on the host network), the
// agents' CPU and memory at rest and under a policy churn (read from their
// cgroups on the kind nodes), and flow events per second under a denied-SYN
// flood (Hubble's ServerStatus on each agent). Every figure comes with the
// baseline measured in the same run where one exists; Result is the JSON that
// scripts/bench.sh and scripts/bench-peers.sh put side by side.
package bench

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Better says which way a figure improves.
type Better string

const (
	Lower  Better = "lower"
	Higher Better = "higher"
)

// Figure is one measured number, with its same-run baseline when there is one.
type Figure struct {
	Name  string  `json:"name"`
	Unit  string  `json:"unit"`
	Value float64 `json:"value"`
	// Baseline is the same measurement without the CNI's share (pods on the host
	// network, no program), taken in the same run; BaselineName says what it is.
	Baseline     *float64 `json:"baseline,omitempty"`
	BaselineName string   `json:"baseline_name,omitempty"`
	Better       Better   `json:"better"`
	// How says how it was measured, in a few words.
	How string `json:"how,omitempty"`
}

// Load is /proc/loadavg's three averages.
type Load [3]float64

func (l Load) String() string { return fmt.Sprintf("%.2f %.2f %.2f", l[0], l[1], l[2]) }

// ReadLoad reads the machine's load averages.
func ReadLoad() (Load, error) {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return Load{}, fmt.Errorf("reading the load average: %w", err)
	}
	var l Load
	f := strings.Fields(string(b))
	for i := range l {
		if i < len(f) {
			l[i], _ = strconv.ParseFloat(f[i], 64)
		}
	}
	return l, nil
}

// Result is everything measured on one cluster in one run.
type Result struct {
	Cluster   string    `json:"cluster"`
	CNI       string    `json:"cni"`
	Started   time.Time `json:"started"`
	Finished  time.Time `json:"finished"`
	LoadStart Load      `json:"load_start"`
	LoadEnd   Load      `json:"load_end"`
	Figures   []Figure  `json:"figures"`
	// Trace is where a burst's start-up time goes, per phase (issue 20).
	Trace []Phase `json:"trace,omitempty"`
	// NotMeasured names the figures a step of the run could not give, and why.
	NotMeasured []string `json:"not_measured,omitempty"`
}

// Add appends f, replacing a figure of the same name. A figure that could not
// be computed (NaN: no samples) is left out, and so is such a baseline.
func (r *Result) Add(f Figure) {
	if math.IsNaN(f.Value) || math.IsInf(f.Value, 0) {
		return
	}
	if f.Baseline != nil && (math.IsNaN(*f.Baseline) || math.IsInf(*f.Baseline, 0)) {
		f.Baseline, f.BaselineName = nil, ""
	}
	if i := slices.IndexFunc(r.Figures, func(g Figure) bool { return g.Name == f.Name }); i >= 0 {
		r.Figures[i] = f
		return
	}
	r.Figures = append(r.Figures, f)
}

// Figure returns the figure called name.
func (r *Result) Figure(name string) (Figure, bool) {
	i := slices.IndexFunc(r.Figures, func(g Figure) bool { return g.Name == name })
	if i < 0 {
		return Figure{}, false
	}
	return r.Figures[i], true
}

// ReadResult reads a Result written by WriteResult.
func ReadResult(path string) (Result, error) {
	var r Result
	b, err := os.ReadFile(path)
	if err != nil {
		return r, fmt.Errorf("reading bench result: %w", err)
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("bench result %s: %w", path, err)
	}
	return r, nil
}

// WriteResult writes r as indented JSON.
func WriteResult(path string, r Result) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("writing bench result: %w", err)
	}
	return nil
}

// UpdateResult reads the result at path, lets update change it and writes it
// back; nothing is written when update fails.
func UpdateResult(path string, update func(*Result) error) error {
	r, err := ReadResult(path)
	if err != nil {
		return err
	}
	if err := update(&r); err != nil {
		return err
	}
	return WriteResult(path, r)
}

// Quantile is the q-quantile (0..1) of ds by the nearest rank; 0 for none.
func Quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(q*float64(len(s))+0.999999) - 1
	return s[min(max(i, 0), len(s)-1)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func ptr(v float64) *float64 { return &v }
