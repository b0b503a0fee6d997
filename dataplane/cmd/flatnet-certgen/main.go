// Command flatnet-certgen creates and renews the certificates of Hubble's mutual
// TLS (agents ↔ hubble-relay) in Secrets of flatnet-system, as Cilium's certgen
// does for hubble.tls.auto: scripts/deploy.sh runs it once before the agents
// start, a CronJob of the agent manifest runs it daily. Each run is idempotent;
// all logic lives in dataplane/hubble/certs.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/flatnet/flatnet/dataplane/hubble/certs"
	"github.com/flatnet/flatnet/dataplane/hubble/peer"
)

func main() {
	if err := command().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "flatnet-certgen:", err)
		os.Exit(1)
	}
}

func command() *cobra.Command {
	var (
		cfg                   certs.Config
		kubeconfig, namespace string
	)
	cmd := &cobra.Command{
		Use:   "flatnet-certgen",
		Short: "create or renew the CA, the agents' Hubble server certificate and hubble-relay's client certificate",
		Long: "Keeps in --namespace the Secrets " + certs.CASecret + " (the CA), " + certs.ServerSecret +
			" (the agents' server certificate, *.<cluster>.hubble-grpc.cilium.io) and " + certs.RelayClientSecret +
			" (hubble-relay's client certificate), each certificate Secret with ca.crt, tls.crt and tls.key. What is valid is kept; " +
			"a certificate is renewed --renew-before its expiry, the CA when it would expire before a new certificate.",
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := cfg.Validate(); err != nil {
				return err
			}
			// No kubeconfig: the in-cluster config (the CronJob's ServiceAccount).
			rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
			if err != nil {
				return fmt.Errorf("kubernetes client config (outside a pod, pass --kubeconfig): %w", err)
			}
			kube, err := kubernetes.NewForConfig(rc)
			if err != nil {
				return fmt.Errorf("kubernetes client: %w", err)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			ctx, cancel := context.WithTimeout(ctx, time.Minute)
			defer cancel()
			changes, err := certs.Reconcile(ctx, kube.CoreV1().Secrets(namespace), cfg, time.Now())
			for _, c := range changes {
				fmt.Fprintf(cmd.OutOrStdout(), "%s/%s\n", namespace, c)
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig file; empty = in-cluster")
	f.StringVar(&namespace, "namespace", certs.DefaultNamespace, "namespace of the Secrets")
	f.StringVar(&cfg.ClusterName, "cluster-name", peer.DefaultClusterName, "the cluster's name, as the agents' --cluster-name: the server certificate is *.<cluster-name>.hubble-grpc.cilium.io")
	f.DurationVar(&cfg.CAValidity, "ca-validity", certs.DefaultCAValidity, "lifetime of a new CA")
	f.DurationVar(&cfg.CertValidity, "cert-validity", certs.DefaultCertValidity, "lifetime of a new certificate")
	f.DurationVar(&cfg.RenewBefore, "renew-before", certs.DefaultRenewBefore, "renew a certificate this long before it expires")
	return cmd
}
