package main

import (
	"bufio"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/flatnet/flatnet/suites/internal/bench"
)

// A row of scripts/bench-datapath.sh's TCP table:
//
//	CRR  prog+1000rules  52000  19231  0.924 [0.910..0.950]  ...
var datapathRow = regexp.MustCompile(`^(CRR|RR)\s+(\S+)\s+(\d+)\s+(\d+)\s+([\d.]+) \[\s*([\d.]+)\.\.\s*([\d.]+)\]`)

func addDatapathCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "add-datapath R.json SUMMARY",
		Short: "add scripts/bench-datapath.sh's TCP_CRR/TCP_RR with 1,000 rules vs no program (its summary.txt) to result R",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return bench.UpdateResult(args[0], func(r *bench.Result) error {
				f, err := os.Open(args[1])
				if err != nil {
					return fmt.Errorf("reading scripts/bench-datapath.sh's summary: %w", err)
				}
				defer f.Close()
				node := ""
				opsPerSec := map[string]float64{} // "CRR none" -> ops/s, this section
				ratios := map[string]string{}
				flush := func() {
					for _, t := range []string{"CRR", "RR"} {
						none, prog := opsPerSec[t+" none"], opsPerSec[t+" prog+1000rules"]
						if none == 0 || prog == 0 {
							continue
						}
						base := none
						r.Add(bench.Figure{Name: fmt.Sprintf("netns TCP_%s ops/s, 1,000 rules (%s)", t, node), Unit: "ops/s", Value: prog,
							Baseline: &base, BaselineName: "no program", Better: bench.Higher,
							How: "scripts/bench-datapath.sh, two netns pods on this machine, medians of its rounds; per-round ratio median [min..max] " + ratios[t]})
					}
					clear(opsPerSec)
				}
				sc := bufio.NewScanner(f)
				for sc.Scan() {
					line := sc.Text()
					switch {
					case strings.HasPrefix(line, "== bare node netns"):
						flush()
						node = "bare node netns"
					case strings.HasPrefix(line, "== node netns with kube-proxy"):
						flush()
						node = "node netns with kube-proxy's rules"
					}
					m := datapathRow.FindStringSubmatch(line)
					if m == nil || node == "" {
						continue
					}
					v, _ := strconv.ParseFloat(m[4], 64)
					opsPerSec[m[1]+" "+m[2]] = v
					if m[2] == "prog+1000rules" {
						ratios[m[1]] = fmt.Sprintf("%s [%s..%s]", m[5], m[6], m[7])
					}
				}
				if err := sc.Err(); err != nil {
					return err
				}
				flush()
				if node == "" {
					return fmt.Errorf("%s: no \"== bare node netns\" section: is it scripts/bench-datapath.sh's summary.txt?", args[1])
				}
				return nil
			})
		},
	}
}
