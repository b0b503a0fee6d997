// Command bench is the Go half of scripts/bench.sh and scripts/bench-peers.sh,
// which keep only the cluster and build work:
//
//	bench measure --cni flatnet|cilium --cluster NAME --out R.json   one cluster's figures
//	bench add-enforce R.json LOG       the enforcement benchmark's figures (ginkgo's output) into R
//	bench add-datapath R.json SUMMARY  scripts/bench-datapath.sh's netns TCP figures into R
//	bench add-perf R.json PERF.json    make perf's pod-to-pod TCP_RR/TCP_CRR (perfdash perf.json) into R
//	bench not-measured R.json WHAT WHY   a step that gave no figure, said under the table
//	bench table [--json F] [--png F] R.json [PEER.json]
//	                                   one run against its baselines, or two side by side
//
// The measuring lives in suites/internal/bench. measure talks to the cluster
// through client-go (KUBECONFIG) and reads the agents' cgroups and Hubble
// sockets through /proc, so it runs as root on the machine that runs kind.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/flatnet/flatnet/probes/podexec"
	"github.com/flatnet/flatnet/suites/internal/bench"
)

func main() {
	if err := command().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func command() *cobra.Command {
	root := &cobra.Command{Use: "bench", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(measureCommand(), addEnforceCommand(), addDatapathCommand(), addPerfCommand(), notMeasuredCommand(), tableCommand())
	return root
}

func measureCommand() *cobra.Command {
	c := bench.Config{Namespace: "flatnet-bench", BurstPods: 30, Rounds: 2, Window: 20 * time.Second, ChurnRate: 10, FloodSYNs: 20000, FloodParallel: 500}
	var cni, out, kubeconfig string
	cmd := &cobra.Command{
		Use:   "measure --cni flatnet|cilium --cluster NAME --out R.json",
		Short: "pod start-up (vs hostNetwork), CNI ADD, agent CPU/memory at rest and under churn, flow events/s under a denied-SYN flood",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var ok bool
			if c.CNI, ok = bench.CNIs[cni]; !ok {
				return fmt.Errorf("--cni=%q: unknown; use flatnet or cilium", cni)
			}
			if out == "" {
				return fmt.Errorf("--out: empty; name the JSON file to write")
			}
			if err := c.Validate(); err != nil {
				return err
			}
			if os.Geteuid() != 0 {
				return fmt.Errorf("measure reads the agents' cgroups and Hubble sockets under /proc: run it as root")
			}
			rules := clientcmd.NewDefaultClientConfigLoadingRules()
			if kubeconfig != "" {
				rules.ExplicitPath = kubeconfig
			}
			cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, nil).ClientConfig()
			if err != nil {
				return fmt.Errorf("--kubeconfig / KUBECONFIG: %w", err)
			}
			cfg.QPS, cfg.Burst = 100, 200 // a burst is 30 creates at once: not client-side throttled
			cs, err := kubernetes.NewForConfig(cfg)
			if err != nil {
				return err
			}
			ex, err := podexec.NewExecutor(cfg, cs)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			c.Progress = cmd.ErrOrStderr()
			r, err := bench.Measure(ctx, cs, ex, c)
			if err != nil {
				return fmt.Errorf("measuring %s: %w", c.Cluster, err)
			}
			return bench.WriteResult(out, r)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cni, "cni", "", "the CNI under test: flatnet or cilium (where its agent and Hubble socket are)")
	f.StringVar(&c.Cluster, "cluster", "", "the cluster's name, for the result")
	f.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig of the cluster (default: $KUBECONFIG)")
	f.StringVar(&c.ProbeImage, "probe-image", os.Getenv("PROBE_IMAGE"), "the probe image the nodes have (default: $PROBE_IMAGE)")
	f.StringVar(&c.Namespace, "namespace", c.Namespace, "namespace the bench creates and deletes")
	f.IntVar(&c.BurstPods, "pods", c.BurstPods, "pods per burst")
	f.IntVar(&c.Rounds, "rounds", c.Rounds, "bursts per variant (pod network, host network), interleaved")
	f.DurationVar(&c.Window, "window", c.Window, "how long the agents are sampled at rest and under churn")
	f.Float64Var(&c.ChurnRate, "churn-rate", c.ChurnRate, "NetworkPolicy changes per second during the churn")
	f.IntVar(&c.FloodSYNs, "syns", c.FloodSYNs, "SYNs the flood sends")
	f.IntVar(&c.FloodParallel, "flood-parallel", c.FloodParallel, "connects of the flood in flight")
	f.StringVar(&out, "out", "", "the JSON result to write")
	return cmd
}

// The enforcement benchmark's lines (suites/netpol/enforce_bench_test.go):
//
//	apply -> enforced on 2 node(s), 20 applies: p50 61ms, p90 80ms, p99 95ms, max 95ms
//	apply -> enforced on 2 node(s), 20 applies with 1000 background policies and 500 more pods: p50 ...
var enforceLine = regexp.MustCompile(`^(apply -> enforced|delete -> lifted) on \d+ node\(s\), (\d+) \w+(?: with (\d+) background policies)?(?:(?: and| with) (\d+) more pods)?: p50 (\S+), p90 (\S+), p99 (\S+), max (\S+)$`)

func addEnforceCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "add-enforce R.json LOG",
		Short: "add the apply -> enforced figures of the enforcement benchmark's output LOG to result R",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return bench.UpdateResult(args[0], func(r *bench.Result) error {
				f, err := os.Open(args[1])
				if err != nil {
					return fmt.Errorf("reading the enforcement benchmark's output: %w", err)
				}
				defer f.Close()
				found := 0
				sc := bufio.NewScanner(f)
				for sc.Scan() {
					m := enforceLine.FindStringSubmatch(strings.TrimSpace(sc.Text()))
					if m == nil {
						continue
					}
					what := "policy apply -> enforced"
					if strings.HasPrefix(m[1], "delete") {
						what = "policy delete -> lifted"
					}
					present := "few policies"
					if m[3] != "" {
						present = m[3] + " policies"
					}
					if m[4] != "" {
						present += ", " + m[4] + " more pods"
					}
					for _, q := range []struct{ name, v string }{{"p50", m[5]}, {"p99", m[7]}} {
						d, err := time.ParseDuration(q.v)
						if err != nil {
							return fmt.Errorf("%s: %q: %w", args[1], sc.Text(), err)
						}
						r.Add(bench.Figure{Name: fmt.Sprintf("%s %s (%s present)", what, q.name, present), Unit: "ms",
							Value: float64(d) / float64(time.Millisecond), Better: bench.Lower,
							How: fmt.Sprintf("suites/netpol enforcement benchmark, %s rounds, probe watch in pods on every node", m[2])})
					}
					found++
				}
				if err := sc.Err(); err != nil {
					return err
				}
				if found == 0 {
					return fmt.Errorf("%s: no \"apply -> enforced ...\" line: did the enforcement benchmark run? (see the log)", args[1])
				}
				return nil
			})
		},
	}
}

