// Package cniconf is the flatnet plugin's network configuration: the node
// agent renders it into the conflist (Conflist) once it owns the node's
// block, and the plugin parses and validates it on every call (ParseConfig),
// with the same checks on both sides. It lives beside the plugin, not in it,
// so that the agent imports nothing of the plugin.
package cniconf

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"path/filepath"
	"regexp"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/flatnet/flatnet/dataplane/endpointapi"
	"github.com/flatnet/flatnet/dataplane/ipam"
	"github.com/flatnet/flatnet/dataplane/ipam/nodealloc"
)

// PluginType is the "type" of the plugin in a conflist and the name of its binary.
const PluginType = "flatnet"

// NetConf is the plugin's configuration. The node agent writes it into the
// conflist once it owns the node's block, so the plugin itself needs no
// access to the API server:
//
//	{"cniVersion":"1.1.0","name":"flatnet","type":"flatnet",
//	 "nodeName":"kind-worker","uplink":"eth0",
//	 "subnet":"10.224.0.0/16","gateway":"10.224.0.1","dockerRange":"10.224.0.0/27",
//	 "block":{"first":"10.224.0.62","size":30},
//	 "dataDir":"/var/lib/flatnet/ipam","agentSocket":"/run/flatnet/agent.sock"}
type NetConf struct {
	types.PluginConf

	// NodeName names the node in errors (exhaustion) and in the agent's records.
	NodeName string `json:"nodeName"`
	// Uplink is the node's interface on the node subnet (eth0 in a kind node):
	// the host answers ARP for its pods there.
	Uplink string `json:"uplink"`
	// Subnet is the node subnet, e.g. 10.224.0.0/16. The uplink must hold an
	// address inside it (the node is on the flat network).
	Subnet string `json:"subnet"`
	// Gateway and DockerRange are Docker's gateway and --ip-range on that
	// network: never handed to a pod, so the block may not contain them.
	Gateway     string `json:"gateway,omitempty"`
	DockerRange string `json:"dockerRange,omitempty"`
	// Block is this node's run of addresses, owned through its IPBlock object.
	Block BlockConf `json:"block"`
	// MTU of the pod interface; 0 takes the uplink's.
	MTU int `json:"mtu,omitempty"`
	// DataDir holds the node-local allocator's state (nodealloc.DefaultDir when empty).
	DataDir string `json:"dataDir,omitempty"`
	// AgentSocket is the agent's endpoint API. Empty means no agent (pods get
	// networking, nothing enforces policy); the agent always sets it.
	AgentSocket string `json:"agentSocket,omitempty"`

	// RuntimeConfig is injected by the runtime, never written by the agent.
	RuntimeConfig *RuntimeConfig `json:"runtimeConfig,omitempty"`
}

// BlockConf is the node's block as written in the config.
type BlockConf struct {
	First string `json:"first"`
	Size  int    `json:"size"`
}

// Config is a validated NetConf with its values parsed.
type Config struct {
	Raw         *NetConf
	Layout      ipam.Layout
	Block       ipam.Block
	NodeName    string
	Uplink      string
	MTU         int
	DataDir     string
	AgentSocket string
}

// ifNameRE is what the kernel accepts as an interface name (IFNAMSIZ-1, no '/', ':' or space).
var ifNameRE = regexp.MustCompile(`^[^/:\s]{1,15}$`)

// ParseConfig decodes and validates the plugin configuration. Every error
// names the field at fault and what a valid value looks like; it is a
// *types.Error with code ErrDecodingFailure (not JSON) or
// ErrInvalidNetworkConfig (JSON, wrong values).
func ParseConfig(data []byte) (*Config, error) {
	nc := &NetConf{}
	if err := json.Unmarshal(data, nc); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("decode flatnet network config: %v", err), "the config must be a JSON object as in the conflist the flatnet agent writes")
	}
	c, err := validate(nc)
	if err != nil {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "invalid flatnet network config: "+err.Error(), "")
	}
	return c, nil
}

