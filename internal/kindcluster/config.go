package kindcluster

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"sigs.k8s.io/kind/pkg/apis/config/v1alpha4"
	"sigs.k8s.io/yaml"
)

// Topology reads kind-configs/<name>.yaml from dir as kind's typed v1alpha4
// config (unknown fields refused) and gives it the network's pod and Service
// subnets: pods live in the node subnet (no overlay), so kube-proxy treats every
// pod address as in-cluster and never masquerades pod -> Service traffic.
func Topology(dir, name string, net Network) (*v1alpha4.Cluster, error) {
	raw, err := os.ReadFile(filepath.Join(dir, name+".yaml"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, &Problem{
			What:  "unknown cluster config CONFIG=" + name,
			Hints: []string{"choose one of: " + strings.Join(topologies(dir), " ")},
		}
	}
	if err != nil {
		return nil, fmt.Errorf("reading cluster config %s: %w", name, err)
	}
	var c v1alpha4.Cluster
	if err := yaml.UnmarshalStrict(raw, &c); err != nil {
		return nil, fmt.Errorf("cluster config %s: %w", filepath.Join(dir, name+".yaml"), err)
	}
	if c.Kind != "Cluster" || c.APIVersion != "kind.x-k8s.io/v1alpha4" {
		return nil, fmt.Errorf("cluster config %s: want kind: Cluster, apiVersion: kind.x-k8s.io/v1alpha4", name)
	}
	c.Networking.PodSubnet = net.Subnet.String()
	c.Networking.ServiceSubnet = net.ServiceSubnet.String()
	c.Networking.APIServerAddress = "127.0.0.1"
	c.Networking.APIServerPort = int32(net.APIServerPort)
	return &c, nil
}

// topologies lists the cluster configs in dir by name.
func topologies(dir string) []string {
	files, _ := filepath.Glob(filepath.Join(dir, "*.yaml"))
	names := make([]string, 0, len(files))
	for _, f := range files {
		names = append(names, strings.TrimSuffix(filepath.Base(f), ".yaml"))
	}
	sort.Strings(names)
	return names
}
