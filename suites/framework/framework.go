// Package framework is what every flatnet suite shares: the cluster under test
// (an e2e-framework config built from KUBECONFIG, with typed clients) and the
// e2e-framework environment functions a suite runs in BeforeSuite/AfterSuite.
package framework

import (
	"context"
	"fmt"
	"os"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/e2e-framework/pkg/env"
	"sigs.k8s.io/e2e-framework/pkg/envconf"
)

// Cluster is the cluster a suite runs against.
type Cluster struct {
	Config    *envconf.Config
	Rest      *rest.Config
	Clientset kubernetes.Interface
}

// FromEnv connects to the cluster named by $KUBECONFIG (make e2e sets it to the
// kind cluster's file; `make conformance KUBECONFIG=...` to any other cluster).
func FromEnv() (*Cluster, error) {
	path := os.Getenv("KUBECONFIG")
	if path == "" {
		return nil, fmt.Errorf("KUBECONFIG is not set: run the suites through `make e2e`, or export KUBECONFIG=<file of the cluster to test>")
	}
	restCfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return nil, fmt.Errorf("reading KUBECONFIG %s: %w", path, err)
	}
	// Suites issue bursts of execs and watches; client-go's defaults (5 qps) would pace them.
	restCfg.QPS, restCfg.Burst = 50, 100
	cs, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return nil, fmt.Errorf("building a clientset from %s: %w", path, err)
	}
	return &Cluster{Config: envconf.NewWithKubeConfig(path), Rest: restCfg, Clientset: cs}, nil
}

// Run applies e2e-framework environment functions in order (envfuncs.CreateNamespace,
// DeleteNamespace, ...), stopping at the first error.
func (c *Cluster) Run(ctx context.Context, funcs ...env.Func) (context.Context, error) {
	var err error
	for _, f := range funcs {
		if ctx, err = f(ctx, c.Config); err != nil {
			return ctx, err
		}
	}
	return ctx, nil
}
