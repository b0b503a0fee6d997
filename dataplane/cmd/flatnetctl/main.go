// Command flatnetctl inspects a flatnet cluster.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

func main() {
	root := &cobra.Command{
		Use:           "flatnetctl",
		Short:         "inspect a flatnet cluster",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().String("kubeconfig", "", "kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)")
	root.PersistentFlags().String("context", "", "kubeconfig context (default: the current one)")
	root.AddCommand(usageCommand(), releaseNodeCommand())
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "flatnetctl:", err)
		os.Exit(1)
	}
}