func validate(nc *NetConf) (*Config, error) {
	if nc.Name == "" {
		return nil, fmt.Errorf(`name: missing; set the network name, e.g. "flatnet"`)
	}
	if nc.Type != "" && nc.Type != PluginType {
		return nil, fmt.Errorf("type %q: this plugin is %q", nc.Type, PluginType)
	}
	if nc.NodeName == "" {
		return nil, fmt.Errorf("nodeName: missing; set it to the Kubernetes node name (the agent writes it)")
	}
	if !ifNameRE.MatchString(nc.Uplink) {
		return nil, fmt.Errorf("uplink %q: must name the node's interface on the node subnet (1-15 characters, e.g. eth0)", nc.Uplink)
	}
	if nc.Subnet == "" {
		return nil, fmt.Errorf("subnet: missing; set the node subnet CIDR, e.g. 10.224.0.0/16")
	}
	subnet, err := netip.ParsePrefix(nc.Subnet)
	if err != nil {
		return nil, fmt.Errorf("subnet %q: not a CIDR; use e.g. 10.224.0.0/16", nc.Subnet)
	}
	l := ipam.Layout{Subnet: subnet, BlockSize: nc.Block.Size}
	if nc.Gateway != "" {
		if l.Gateway, err = netip.ParseAddr(nc.Gateway); err != nil {
			return nil, fmt.Errorf("gateway %q: not an IP address; use the docker network's gateway, e.g. 10.224.0.1", nc.Gateway)
		}
	}
	if nc.DockerRange != "" {
		if l.DockerRange, err = netip.ParsePrefix(nc.DockerRange); err != nil {
			return nil, fmt.Errorf("dockerRange %q: not a CIDR; use docker's --ip-range, e.g. 10.224.0.0/27", nc.DockerRange)
		}
	}
	if nc.Block.First == "" {
		return nil, fmt.Errorf(`block.first: missing; the agent writes the node's block as {"first":"10.224.0.32","size":30}`)
	}
	first, err := netip.ParseAddr(nc.Block.First)
	if err != nil || !first.Is4() {
		return nil, fmt.Errorf("block.first %q: not an IPv4 address", nc.Block.First)
	}
	if nc.Block.Size < ipam.MinBlockSize || nc.Block.Size > ipam.MaxBlockSize {
		return nil, fmt.Errorf("block.size %d: must be between %d and %d (the agent's --block-size, equal to the kubelet's maxPods)", nc.Block.Size, ipam.MinBlockSize, ipam.MaxBlockSize)
	}
	// The layout check reports subnet/gateway/dockerRange problems by field name.
	if err := l.Validate(); err != nil {
		return nil, err
	}
	b := ipam.Block{Index: -1, First: first, Size: nc.Block.Size}
	if !subnet.Contains(b.First) || !subnet.Contains(b.Last()) {
		return nil, fmt.Errorf("block %s: not inside subnet %s", b, subnet)
	}
	if err := checkReserved(l, b); err != nil {
		return nil, err
	}
	if nc.MTU != 0 && (nc.MTU < 576 || nc.MTU > 65535) {
		return nil, fmt.Errorf("mtu %d: must be 0 (take the uplink's) or 576..65535", nc.MTU)
	}
	dir := nc.DataDir
	if dir == "" {
		dir = nodealloc.DefaultDir
	}
	if !filepath.IsAbs(dir) {
		return nil, fmt.Errorf("dataDir %q: must be an absolute path, e.g. %s", nc.DataDir, nodealloc.DefaultDir)
	}
	if nc.AgentSocket != "" && !filepath.IsAbs(nc.AgentSocket) {
		return nil, fmt.Errorf("agentSocket %q: must be an absolute path, e.g. %s, or empty for no agent", nc.AgentSocket, endpointapi.DefaultSocket)
	}
	if err := validatePortMappings(nc.RuntimeConfig); err != nil {
		return nil, err
	}
	return &Config{
		Raw: nc, Layout: l, Block: b, NodeName: nc.NodeName, Uplink: nc.Uplink,
		MTU: nc.MTU, DataDir: filepath.Clean(dir), AgentSocket: nc.AgentSocket,
	}, nil
}

// checkReserved refuses a block holding an address no pod may get: the
// subnet's network and broadcast addresses, Docker's gateway and --ip-range.
func checkReserved(l ipam.Layout, b ipam.Block) error {
	bits := l.Subnet.Bits()
	network := l.Subnet.Masked().Addr()
	bcast := ipam.Block{First: network, Size: 1 << (32 - bits)}.Last()
	for _, r := range []struct {
		what string
		a    netip.Addr
	}{{"the subnet's network address", network}, {"the subnet's broadcast address", bcast}, {"gateway", l.Gateway}} {
		if r.a.IsValid() && b.Contains(r.a) {
			return fmt.Errorf("block %s: contains %s %s, which is never handed to a pod", b, r.what, r.a)
		}
	}
	if l.DockerRange.IsValid() {
		dr := l.DockerRange.Masked()
		rb := ipam.Block{First: dr.Addr(), Size: 1 << (32 - dr.Bits())}
		if b.Overlaps(rb) {
			return fmt.Errorf("block %s: overlaps dockerRange %s where Docker places the nodes", b, dr)
		}
	}
	return nil
}