func tableCommand() *cobra.Command {
	var jsonOut, pngOut string
	var notes []string
	cmd := &cobra.Command{
		Use:   "table [--json F] [--png F] R.json [PEER.json]",
		Short: "print one run against its baselines, or two runs side by side (R / PEER ratios)",
		Args:  cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			a, err := bench.ReadResult(args[0])
			if err != nil {
				return err
			}
			var t bench.Table
			if len(args) == 2 {
				b, err := bench.ReadResult(args[1])
				if err != nil {
					return err
				}
				t = bench.Peers(a, b)
			} else {
				t = bench.Baselines(a)
			}
			t.Notes = append(notes, t.Notes...)
			if err := t.Print(cmd.OutOrStdout()); err != nil {
				return err
			}
			if jsonOut != "" {
				b, err := json.MarshalIndent(t, "", "  ")
				if err != nil {
					return err
				}
				if err := os.WriteFile(jsonOut, append(b, '\n'), 0o644); err != nil {
					return fmt.Errorf("--json: %w", err)
				}
			}
			if pngOut != "" {
				return t.Plot(pngOut)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&jsonOut, "json", "", "also write the table as JSON here")
	cmd.Flags().StringVar(&pngOut, "png", "", "also plot the ratios as a PNG here")
	cmd.Flags().StringArrayVar(&notes, "note", nil, "a line printed under the table (repeatable)")
	return cmd
}

func notMeasuredCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "not-measured R.json WHAT WHY",
		Short: "record in result R that a step gave no figure and why (printed under the table)",
		Args:  cobra.ExactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			return bench.UpdateResult(args[0], func(r *bench.Result) error {
				r.NotMeasured = append(r.NotMeasured, args[1]+": "+strings.TrimSpace(args[2]))
				return nil
			})
		},
	}
}
