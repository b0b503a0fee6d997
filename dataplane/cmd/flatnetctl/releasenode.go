package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flatnet/flatnet/dataplane/ipam/cluster"
)

// releaseNodeCommand frees the blocks of a node removed for good. Blocks
// outlive their Node on purpose (a node re-created under its name gets its
// block back), so only an operator can say a node will not return.
func releaseNodeCommand() *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "release-node NODE",
		Short: "delete the IPBlocks of a node that is gone for good",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			kube, dyn, _, err := clusterClients(cmd)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			_, err = kube.CoreV1().Nodes().Get(ctx, args[0], metav1.GetOptions{})
			switch {
			case err == nil && !force:
				return fmt.Errorf("node %s still exists; its pods may hold addresses of its block. Delete the node first, or pass --force", args[0])
			case err != nil && !apierrors.IsNotFound(err):
				return fmt.Errorf("get node %s: %w", args[0], err)
			}
			names, err := cluster.New(dyn).ReleaseNodeBlocks(ctx, args[0])
			for _, n := range names {
				fmt.Fprintf(cmd.OutOrStdout(), "released IPBlock %s\n", n)
			}
			if err == nil && len(names) == 0 {
				fmt.Fprintf(cmd.OutOrStdout(), "node %s owns no IPBlock\n", args[0])
			}
			return err
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "release even though the Node object still exists")
	return cmd
}
