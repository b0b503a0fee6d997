// Package kindcluster is the life of a flatnet kind cluster on kind's own API
// (sigs.k8s.io/kind/pkg/cluster): created from a topology in kind-configs on a
// docker network of its own (the node subnet of kind-configs/network.env, fenced
// in), kept when healthy, recovered when its nodes were stopped (a host restart),
// deleted with its network.
package kindcluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/kind/pkg/apis/config/v1alpha4"
	"sigs.k8s.io/kind/pkg/cluster"
	kindexec "sigs.k8s.io/kind/pkg/exec"
	"sigs.k8s.io/yaml"
)

// Config says which cluster and where its inputs and outputs are.
type Config struct {
	Name       string  // the kind cluster, also naming its docker network <Name>-net
	Topology   string  // kind-configs/<Topology>.yaml
	ConfigDir  string  // kind-configs
	Network    Network // the address plan
	Kubeconfig string  // written on up, removed on down
	OutDir     string  // where the create log, the rendered config and failure logs go
	// NodeImage returns the node image to create the cluster from; asked only when
	// a cluster is created.
	NodeImage func(ctx context.Context) (string, error)
}

// Cluster runs the lifecycle of one cluster.
type Cluster struct {
	cfg      Config
	network  string
	progress *Progress
	kindLog  *kindLogger
	kind     *cluster.Provider
}

