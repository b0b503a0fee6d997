// Command perf measures a cluster's datapath with netperf's tests (`probe perf`)
// between pods and hosts of two nodes, with 0 and N NetworkPolicies selecting the
// servers, beside host ↔ host measured in the same run, and writes into
// <out>/<cluster>/: table.txt (the aligned table it also prints), perf.json
// (perf-tests' perfdash format: the contract `make bench-peers` reads) and
// perf.png. `make perf` (scripts/perf.sh) runs it. The logic is
// suites/internal/perf.
//
// A command rather than a Ginkgo suite: a benchmark has no verdict to pass or
// fail, it runs on any cluster as a tool, and a script (bench-peers) calls it
// with flags and reads a file.
package main

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	probeperf "github.com/flatnet/flatnet/probes/perf"
	"github.com/flatnet/flatnet/probes/podexec"
	"github.com/flatnet/flatnet/suites/internal/perf"
)

func main() {
	if err := command().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "perf:", err)
		os.Exit(1)
	}
}

type flags struct {
	kubeconfig, out, tests, paths string
	policies                      []int
	keep                          bool
}

func command() *cobra.Command {
	var f flags
	cfg := perf.Config{Port: probeperf.DefaultPort, Duration: 3 * time.Second, Warmup: time.Second, Parallel: 1, EnforceTimeout: 3 * time.Minute}
	c := &cobra.Command{
		Use:          "perf",
		Short:        "netperf's TCP_RR, TCP_CRR, TCP_STREAM and UDP_RR on a cluster's paths, with and without policies, against host↔host",
		Args:         cobra.NoArgs,
		SilenceUsage: true, SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := f.complete(&cfg); err != nil {
				return err
			}
			cfg.Progress = cmd.ErrOrStderr()
			if err := cfg.Validate(); err != nil {
				return err
			}
			return run(cmd, f, cfg)
		},
	}
	fl := c.Flags()
	fl.StringVar(&f.kubeconfig, "kubeconfig", os.Getenv("KUBECONFIG"), "the cluster (default $KUBECONFIG)")
	fl.StringVar(&cfg.Cluster, "cluster", "", `the cluster's name in the report and the artefacts' directory (default: the kubeconfig's current context without "kind-")`)
	fl.StringVar(&cfg.Image, "image", os.Getenv("PROBE_IMAGE"), "the probe image the nodes have (default $PROBE_IMAGE)")
	fl.StringVar(&cfg.Namespace, "namespace", "", "the run's namespace, which must not exist (default perf-<random>)")
	fl.StringVar(&f.out, "out", "_artifacts/perf", "the artefacts go to <out>/<cluster>/")
	fl.IntSliceVar(&f.policies, "policies", []int{0, 1000}, "the policy counts to measure under, in order (bench-peers: 0,1000,10000)")
	fl.StringVar(&f.tests, "tests", "TCP_RR,TCP_CRR,TCP_STREAM,UDP_RR", "the tests, comma-separated")
	fl.StringVar(&f.paths, "paths", slugs(perf.Paths), "the paths, comma-separated")
	fl.DurationVar(&cfg.Duration, "duration", cfg.Duration, "measured time per cell")
	fl.DurationVar(&cfg.Warmup, "warmup", cfg.Warmup, "unmeasured time before each cell")
	fl.IntVar(&cfg.Parallel, "parallel", cfg.Parallel, "concurrent connections per cell")
	fl.IntVar(&cfg.Port, "port", cfg.Port, "the servers' TCP and UDP port (also on the host-network server's node)")
	fl.DurationVar(&cfg.EnforceTimeout, "enforce-timeout", cfg.EnforceTimeout, "how long a policy set may take to be in force")
	fl.BoolVar(&f.keep, "keep", false, "keep the namespace and its pods")
	return c
}

func slugs(ps []perf.Path) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.Slug()
	}
	return strings.Join(s, ",")
}

// complete parses the list flags into cfg, naming the flag of a bad value.
func (f flags) complete(cfg *perf.Config) error {
	if f.kubeconfig == "" {
		return fmt.Errorf("--kubeconfig (KUBECONFIG): empty: give the cluster's kubeconfig")
	}
	cfg.Tests, cfg.Paths, cfg.Policies = nil, nil, f.policies
	for _, s := range strings.Split(f.tests, ",") {
		t, err := probeperf.ParseTest(strings.TrimSpace(s))
		if err != nil {
			return fmt.Errorf("--tests: %w", err)
		}
		cfg.Tests = append(cfg.Tests, t)
	}
	for _, s := range strings.Split(f.paths, ",") {
		p, err := perf.ParsePath(strings.TrimSpace(s))
		if err != nil {
			return fmt.Errorf("--paths: %w", err)
		}
		cfg.Paths = append(cfg.Paths, p)
	}
	if cfg.Namespace == "" {
		b := make([]byte, 3)
		rand.Read(b)
		cfg.Namespace = "perf-" + hex.EncodeToString(b)
	}
	if cfg.Cluster == "" {
		raw, err := clientcmd.LoadFromFile(f.kubeconfig)
		if err != nil {
			return fmt.Errorf("--kubeconfig=%s: %w", f.kubeconfig, err)
		}
		cfg.Cluster = strings.TrimPrefix(raw.CurrentContext, "kind-")
	}
	return nil
}

func run(cmd *cobra.Command, f flags, cfg perf.Config) error {
	restCfg, err := clientcmd.BuildConfigFromFlags("", f.kubeconfig)
	if err != nil {
		return fmt.Errorf("--kubeconfig=%s: %w", f.kubeconfig, err)
	}
	cs, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return fmt.Errorf("connecting to the cluster: %w", err)
	}
	ex, err := podexec.NewExecutor(restCfg, cs)
	if err != nil {
		return err
	}
	dir := filepath.Join(f.out, cfg.Cluster)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("--out: %w", err)
	}
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	report, runErr := perf.Run(ctx, cs, ex, cfg, f.keep)
	if report == nil {
		return runErr
	}
	var table bytes.Buffer
	if err := report.WriteTable(&table); err != nil {
		return err
	}
	fmt.Fprint(cmd.OutOrStdout(), table.String())
	files := map[string]func() ([]byte, error){
		"table.txt": func() ([]byte, error) { return table.Bytes(), nil },
		"perf.json": func() ([]byte, error) { var b bytes.Buffer; err := report.WritePerfdash(&b); return b.Bytes(), err },
		"perf.png":  func() ([]byte, error) { var b bytes.Buffer; err := report.WritePNG(&b); return b.Bytes(), err },
	}
	for _, name := range []string{"table.txt", "perf.json", "perf.png"} {
		b, err := files[name]()
		if err == nil {
			err = os.WriteFile(filepath.Join(dir, name), b, 0o644)
		}
		if err != nil {
			return fmt.Errorf("writing %s: %w", name, err)
		}
		fmt.Fprintf(cmd.ErrOrStderr(), "wrote %s\n", filepath.Join(dir, name))
	}
	return runErr
}
