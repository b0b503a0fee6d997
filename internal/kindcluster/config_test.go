package kindcluster

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/kind/pkg/apis/config/v1alpha4"
)

var testNetwork = Network{
	Subnet:        netip.MustParsePrefix("10.224.0.0/16"),
	Gateway:       netip.MustParseAddr("10.224.0.1"),
	IPRange:       netip.MustParsePrefix("10.224.0.0/27"),
	ServiceSubnet: netip.MustParsePrefix("10.96.0.0/16"),
	APIServerPort: 26443,
}

func TestTopologyRepoConfigs(t *testing.T) {
	for name, want := range map[string]struct{ workers, maxPods int }{"default": {3, 30}, "large": {4, 30}, "scale": {3, 250}} {
		workers := want.workers
		c, err := Topology("../../kind-configs", name, testNetwork)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		roles := map[v1alpha4.NodeRole]int{}
		for _, n := range c.Nodes {
			roles[n.Role]++
		}
		if roles[v1alpha4.ControlPlaneRole] != 1 || roles[v1alpha4.WorkerRole] != workers || len(c.Nodes) != 1+workers {
			t.Errorf("%s: nodes %v, want 1 control-plane and %d workers", name, roles, workers)
		}
		nw := c.Networking
		if !nw.DisableDefaultCNI || nw.KubeProxyMode != v1alpha4.IPTablesProxyMode ||
			nw.PodSubnet != "10.224.0.0/16" || nw.ServiceSubnet != "10.96.0.0/16" ||
			nw.APIServerAddress != "127.0.0.1" || nw.APIServerPort != 26443 {
			t.Errorf("%s: networking %+v", name, nw)
		}
		patches := strings.Join(c.KubeadmConfigPatches, "\n")
		for _, line := range []string{`allocate-node-cidrs: "false"`, "failCgroupV1: false", fmt.Sprintf("maxPods: %d", want.maxPods)} {
			if !strings.Contains(patches, line) {
				t.Errorf("%s: kubeadm patches lack %q", name, line)
			}
		}
	}
}

// The default topology keeps one worker for the disruptive e2e specs: labelled
// and tainted, so that only what tolerates the taint runs there.
func TestTopologyDefaultHasTheDisruptiveLane(t *testing.T) {
	c, err := Topology("../../kind-configs", "default", testNetwork)
	if err != nil {
		t.Fatal(err)
	}
	var lane []v1alpha4.Node
	for _, n := range c.Nodes {
		if n.Labels["flatnet.io/e2e-lane"] == "disruptive" {
			lane = append(lane, n)
		}
	}
	if len(lane) != 1 || lane[0].Role != v1alpha4.WorkerRole {
		t.Fatalf("nodes labelled flatnet.io/e2e-lane=disruptive: %+v, want one worker", lane)
	}
	patches := strings.Join(lane[0].KubeadmConfigPatches, "\n")
	for _, line := range []string{"kind: JoinConfiguration", "key: flatnet.io/e2e-lane", "value: disruptive", "effect: NoSchedule"} {
		if !strings.Contains(patches, line) {
			t.Errorf("the lane node's kubeadm patches lack %q:\n%s", line, patches)
		}
	}
}

func TestNodesDiffer(t *testing.T) {
	c, err := Topology("../../kind-configs", "default", testNetwork)
	if err != nil {
		t.Fatal(err)
	}
	cp, w := v1alpha4.ControlPlaneRole, v1alpha4.WorkerRole
	same := []v1alpha4.NodeRole{cp, w, w, w}
	if why := nodesDiffer(same, c); why != "" {
		t.Errorf("the topology's own nodes differ: %s", why)
	}
	for _, nodes := range [][]v1alpha4.NodeRole{same[:3], append(same, w), {cp, cp, w, w}} {
		if why := nodesDiffer(nodes, c); why == "" {
			t.Errorf("nodes %v: no difference found with 1 control-plane and 3 workers", nodes)
		} else if !strings.Contains(why, "its topology 1 and 3") {
			t.Errorf("nodes %v: %q does not say what the topology wants", nodes, why)
		}
	}
}

func TestTopologyNetworkWins(t *testing.T) {
	dir := t.TempDir()
	cfg := "kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\nnetworking:\n  podSubnet: 192.168.0.0/16\nnodes:\n  - role: control-plane\n"
	if err := os.WriteFile(filepath.Join(dir, "one.yaml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := Topology(dir, "one", testNetwork)
	if err != nil {
		t.Fatal(err)
	}
	if c.Networking.PodSubnet != "10.224.0.0/16" || c.Networking.ServiceSubnet != "10.96.0.0/16" {
		t.Fatalf("networking %+v: the address plan must decide the subnets", c.Networking)
	}
}

func TestTopologyRefuses(t *testing.T) {
	dir := t.TempDir()
	for file, body := range map[string]string{
		"typo.yaml":  "kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\nnode:\n  - role: worker\n",
		"other.yaml": "kind: Config\napiVersion: v1\n",
	} {
		if err := os.WriteFile(filepath.Join(dir, file), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := Topology(dir, "typo", testNetwork); err == nil || !strings.Contains(err.Error(), `unknown field "node"`) {
		t.Errorf("typo: got %v, want the unknown field refused", err)
	}
	if _, err := Topology(dir, "other", testNetwork); err == nil || !strings.Contains(err.Error(), "want kind: Cluster") {
		t.Errorf("other: got %v, want a wrong kind refused", err)
	}
	_, err := Topology(dir, "missing", testNetwork)
	var pr *Problem
	if !errors.As(err, &pr) || pr.What != "unknown cluster config CONFIG=missing" ||
		len(pr.Hints) != 1 || pr.Hints[0] != "choose one of: other typo" {
		t.Errorf("missing: got %#v, want the choices listed", err)
	}
}
