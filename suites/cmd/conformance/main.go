// Command conformance is the Go half of the scripts that run conformance
// suites (scripts/k8s-conformance.sh, scripts/e2e.sh), which keep only the
// docker, apt and build work:
//
//	conformance skip-args FILE          the --skip flags of a skip list, one per line
//	conformance images -manifest F ID.. "ID registry/name:version" per image
//	conformance summarize ...           specs.json, junit.xml and a summary of a run
//
// The logic lives in suites/skiplist and suites/conformance.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/flatnet/flatnet/suites/conformance"
	"github.com/flatnet/flatnet/suites/skiplist"
)

func main() {
	if err := command().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "conformance:", err)
		os.Exit(1)
	}
}

func command() *cobra.Command {
	root := &cobra.Command{Use: "conformance", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(skipArgsCommand(), imagesCommand(), summarizeCommand())
	return root
}

func skipArgsCommand() *cobra.Command {
	var explain string
	c := &cobra.Command{
		Use:   "skip-args FILE",
		Short: "print the ginkgo --skip flags of a skip list, one argument per line",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			entries, err := skiplist.Read(args[0])
			if err != nil {
				return err
			}
			for _, e := range entries {
				if explain != "" {
					fmt.Fprintf(cmd.ErrOrStderr(), "WARN %s '%s': %s\n", explain, e.Pattern, e.Why)
				}
			}
			for _, a := range skiplist.Args(entries) {
				fmt.Fprintln(cmd.OutOrStdout(), a)
			}
			return nil
		},
	}
	c.Flags().StringVar(&explain, "explain", "", "say on stderr, for each entry, this text, its pattern and why")
	return c
}

func imagesCommand() *cobra.Command {
	var manifest string
	c := &cobra.Command{
		Use:   "images -manifest test/utils/image/manifest.go ID...",
		Short: "print the reference the e2e framework gives each image ID: \"ID registry/name:version\" per line",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, ids []string) error {
			src, err := os.ReadFile(manifest)
			if err != nil {
				return fmt.Errorf("reading the image manifest: %w", err)
			}
			refs, err := conformance.Images(manifest, src, ids...)
			if err != nil {
				return err
			}
			for _, id := range ids {
				fmt.Fprintf(cmd.OutOrStdout(), "%s %s\n", id, refs[id])
			}
			return nil
		},
	}
	c.Flags().StringVar(&manifest, "manifest", "", "k8s.io/kubernetes/test/utils/image/manifest.go of the release under test")
	c.MarkFlagRequired("manifest")
	return c
}

func summarizeCommand() *cobra.Command {
	var report, focus, skipsFile, skip, out string
	c := &cobra.Command{
		Use:   "summarize -report report.json -focus RE -skips FILE [-skip RE] -out DIR",
		Short: "write DIR/specs.json and DIR/junit.xml of the specs the focus selected, print a summary on stderr and \"PASSED FAILED\" on stdout",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			skips, err := skiplist.Read(skipsFile)
			if err != nil {
				return err
			}
			if skip != "" {
				skips = append(skips, skiplist.Entry{Pattern: skip, Why: fmt.Sprintf("SKIP=%s on the command line", skip)})
			}
			specs, err := conformance.ReadSpecs(report, focus, skips)
			if err != nil {
				return err
			}
			js, err := json.MarshalIndent(specs, "", "  ")
			if err != nil {
				return err
			}
			var junit bytes.Buffer
			if err := conformance.WriteJUnit(&junit, focus, specs); err != nil {
				return err
			}
			for name, data := range map[string][]byte{"specs.json": append(js, '\n'), "junit.xml": junit.Bytes()} {
				if err := os.WriteFile(filepath.Join(out, name), data, 0o644); err != nil {
					return fmt.Errorf("writing the summary: %w", err)
				}
			}
			if err := conformance.WriteSummary(cmd.ErrOrStderr(), specs); err != nil {
				return err
			}
			n := conformance.Count(specs)
			fmt.Fprintf(cmd.OutOrStdout(), "%d %d\n", n.Passed, n.Failed)
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&report, "report", "", "ginkgo's --json-report of the run")
	f.StringVar(&focus, "focus", "", "the run's --focus: the specs summarized")
	f.StringVar(&skipsFile, "skips", "", "the skip list the run's --skip flags came from (reasons of skipped specs)")
	f.StringVar(&skip, "skip", "", "a --skip given on the command line (SKIP=)")
	f.StringVar(&out, "out", "", "directory of specs.json and junit.xml")
	for _, name := range []string{"report", "focus", "skips", "out"} {
		c.MarkFlagRequired(name)
	}
	return c
}
