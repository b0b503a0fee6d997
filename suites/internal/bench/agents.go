package bench

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/procfs"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Agent is one CNI agent process on a kind node, seen from the machine that
// runs the node containers (this one: the bench needs root here).
type Agent struct {
	Node string
	PID  int
	// Cgroup is the agent container's cgroup (v1 path, the same under every
	// controller): the agent and whatever it starts (Cilium's clang).
	Cgroup string
}

// FindAgents finds the process named comm (as /proc/PID/comm shows it:
// flatnet-agent, cilium-agent) in each kind node container of nodes.
func FindAgents(ctx context.Context, nodes []string, comm string) ([]Agent, error) {
	ids := map[string]string{} // container id -> node
	for _, n := range nodes {
		out, err := exec.CommandContext(ctx, "docker", "inspect", "-f", "{{.Id}}", n).Output()
		if err != nil {
			return nil, fmt.Errorf("docker inspect %s (the bench reads the node containers' processes; run it on the machine that runs kind): %w", n, err)
		}
		ids[strings.TrimSpace(string(out))] = n
	}
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		return nil, fmt.Errorf("opening /proc: %w", err)
	}
	procs, err := fs.AllProcs()
	if err != nil {
		return nil, fmt.Errorf("listing /proc: %w", err)
	}
	var out []Agent
	for _, p := range procs {
		c, err := p.Comm()
		if err != nil || c != comm {
			continue
		}
		cgs, err := p.Cgroups()
		if err != nil {
			continue
		}
		for _, cg := range cgs {
			if !slices.Contains(cg.Controllers, "cpuacct") {
				continue
			}
			for id, node := range ids {
				if strings.Contains(cg.Path, "/docker/"+id+"/") {
					out = append(out, Agent{Node: node, PID: p.PID, Cgroup: cg.Path})
				}
			}
		}
	}
	if len(out) != len(nodes) {
		return out, fmt.Errorf("found %d %s processes on %d nodes %v: want one per node (is the agent running? is this the machine running kind?)", len(out), comm, len(nodes), nodes)
	}
	return out, nil
}

// cgroupRoot is where cgroup v1 controllers are mounted on this machine.
const cgroupRoot = "/sys/fs/cgroup"

func (a Agent) cpuNanos() (uint64, error) {
	return readUint(filepath.Join(cgroupRoot, "cpuacct", a.Cgroup, "cpuacct.usage"))
}

// workingSet is usage minus inactive file pages, as the kubelet and cAdvisor
// count a container's memory.
func (a Agent) workingSet() (uint64, error) {
	dir := filepath.Join(cgroupRoot, "memory", a.Cgroup)
	usage, err := readUint(filepath.Join(dir, "memory.usage_in_bytes"))
	if err != nil {
		return 0, err
	}
	f, err := os.Open(filepath.Join(dir, "memory.stat"))
	if err != nil {
		return 0, fmt.Errorf("reading the agent's memory.stat: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), " ")
		if k == "total_inactive_file" {
			n, _ := strconv.ParseUint(v, 10, 64)
			if n < usage {
				return usage - n, nil
			}
		}
	}
	return usage, nil
}

func readUint(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("reading %s: %w", path, err)
	}
	return strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
}

// Usage is the agents' mean use over a window, per agent.
type Usage struct {
	MilliCores float64 // CPU time / wall time, per agent
	MemMiB     float64 // working set, mean of the samples, per agent
	MaxMemMiB  float64 // the largest one agent's sample
}

// Sample reads the agents' cgroups every second for d.
func Sample(ctx context.Context, agents []Agent, d time.Duration) (Usage, error) {
	if len(agents) == 0 {
		return Usage{}, fmt.Errorf("no agents to sample")
	}
	cpu := func() (uint64, error) {
		var sum uint64
		for _, a := range agents {
			n, err := a.cpuNanos()
			if err != nil {
				return 0, fmt.Errorf("agent on %s: %w", a.Node, err)
			}
			sum += n
		}
		return sum, nil
	}
	c0, err := cpu()
	if err != nil {
		return Usage{}, err
	}
	t0 := time.Now()
	var memSum, samples, maxMem float64
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for end := t0.Add(d); time.Now().Before(end); {
		for _, a := range agents {
			ws, err := a.workingSet()
			if err != nil {
				return Usage{}, fmt.Errorf("agent on %s: %w", a.Node, err)
			}
			memSum += float64(ws)
			samples++
			maxMem = max(maxMem, float64(ws))
		}
		select {
		case <-ctx.Done():
			return Usage{}, ctx.Err()
		case <-tick.C:
		}
	}
	c1, err := cpu()
	if err != nil {
		return Usage{}, err
	}
	wall := time.Since(t0)
	n := float64(len(agents))
	return Usage{
		MilliCores: float64(c1-c0) / float64(wall.Nanoseconds()) * 1000 / n,
		MemMiB:     memSum / samples / (1 << 20),
		MaxMemMiB:  maxMem / (1 << 20),
	}, nil
}

// WorkerNodes lists the nodes pods can run on (no NoSchedule taint) and every
// node, by name.
func WorkerNodes(ctx context.Context, cs kubernetes.Interface) (workers, all []string, err error) {
	nl, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, nil, fmt.Errorf("listing nodes: %w", err)
	}
	for _, n := range nl.Items {
		all = append(all, n.Name)
		schedulable := !n.Spec.Unschedulable
		for _, t := range n.Spec.Taints {
			if t.Effect == corev1.TaintEffectNoSchedule {
				schedulable = false
			}
		}
		if schedulable {
			workers = append(workers, n.Name)
		}
	}
	return workers, all, nil
}

func listPods(ctx context.Context, cs kubernetes.Interface, namespace, selector string) ([]string, error) {
	pl, err := cs.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		return nil, fmt.Errorf("listing pods %s in %s: %w", selector, namespace, err)
	}
	var out []string
	for _, p := range pl.Items {
		out = append(out, p.Name)
	}
	return out, nil
}
