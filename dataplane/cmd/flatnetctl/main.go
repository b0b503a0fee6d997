// Command flatnetctl inspects a flatnet cluster.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
)

func main() {
	name := commandName(os.Args[0])
	if err := newRootCommand(name).Execute(); err != nil {
		fmt.Fprintln(os.Stderr, name+":", err)
		os.Exit(1)
	}
}

// newRootCommand is flatnetctl with every subcommand; name is how it was run.
func newRootCommand(name string) *cobra.Command {
	root := &cobra.Command{
		Use:           "flatnetctl",
		Short:         "inspect a flatnet cluster",
		SilenceUsage:  true,
		SilenceErrors: true,
		Annotations:   map[string]string{cobra.CommandDisplayNameAnnotation: name},
	}
	root.PersistentFlags().String("kubeconfig", "", "kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)")
	root.PersistentFlags().String("context", "", "kubeconfig context (default: the current one)")
	root.AddCommand(usageCommand(), releaseNodeCommand(), flowsCommand(), explainCommand(), rejectedCommand(), analyzeCommand())
	return root
}

// commandName is "kubectl flatnet" when the binary runs as a kubectl plugin (a copy
// or symlink named kubectl-flatnet on $PATH), so help and errors read as kubectl's.
func commandName(argv0 string) string {
	if base := filepath.Base(argv0); strings.HasPrefix(base, "kubectl-") {
		return "kubectl " + strings.ReplaceAll(strings.TrimPrefix(base, "kubectl-"), "_", "-")
	}
	return "flatnetctl"
}