var validName = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,30}$`)

// New returns the cluster cfg describes, reporting to progress.
func New(cfg Config, progress *Progress) (*Cluster, error) {
	if !validName.MatchString(cfg.Name) {
		return nil, &Problem{
			What:  fmt.Sprintf("CLUSTER=%s is not a valid cluster name", cfg.Name),
			Hints: []string{"use lower-case letters, digits and '-', at most 31 characters"},
		}
	}
	l := &kindLogger{p: progress}
	return &Cluster{
		cfg:      cfg,
		network:  cfg.Name + "-net",
		progress: progress,
		kindLog:  l,
		kind:     cluster.NewProvider(cluster.ProviderWithDocker(), cluster.ProviderWithLogger(l)),
	}, nil
}

// Up leaves the cluster running with its control plane up and its kubeconfig
// written: kept when it answers from nodes on their addresses, recovered when it
// does not (nodes restarted and pinned back), recreated when that fails, created
// when there is none.
func (c *Cluster) Up(ctx context.Context) error {
	exists, err := c.exists()
	if err != nil {
		return err
	}
	if exists {
		if why, err := c.otherTopology(); err != nil {
			return err
		} else if why != "" {
			c.progress.Warn("cluster %s %s; recreating it", c.cfg.Name, why)
			if err := c.kind.Delete(c.cfg.Name, c.cfg.Kubeconfig); err != nil {
				return fmt.Errorf("deleting cluster %s: %w", c.cfg.Name, err)
			}
			exists = false
		}
	}
	if exists {
		_ = c.writeKubeconfig()
		if c.Answers(ctx) && c.healthyNodes(ctx) {
			c.progress.Info("cluster %s: healthy, nothing to do", c.cfg.Name)
			return nil
		}
		recovered, err := c.recover(ctx)
		if err != nil {
			return err
		}
		if recovered {
			c.progress.Info("cluster %s: recovered", c.cfg.Name)
			return nil
		}
		c.progress.Warn("cluster %s did not recover; recreating it", c.cfg.Name)
		_ = c.kind.Delete(c.cfg.Name, c.cfg.Kubeconfig)
	}
	if err := c.create(ctx); err != nil {
		return err
	}
	cs, err := client(c.cfg.Kubeconfig)
	if err != nil {
		return err
	}
	nodes, err := c.Nodes()
	if err != nil {
		return err
	}
	if err := wait.PollUntilContextTimeout(ctx, time.Second, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		return registeredNodes(ctx, cs) >= len(nodes), nil
	}); err != nil {
		return &Problem{What: "not every node registered", Hints: []string{c.kubectlHint("get nodes")}}
	}
	if err := c.waitControlPlane(ctx); err != nil {
		return &Problem{What: "the control plane did not come up in 2 minutes", Hints: []string{c.kubectlHint("-n kube-system get pods")}}
	}
	if changed, err := offlineDNS(ctx, cs); err != nil {
		return err
	} else if changed {
		c.progress.Info("CoreDNS: cluster.local only (no upstream offline)")
	}
	c.progress.Info("cluster %s: control plane running", c.cfg.Name)
	return nil
}

// Down deletes the cluster, its docker network and its fence, and its kubeconfig;
// nothing else.
func (c *Cluster) Down(ctx context.Context) error {
	exists, err := c.exists()
	if err != nil {
		return err
	}
	if exists {
		c.progress.Step("kind: deleting cluster %s", c.cfg.Name)
		if err := c.kind.Delete(c.cfg.Name, c.cfg.Kubeconfig); err != nil {
			return fmt.Errorf("deleting cluster %s: %w", c.cfg.Name, err)
		}
	}
	if _, found, err := networkSubnets(ctx, c.network); err != nil {
		return err
	} else if found {
		if _, err := docker(ctx, "network", "rm", c.network); err != nil {
			return err
		}
		c.progress.Info("docker network %s: removed", c.network)
	}
	if err := fence(false, c.cfg.Network.Subnet); err != nil {
		return err
	}
	if err := os.Remove(c.cfg.Kubeconfig); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing the kubeconfig: %w", err)
	}
	return nil
}

// Answers reports whether the cluster's API server answers through its kubeconfig.
func (c *Cluster) Answers(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	return answers(ctx, c.cfg.Kubeconfig)
}

// Nodes returns the names of the cluster's node containers, running or not.
func (c *Cluster) Nodes() ([]string, error) {
	nodes, err := c.kind.ListNodes(c.cfg.Name)
	if err != nil {
		return nil, fmt.Errorf("listing the nodes of cluster %s: %w", c.cfg.Name, err)
	}
	names := make([]string, 0, len(nodes))
	for _, n := range nodes {
		names = append(names, n.String())
	}
	slices.Sort(names)
	return names, nil
}

// CollectLogs writes what kind gathers of every node (journal, kubelet,
// containerd, /var/log, the container's own output) under dir.
func (c *Cluster) CollectLogs(dir string) error {
	if err := c.kind.CollectLogs(c.cfg.Name, dir); err != nil {
		return fmt.Errorf("collecting the logs of cluster %s: %w", c.cfg.Name, err)
	}
	return nil
}

// otherTopology says how the existing cluster's nodes differ from its topology's
// ("" when they do not): a cluster made from another config (make cluster
// CONFIG=scale, or an older default) is not what the caller asked for.
func (c *Cluster) otherTopology() (string, error) {
	cfg, err := Topology(c.cfg.ConfigDir, c.cfg.Topology, c.cfg.Network)
	if err != nil {
		return "", err
	}
	nodes, err := c.kind.ListNodes(c.cfg.Name)
	if err != nil {
		return "", fmt.Errorf("listing the nodes of cluster %s: %w", c.cfg.Name, err)
	}
	roles := make([]v1alpha4.NodeRole, 0, len(nodes))
	for _, n := range nodes {
		r, err := n.Role()
		if err != nil {
			return "", fmt.Errorf("reading the role of node %s: %w", n, err)
		}
		roles = append(roles, v1alpha4.NodeRole(r))
	}
	return nodesDiffer(roles, cfg), nil
}

// nodesDiffer compares the roles of a cluster's nodes (as kind labels its node
// containers) with cfg's nodes, role by role.
func nodesDiffer(roles []v1alpha4.NodeRole, cfg *v1alpha4.Cluster) string {
	count := func(roles []v1alpha4.NodeRole) (cp, workers int) {
		for _, r := range roles {
			switch r {
			case v1alpha4.ControlPlaneRole:
				cp++
			case v1alpha4.WorkerRole:
				workers++
			} // kind's own load balancer of several control planes is no topology node
		}
		return cp, workers
	}
	want := make([]v1alpha4.NodeRole, 0, len(cfg.Nodes))
	for _, n := range cfg.Nodes {
		want = append(want, n.Role)
	}
	haveCP, haveW := count(roles)
	wantCP, wantW := count(want)
	if haveCP == wantCP && haveW == wantW {
		return ""
	}
	return fmt.Sprintf("has %d control-plane and %d worker node(s), its topology %d and %d", haveCP, haveW, wantCP, wantW)
}

func (c *Cluster) exists() (bool, error) {
	names, err := c.kind.List()
	if err != nil {
		return false, fmt.Errorf("listing kind clusters: %w", err)
	}
	return slices.Contains(names, c.cfg.Name), nil
}

func (c *Cluster) writeKubeconfig() error {
	kc, err := c.kind.KubeConfig(c.cfg.Name, false)
	if err != nil {
		return fmt.Errorf("reading the kubeconfig of cluster %s: %w", c.cfg.Name, err)
	}
	return os.WriteFile(c.cfg.Kubeconfig, []byte(kc), 0o600)
}

func (c *Cluster) kubectlHint(args string) string {
	return fmt.Sprintf("kubectl: KUBECONFIG=%s kubectl %s", c.cfg.Kubeconfig, args)
}

// waitControlPlane waits up to 2 minutes for the control plane's pods to run.
func (c *Cluster) waitControlPlane(ctx context.Context) error {
	cs, err := client(c.cfg.Kubeconfig)
	if err != nil {
		return err
	}
	start := time.Now()
	next := 15 * time.Second
	return wait.PollUntilContextTimeout(ctx, time.Second, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		if controlPlaneRunning(ctx, cs) {
			return true, nil
		}
		if waited := time.Since(start); waited >= next {
			c.progress.Info("waiting for the control plane (%d s)", int(waited.Seconds()))
			next += 15 * time.Second
		}
		return false, nil
	})
}

// create makes the cluster from its topology on its own network; on failure it
// keeps the nodes' logs and removes what it made.
func (c *Cluster) create(ctx context.Context) error {
	cfg, err := Topology(c.cfg.ConfigDir, c.cfg.Topology, c.cfg.Network)
	if err != nil {
		return err
	}
	image, err := c.cfg.NodeImage(ctx)
	if err != nil {
		return err
	}
	if err := checkPortFree(c.cfg.Network.APIServerPort); err != nil {
		return err
	}
	if err := c.ensureNetwork(ctx); err != nil {
		return err
	}
	rendered, err := yaml.Marshal(cfg)
	if err != nil {
		return fmt.Errorf("rendering the kind config: %w", err)
	}
	if err := os.WriteFile(filepath.Join(c.cfg.OutDir, c.cfg.Name+".kind.yaml"), rendered, 0o644); err != nil {
		return fmt.Errorf("writing the kind config: %w", err)
	}
	logPath := filepath.Join(c.cfg.OutDir, c.cfg.Name+".create.log")
	transcript, err := os.Create(logPath)
	if err != nil {
		return fmt.Errorf("creating the kind log: %w", err)
	}
	defer transcript.Close()
	c.kindLog.setTranscript(transcript)
	defer c.kindLog.setTranscript(nil)

	c.progress.Step("kind: creating cluster %s (%s: %d nodes, image %s)", c.cfg.Name, c.cfg.Topology, len(cfg.Nodes), image)
	// kind puts nodes on a network of the caller's choosing only through this variable.
	if err := os.Setenv("KIND_EXPERIMENTAL_DOCKER_NETWORK", c.network); err != nil {
		return err
	}
	err = c.kind.Create(c.cfg.Name,
		cluster.CreateWithV1Alpha4Config(cfg),
		cluster.CreateWithNodeImage(image),
		cluster.CreateWithKubeconfigPath(c.cfg.Kubeconfig),
		// The nodes stay after a failure for their logs; removed below. No
		// CreateWithWaitForReady: nodes are NotReady until flatnet is deployed.
		cluster.CreateWithRetain(true),
	)
	if err == nil {
		return nil
	}
	fmt.Fprintf(transcript, "ERROR: %v\n", err)
	if re := kindexec.RunErrorForError(err); re != nil {
		fmt.Fprintf(transcript, "Command Output: %s\n", re.Output)
	}
	failureLogs := filepath.Join(c.cfg.OutDir, c.cfg.Name+"-failure")
	_ = c.CollectLogs(failureLogs)
	_ = c.kind.Delete(c.cfg.Name, c.cfg.Kubeconfig)
	_, _ = docker(ctx, "network", "rm", c.network)
	return &Problem{
		What:  fmt.Sprintf("kind could not create cluster %s (removed what it had made)", c.cfg.Name),
		Hints: []string{"kind log: " + logPath, "node logs: " + failureLogs + "/"},
		Err:   err,
	}
}

// ensureNetwork makes the cluster's docker network on the node subnet, fenced, or
// refuses clearly when the subnet is taken by something else.
func (c *Cluster) ensureNetwork(ctx context.Context) error {
	subnet := c.cfg.Network.Subnet
	have, found, err := networkSubnets(ctx, c.network)
	if err != nil {
		return err
	}
	if found {
		if len(have) != 1 || have[0].Masked() != subnet.Masked() {
			return &Problem{
				What: fmt.Sprintf("docker network %s exists with subnet %s, not %s", c.network, joinPrefixes(have), subnet),
				Hints: []string{fmt.Sprintf("remove it (make cluster-down CLUSTER=%s) or set NODE_SUBNET=%s",
					c.cfg.Name, joinPrefixes(have))},
			}
		}
		return fence(true, subnet)
	}
	uses, err := dockerNetworkUses(ctx)
	if err != nil {
		return err
	}
	routes, err := hostRouteUses()
	if err != nil {
		return err
	}
	if u, busy := firstConflict(subnet, append(uses, routes...)); busy {
		hint := "pick a free range: NODE_SUBNET=10.225.0.0/16 NODE_GATEWAY=10.225.0.1 NODE_IP_RANGE=10.225.0.0/27 API_SERVER_PORT=26444 TEST_WORLD_CIDR=10.225.255.0/24 make cluster"
		if u.Network {
			hint = "remove that network, or " + hint
		}
		return &Problem{What: fmt.Sprintf("the node subnet %s is busy: %s %s", subnet, u.By, u.Prefix), Hints: []string{hint}}
	}
	c.progress.Info("docker network %s: %s (nodes in %s, the rest for pods)", c.network, subnet, c.cfg.Network.IPRange)
	// No masquerade: pod and node traffic never leaves this machine with a borrowed address.
	if _, err := docker(ctx, "network", "create", "-d", "bridge",
		"--subnet", subnet.String(), "--gateway", c.cfg.Network.Gateway.String(),
		"--ip-range", c.cfg.Network.IPRange.String(), "--label", "flatnet.io/cluster="+c.cfg.Name,
		"-o", "com.docker.network.bridge.enable_ip_masquerade=false", c.network); err != nil {
		return &Problem{What: "could not create docker network " + c.network, Err: err}
	}
	return fence(true, subnet)
}

// checkPortFree refuses, before kind starts anything, an API server port that
// something on 127.0.0.1 already holds (Docker would fail half-way through).
func checkPortFree(port uint16) error {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port)))
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return &Problem{
			What:  fmt.Sprintf("the API server port %s is in use", addr),
			Hints: []string{fmt.Sprintf("pick another below 32768: API_SERVER_PORT=%d make cluster", port+1)},
			Err:   err,
		}
	}
	return l.Close()
}

func joinPrefixes(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, "")
}
