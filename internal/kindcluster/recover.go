package kindcluster

import (
	"context"
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
)

// healthyNodes reports whether every node container runs on the address kind gave
// it (a cluster restarted by something else than Up may hold them shuffled).
func (c *Cluster) healthyNodes(ctx context.Context) bool {
	nodes, err := c.Nodes()
	if err != nil {
		return false
	}
	eps, err := endpoints(ctx, c.network, nodes)
	if err != nil {
		return false
	}
	for _, n := range nodes {
		if !eps[n].Running {
			return false
		}
	}
	for _, n := range nodes {
		want, _ := kindNodeIP(ctx, n)
		if have := eps[n].Address; want != "" && want != have {
			c.progress.Warn("node %s is on %s, not on its address %s", n, have, want)
			return false
		}
	}
	return true
}

// recover restarts the nodes of a cluster that does not answer (or whose nodes
// moved), each pinned back to its address, and waits for its control plane.
// recovered is false when the cluster did not come back; err is a failure that
// recreating it would not cure.
func (c *Cluster) recover(ctx context.Context) (recovered bool, err error) {
	c.progress.Step("cluster %s: exists but does not answer (or its nodes moved); restarting its nodes", c.cfg.Name)
	if err := c.ensureNetwork(ctx); err != nil {
		return false, err
	}
	nodes, err := c.Nodes()
	if err != nil {
		return false, err
	}
	_, _ = docker(ctx, append([]string{"stop"}, nodes...)...)
	if err := c.pinNodeAddresses(ctx, nodes); err != nil {
		return false, err
	}
	_, _ = docker(ctx, append([]string{"start"}, nodes...)...)
	// The API server's port on the host can change with a restart: rewrite the
	// kubeconfig on every try.
	_ = wait.PollUntilContextTimeout(ctx, 2*time.Second, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		_ = c.writeKubeconfig()
		return c.Answers(ctx), nil
	})
	return c.Answers(ctx) && c.waitControlPlane(ctx) == nil, nil
}

// pinNodeAddresses reconnects each stopped node to the cluster network with the
// address kind gave it, fixed, before it starts. Docker gives a starting container
// the next free address of the network, so nodes started again after a host
// restart come back shuffled: a worker on the control plane's old address, whose
// API server then advertises another node's, kube-proxy sending the kubernetes
// Service there, agents crash-looping.
func (c *Cluster) pinNodeAddresses(ctx context.Context, nodes []string) error {
	eps, err := endpoints(ctx, c.network, nodes)
	if err != nil {
		return err
	}
	for _, n := range nodes {
		ip, err := kindNodeIP(ctx, n)
		if err != nil || ip == "" {
			c.progress.Warn("node %s: no node-ip in its /kind/kubeadm.conf; its address is left to Docker", n)
			continue
		}
		if eps[n].Fixed == ip {
			continue
		}
		c.progress.Info("node %s: back on its address %s", n, ip)
		_, _ = docker(ctx, "network", "disconnect", "-f", c.network, n)
		if _, err := docker(ctx, "network", "connect", "--ip", ip, c.network, n); err != nil {
			return &Problem{
				What:  fmt.Sprintf("could not give node %s its address %s on docker network %s", n, ip, c.network),
				Hints: []string{fmt.Sprintf("recreate the cluster: make cluster-down CLUSTER=%s && make cluster", c.cfg.Name)},
				Err:   err,
			}
		}
	}
	return nil
}
