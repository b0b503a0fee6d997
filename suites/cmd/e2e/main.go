// Command e2e is the Go half of scripts/e2e.sh, which runs each suite as its
// own process (several at once, the disruptive specs alone after) with a Ginkgo
// JSON report each:
//
//	e2e merge -o DIR REPORT.json...   one junit.xml and report.json in DIR, a table per suite
//	e2e list REPORT.json...           every spec of dry-run reports, one a line
//	e2e durations REPORT.json         "<seconds> <suite>" per suite, longest first
//
// The logic lives in suites/internal/runreport.
package main

import (
	"cmp"
	"fmt"
	"os"
	"slices"

	"github.com/spf13/cobra"

	"github.com/flatnet/flatnet/suites/internal/runreport"
)

func main() {
	if err := command().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
}

func command() *cobra.Command {
	root := &cobra.Command{Use: "e2e", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(mergeCommand(), listCommand(), durationsCommand())
	return root
}

func mergeCommand() *cobra.Command {
	var dir string
	var slowest int
	c := &cobra.Command{
		Use:   "merge -o DIR REPORT.json...",
		Short: "merge the suites' Ginkgo JSON reports into DIR/junit.xml and DIR/report.json, print a table per suite",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if dir == "" {
				return fmt.Errorf("merge: -o DIR is required (where junit.xml and report.json go)")
			}
			reports, err := runreport.Read(args...)
			if err != nil {
				return err
			}
			merged := runreport.Merge(reports)
			if err := runreport.Write(dir, merged); err != nil {
				return err
			}
			runreport.Summarize(cmd.OutOrStdout(), merged, slowest)
			if runreport.Failed(merged) {
				return fmt.Errorf("a suite failed (table above)")
			}
			return nil
		},
	}
	c.Flags().StringVarP(&dir, "output-dir", "o", "", "where junit.xml and report.json go")
	c.Flags().IntVar(&slowest, "slowest", 8, "how many of the slowest specs to print")
	return c
}

func listCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "list REPORT.json...",
		Short: "list every spec of Ginkgo dry-run reports: suite, run|skip, labels, text",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			reports, err := runreport.Read(args...)
			if err != nil {
				return err
			}
			run, total := runreport.List(cmd.OutOrStdout(), runreport.Merge(reports))
			fmt.Fprintf(cmd.ErrOrStderr(), "%d specs, %d of them selected by the filters\n", total, run)
			return nil
		},
	}
}

func durationsCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "durations REPORT.json",
		Short: `print "<seconds> <suite>" for each suite of a report, longest first`,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			reports, err := runreport.Read(args...)
			if err != nil {
				return err
			}
			d := runreport.Durations(reports)
			names := make([]string, 0, len(d))
			for n := range d {
				names = append(names, n)
			}
			slices.SortFunc(names, func(a, b string) int { return cmp.Or(cmp.Compare(d[b], d[a]), cmp.Compare(a, b)) })
			for _, n := range names {
				fmt.Fprintf(cmd.OutOrStdout(), "%.0f %s\n", d[n].Seconds(), n)
			}
			return nil
		},
	}
}
