package main

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/flatnet/flatnet/suites/internal/bench"
	"github.com/flatnet/flatnet/suites/internal/perf"
)

// perfRows are the datapath figures bench takes from make perf's perf.json:
// pod to pod on one node and across nodes, each test at every policy count
// measured, against host to host of the same run.
var perfRows = struct{ tests, paths []string }{
	tests: []string{"TCP_RR", "TCP_CRR"},
	paths: []string{perf.SameNode.Slug(), perf.CrossNode.Slug()},
}

func addPerfCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "add-perf R.json PERF.json",
		Short: "add make perf's TCP_RR/TCP_CRR pod-to-pod transactions/s (perfdash perf.json) to result R, host->host as the baseline",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return bench.UpdateResult(args[0], func(r *bench.Result) error {
				b, err := os.ReadFile(args[1])
				if err != nil {
					return fmt.Errorf("reading make perf's perf.json: %w", err)
				}
				var d perf.PerfData
				if err := json.Unmarshal(b, &d); err != nil {
					return fmt.Errorf("%s: %w", args[1], err)
				}
				trans := map[string]float64{} // "test path policies" -> transactions/s
				var failed []string
				var counts []string
				for _, it := range d.DataItems {
					l := it.Labels
					switch l["Metric"] {
					case perf.MetricTransactions:
						trans[l["Test"]+" "+l["Path"]+" "+l["Policies"]] = it.Data["Value"]
						if !slices.Contains(counts, l["Policies"]) {
							counts = append(counts, l["Policies"])
						}
					case perf.MetricFailed:
						failed = append(failed, fmt.Sprintf("%s %s %s: %s", l["Test"], l["Path"], l["Policies"], l["Error"]))
					}
				}
				added := 0
				for _, t := range perfRows.tests {
					for _, p := range perfRows.paths {
						for _, n := range counts {
							v, ok := trans[t+" "+p+" "+n]
							if !ok {
								continue
							}
							f := bench.Figure{Name: fmt.Sprintf("%s %s, %s policies", t, p, n), Unit: "trans/s", Value: v, Better: bench.Higher,
								How: "make perf (probe perf), transactions/s of the cell"}
							if h, ok := trans[t+" "+perf.HostToHost.Slug()+" "+n]; ok {
								f.Baseline, f.BaselineName = &h, "host->host"
							}
							r.Add(f)
							added++
						}
					}
				}
				if len(failed) > 0 {
					fmt.Fprintf(cmd.ErrOrStderr(), "make perf: %d cells failed (left out):\n  %s\n", len(failed), strings.Join(failed, "\n  "))
				}
				if added == 0 {
					return fmt.Errorf("%s: no TCP_RR/TCP_CRR pod-to-pod transactions: did make perf measure them? (see its table.txt)", args[1])
				}
				return nil
			})
		},
	}
}
