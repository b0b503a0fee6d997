package cluster

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Usage is the subnet's use in the shape of Azure's "Virtual Networks - List
// Usage" answer: {"value":[{"currentValue":N,"limit":M,"name":{...},"unit":"Count","id":...}]}.
type Usage struct {
	Value []UsageValue `json:"value"`
}

// UsageValue is one subnet's entry.
type UsageValue struct {
	CurrentValue int       `json:"currentValue"`
	ID           string    `json:"id"`
	Limit        int       `json:"limit"`
	Name         UsageName `json:"name"`
	Unit         string    `json:"unit"`
}

// UsageName names the counter as Azure does.
type UsageName struct {
	LocalizedValue string `json:"localizedValue"`
	Value          string `json:"value"`
}

// Device is one address of the subnet in use ("connected devices").
type Device struct {
	IP        netip.Addr `json:"ip"`
	Kind      string     `json:"kind"` // "node" or "pod"
	Namespace string     `json:"namespace,omitempty"`
	Name      string     `json:"name"`
	Node      string     `json:"node"`
	Block     string     `json:"block,omitempty"`
}

// NodeAddr is a node's address on the subnet.
type NodeAddr struct {
	Name string
	IP   netip.Addr
}

// SubnetReport is the subnet's use computed from the cluster's state.
type SubnetReport struct {
	Subnet netip.Prefix
	// Limit is the subnet's addresses minus the reserved ones (network,
	// broadcast and Docker's gateway), as Azure's limit is the subnet size
	// minus its 5 reserved addresses.
	Limit int
	// CurrentValue counts node addresses plus every address pre-allocated to
	// a node's block: in Azure's node-subnet mode the per-node IPs are
	// assigned to the node's NIC up front and count as used whether or not a
	// pod holds them yet.
	CurrentValue int
	Nodes        int
	Blocks       []IPBlock
	PodsAssigned int
	Devices      []Device
}

// Report computes the subnet's use from its IPBlocks and the nodes' addresses.
func Report(subnet netip.Prefix, gateway netip.Addr, blocks []IPBlock, nodes []NodeAddr) SubnetReport {
	subnet = subnet.Masked()
	r := SubnetReport{Subnet: subnet, Limit: 1<<(32-subnet.Bits()) - 2}
	if gateway.IsValid() && subnet.Contains(gateway) {
		r.Limit--
	}
	for _, n := range nodes {
		if !subnet.Contains(n.IP) {
			continue
		}
		r.Nodes++
		r.Devices = append(r.Devices, Device{IP: n.IP, Kind: "node", Name: n.Name, Node: n.Name})
	}
	for _, b := range blocks {
		if b.Spec.Subnet != subnet.String() {
			continue
		}
		r.Blocks = append(r.Blocks, b)
		r.CurrentValue += b.Spec.Size
		for _, a := range b.Status.Allocations {
			ip, err := netip.ParseAddr(a.IP)
			if err != nil {
				continue
			}
			r.PodsAssigned++
			name := a.PodName
			if name == "" {
				name = "(container " + shortID(a.ContainerID) + ")"
			}
			r.Devices = append(r.Devices, Device{IP: ip, Kind: "pod", Namespace: a.PodNamespace, Name: name, Node: b.Spec.Node, Block: b.Name})
		}
	}
	r.CurrentValue += r.Nodes
	slices.SortFunc(r.Devices, func(a, b Device) int { return a.IP.Compare(b.IP) })
	return r
}

// Azure answers this for a subnet; id names the subnet the way Azure's
// resource IDs do, under the cluster.
func (r SubnetReport) Azure(cluster string) Usage {
	id := fmt.Sprintf("/clusters/%s/providers/flatnet.io/subnets/%s", cluster, strings.ReplaceAll(r.Subnet.String(), "/", "_"))
	return Usage{Value: []UsageValue{{
		CurrentValue: r.CurrentValue, ID: id, Limit: r.Limit, Unit: "Count",
		Name: UsageName{Value: "SubnetSpace", LocalizedValue: "Subnet size and usage"},
	}}}
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
