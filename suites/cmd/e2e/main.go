// Command e2e is the Go half of scripts/e2e.sh, which runs each suite as its
// own process (several at once, the disruptive specs alone after) with a Ginkgo
// JSON report each:
//
//	e2e merge -o DIR [--listed DIR] REPORT.json...   one junit.xml and report.json in DIR, a table per suite;
//	                                                 with the dry runs in --listed, each selected spec must have run once
//	e2e list REPORT.json...                          every spec of dry-run reports, one a line
//	e2e failures REPORT.json...                      each failed spec, a line: suite, spec, message, location
//	e2e parts -n N [--last REPORT.json] [--times TIMES.tsv] DRYRUN.json
//	                                                 a suite's specs in N parts by family: specs, seconds, label filter
//	e2e times --suite NAME REPORT.json               a suite's times per family in a run, as --times reads them
//
// The logic lives in suites/internal/runreport and suites/internal/parts.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/onsi/ginkgo/v2/types"
	"github.com/spf13/cobra"

	"github.com/flatnet/flatnet/suites/internal/parts"
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
	root.AddCommand(mergeCommand(), listCommand(), failuresCommand(), partsCommand(), timesCommand())
	return root
}

func mergeCommand() *cobra.Command {
	var dir, listed string
	var slowest int
	c := &cobra.Command{
		Use:   "merge -o DIR [--listed DIR] REPORT.json...",
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
			accounted := true
			if listed != "" {
				if accounted, err = account(cmd, listed, reports); err != nil {
					return err
				}
			}
			if runreport.Failed(merged) {
				return fmt.Errorf("a suite failed (table above)")
			}
			if !accounted {
				return fmt.Errorf("the run's specs do not match its listing in %s (above)", listed)
			}
			return nil
		},
	}
	c.Flags().StringVarP(&dir, "output-dir", "o", "", "where junit.xml and report.json go")
	c.Flags().IntVar(&slowest, "slowest", 8, "how many of the slowest specs to print")
	c.Flags().StringVar(&listed, "listed", "", "directory of the suites' dry-run reports (*.json) under the run's filters: check each selected spec ran exactly once")
	return c
}

// account prints how the run's specs compare with the dry runs in dir.
func account(cmd *cobra.Command, dir string, ran []types.Report) (bool, error) {
	paths, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil || len(paths) == 0 {
		return false, fmt.Errorf("merge --listed %s: no dry-run reports (*.json) there", dir)
	}
	listed, err := runreport.Read(paths...)
	if err != nil {
		return false, err
	}
	a := runreport.Account(listed, ran)
	fmt.Fprintln(cmd.OutOrStdout())
	a.Print(cmd.OutOrStdout())
	return a.OK(), nil
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

func failuresCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "failures REPORT.json...",
		Short: "each failed spec of Ginkgo JSON reports, one a line: suite, spec, state, the message on one line, location",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			reports, err := runreport.Read(args...)
			if err != nil {
				return err
			}
			for _, l := range runreport.Failures(reports) {
				fmt.Fprintln(cmd.OutOrStdout(), l)
			}
			return nil
		},
	}
}

