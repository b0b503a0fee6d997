package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"

	"github.com/flatnet/flatnet/dataplane/enforce"
)

func rejectedCommand() *cobra.Command {
	var (
		af     agentFlags
		output string
	)
	cmd := &cobra.Command{
		Use:   "rejected",
		Short: "policies not (fully) in force, per node, and why",
		Long: `rejected asks the flatnet agent of every node which policy objects it does not
enforce as written: invalid ones (PolicyRejected: the field and the fix; the previous
valid version, if any, stays in force) and ones whose effect on some pods could not be
written (PolicyTooLarge, PolicyWriteFailed: those pods are isolated, deny-all, until it
is fixed). The same reasons appear as Events on the objects (kubectl describe).`,
		Example: `  flatnetctl rejected
  flatnetctl rejected -n team-a -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return fmt.Errorf("-o %q: use table or json", output)
			}
			ns, _ := cmd.Flags().GetString("namespace")
			ag, err := af.agents(cmd)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			pods, err := ag.list(ctx)
			if err != nil {
				return err
			}
			rejs, failed := gatherRejected(ctx, ag, pods, cmd.ErrOrStderr())
			if failed == len(pods) {
				return fmt.Errorf("no agent answered (%d agents)", len(pods))
			}
			if ns != "" {
				kept := rejs[:0]
				for _, r := range rejs {
					if r.Object.Ref.Namespace == ns {
						kept = append(kept, r)
					}
				}
				rejs = kept
			}
			return printRejected(cmd.OutOrStdout(), output, rejs)
		},
	}
	af.add(cmd)
	cmd.Flags().StringP("namespace", "n", "", "only policies of this namespace (default: all, cluster-wide ones included)")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	return cmd
}

// gatherRejected asks every agent; an agent that cannot be reached is named on errw.
func gatherRejected(ctx context.Context, ag agents, pods []corev1.Pod, errw io.Writer) ([]enforce.Rejection, int) {
	var (
		mu     sync.Mutex
		all    []enforce.Rejection
		failed int
		wg     sync.WaitGroup
	)
	for _, pod := range pods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := fetchRejected(ctx, ag, pod)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed++
				fmt.Fprintf(errw, "node %s: %v\n", pod.Spec.NodeName, err)
				return
			}
			all = append(all, got...)
		}()
	}
	wg.Wait()
	sort.SliceStable(all, func(i, j int) bool {
		a, b := all[i], all[j]
		if a.Object.Ref.String() != b.Object.Ref.String() {
			return a.Object.Ref.String() < b.Object.Ref.String()
		}
		return a.Node < b.Node
	})
	return all, failed
}

func fetchRejected(ctx context.Context, ag agents, pod corev1.Pod) ([]enforce.Rejection, error) {
	rc, err := ag.get(ctx, pod, enforce.RejectedPath, nil)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	var out []enforce.Rejection
	if err := json.NewDecoder(rc).Decode(&out); err != nil {
		return nil, fmt.Errorf("agent %s: reading %s: %w", pod.Name, enforce.RejectedPath, err)
	}
	return out, nil
}

func printRejected(w io.Writer, output string, rejs []enforce.Rejection) error {
	if output == "json" {
		if rejs == nil {
			rejs = []enforce.Rejection{}
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(rejs)
	}
	if len(rejs) == 0 {
		_, err := fmt.Fprintln(w, "no rejected policies")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tKIND\tPOLICY\tREASON\tPODS\tMESSAGE")
	for _, r := range rejs {
		name := r.Object.Ref.Name
		if r.Object.Ref.Namespace != "" {
			name = r.Object.Ref.Namespace + "/" + name
		}
		pods := strings.Join(r.Pods, ",")
		if pods == "" {
			pods = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.Node, r.Object.Ref.Kind, name, r.Reason, pods, r.Message)
	}
	return tw.Flush()
}
