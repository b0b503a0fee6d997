package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/flatnet/flatnet/dataplane/ipam/cluster"
)

func usageCommand() *cobra.Command {
	var output, subnet, gateway string
	cmd := &cobra.Command{
		Use:   "usage",
		Short: "the node subnet's usage (Azure List Usage shape with -o json) and its connected devices",
		Long: `usage reads the cluster's IPBlocks and Nodes and reports the node subnet's use.

currentValue counts the nodes' addresses plus every address pre-allocated to a
node's block (as Azure counts the IPs node-subnet mode assigns to each node up
front); limit is the subnet's size minus its network, broadcast and gateway
addresses. The table lists every address in use: nodes, and pods with their
namespace, name and node.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return fmt.Errorf("-o %q: use table or json", output)
			}
			sub, err := netip.ParsePrefix(subnet)
			if err != nil {
				return fmt.Errorf("--subnet %q: not a CIDR, e.g. 10.224.0.0/16", subnet)
			}
			var gw netip.Addr
			if gateway != "" {
				if gw, err = netip.ParseAddr(gateway); err != nil {
					return fmt.Errorf("--gateway %q: not an IP address", gateway)
				}
			}
			kube, dyn, name, err := clusterClients(cmd)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			r, err := report(ctx, kube, dyn, sub, gw)
			if err != nil {
				return err
			}
			if output == "json" {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(r.Azure(name))
			}
			return printTable(cmd.OutOrStdout(), r)
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table or json (Azure's List Usage shape)")
	cmd.Flags().StringVar(&subnet, "subnet", "10.224.0.0/16", "the node subnet")
	cmd.Flags().StringVar(&gateway, "gateway", "10.224.0.1", "the subnet's gateway (reserved)")
	return cmd
}

func report(ctx context.Context, kube kubernetes.Interface, dyn dynamic.Interface, subnet netip.Prefix, gw netip.Addr) (cluster.SubnetReport, error) {
	blocks, err := cluster.New(dyn).List(ctx)
	if err != nil {
		return cluster.SubnetReport{}, err
	}
	nl, err := kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return cluster.SubnetReport{}, fmt.Errorf("list nodes: %w", err)
	}
	var nodes []cluster.NodeAddr
	for _, n := range nl.Items {
		for _, a := range n.Status.Addresses {
			if a.Type != corev1.NodeInternalIP {
				continue
			}
			if ip, err := netip.ParseAddr(a.Address); err == nil {
				nodes = append(nodes, cluster.NodeAddr{Name: n.Name, IP: ip})
			}
		}
	}
	return cluster.Report(subnet, gw, blocks, nodes), nil
}

func printTable(w io.Writer, r cluster.SubnetReport) error {
	pre := r.CurrentValue - r.Nodes
	fmt.Fprintf(w, "Subnet %s: %d of %d addresses used (%d nodes, %d blocks pre-allocating %d addresses, %d assigned to pods)\n\n",
		r.Subnet, r.CurrentValue, r.Limit, r.Nodes, len(r.Blocks), pre, r.PodsAssigned)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "BLOCK\tNODE\tRANGE\tUSED\tSIZE")
	for _, b := range r.Blocks {
		bb, err := b.Block()
		rng := "?"
		if err == nil {
			rng = bb.First.String() + "-" + bb.Last().String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\n", b.Name, b.Spec.Node, rng, b.Status.Used, b.Spec.Size)
	}
	tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "IP\tKIND\tNAMESPACE\tNAME\tNODE")
	for _, d := range r.Devices {
		ns := d.Namespace
		if ns == "" {
			ns = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", d.IP, d.Kind, ns, d.Name, d.Node)
	}
	return tw.Flush()
}