func partsCommand() *cobra.Command {
	var n int
	var key, base, last, committed string
	c := &cobra.Command{
		Use:   "parts -n N [--last REPORT.json] [--times TIMES.tsv] DRYRUN.json",
		Short: `split a suite's specs (its dry-run report) into at most N parts by a label key, balanced by the last run's times: "<specs> <estimated seconds> <label filter>" a line, a table on stderr`,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dry, err := runreport.Read(args[0])
			if err != nil {
				return err
			}
			if len(dry) != 1 {
				return fmt.Errorf("parts: %s holds %d suite reports, want one suite's dry run", args[0], len(dry))
			}
			opts := parts.Options{Key: key, Parts: n, Base: base}
			times, how, err := weigh(dry[0], last, committed, opts)
			if err != nil {
				return err
			}
			ps, err := parts.Split(dry[0], times, opts)
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.ErrOrStderr(), 0, 0, 2, ' ', 0)
			fmt.Fprintf(tw, "  part\tspecs\test. s\t%s values (weighed by %s)\n", key, how)
			for i, p := range ps {
				fams := strings.Join(p.Families, ", ")
				if i == len(ps)-1 && len(ps) > 1 {
					fams += " and the rest"
				}
				fmt.Fprintf(tw, "  %d\t%d\t%.0f\t%s\n", i+1, p.Specs, p.Estimate.Seconds(), fams)
				fmt.Fprintf(cmd.OutOrStdout(), "%d %.0f %s\n", p.Specs, p.Estimate.Seconds(), p.Filter)
			}
			return tw.Flush()
		},
	}
	c.Flags().IntVarP(&n, "parts", "n", 1, "how many parts at most")
	c.Flags().StringVar(&key, "key", "family", "the label set key whose value groups the specs (label key:value)")
	c.Flags().StringVar(&base, "base", "", "label filter of the phase; specs outside it are not counted")
	c.Flags().StringVar(&last, "last", "", "the last run's report.json (ignored when missing): each family's time per spec")
	c.Flags().StringVar(&committed, "times", "", "the suite's committed times (e2e times; ignored when missing), used when --last has none of the suite")
	return c
}

// weigh picks the times to balance a suite's parts by: the last run's, else
// the committed ones, else none (a second per spec); how says which.
func weigh(dry types.Report, last, committed string, opts parts.Options) (parts.Times, string, error) {
	suite := filepath.Base(dry.SuitePath)
	if last != "" {
		if _, err := os.Stat(last); err == nil {
			history, err := runreport.Read(last)
			if err != nil {
				return parts.Times{}, "", err
			}
			t, err := parts.History(history, suite, opts)
			if err != nil || !t.Empty() {
				return t, "the last run's times", err
			}
		}
	}
	if committed != "" {
		f, err := os.Open(committed)
		if err == nil {
			defer f.Close()
			t, err := parts.ReadTimes(f, committed)
			return t, "the times committed in " + filepath.Base(committed) + ": no last run here", err
		}
		if !os.IsNotExist(err) {
			return parts.Times{}, "", fmt.Errorf("reading the committed times: %w", err)
		}
	}
	return parts.Times{}, "a second per spec: no last run", nil
}

func timesCommand() *cobra.Command {
	var key, base, suite string
	c := &cobra.Command{
		Use:   "times --suite NAME [--base FILTER] REPORT.json",
		Short: "a suite's time per spec of each family in a whole run's report.json, in the form make e2e's parts read when no last run is on the machine (suites/<suite>/parts-times.tsv)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			reports, err := runreport.Read(args[0])
			if err != nil {
				return err
			}
			t, err := parts.History(reports, suite, parts.Options{Key: key, Base: base})
			if err != nil {
				return err
			}
			if t.Empty() {
				return fmt.Errorf("times: %s has no spec of suite %s under %q", args[0], suite, base)
			}
			return parts.WriteTimes(cmd.OutOrStdout(), t,
				fmt.Sprintf("seconds per spec of each %s:<value> of suite %s (specs under %q), and its setup per process:", key, suite, base),
				"what make e2e balances the suite's parts by on a machine with no last run (a fresh one).",
				fmt.Sprintf("Regenerate after a whole make e2e: e2e times --suite %s --base '%s' $FLATNET_CACHE/e2e-last-report.json", suite, base))
		},
	}
	c.Flags().StringVar(&suite, "suite", "", "the suite (its directory under suites/)")
	c.Flags().StringVar(&key, "key", "family", "the label set key whose value groups the specs (label key:value)")
	c.Flags().StringVar(&base, "base", "!disruptive && !bench", "label filter of the phase the times are for")
	_ = c.MarkFlagRequired("suite")
	return c
}
