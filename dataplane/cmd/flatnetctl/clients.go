package main

import (
	"fmt"

	"github.com/spf13/cobra"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// restConfig loads the kubeconfig named by the root flags and returns the
// context's name (it names the cluster in usage IDs).
func restConfig(cmd *cobra.Command) (*rest.Config, string, error) {
	kc, _ := cmd.Flags().GetString("kubeconfig")
	kctx, _ := cmd.Flags().GetString("context")
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = kc
	loader := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: kctx})
	rc, err := loader.ClientConfig()
	if err != nil {
		return nil, "", fmt.Errorf("load kubeconfig: %w", err)
	}
	name := kctx
	if name == "" {
		raw, _ := loader.RawConfig()
		name = raw.CurrentContext
	}
	return rc, name, nil
}

// clusterClients makes the typed and dynamic clients of the kubeconfig the root
// flags name (the dynamic one reads IPBlocks), and returns the context's name.
func clusterClients(cmd *cobra.Command) (kubernetes.Interface, dynamic.Interface, string, error) {
	rc, name, err := restConfig(cmd)
	if err != nil {
		return nil, nil, "", err
	}
	kube, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, nil, "", err
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return nil, nil, "", err
	}
	return kube, dyn, name, nil
}
