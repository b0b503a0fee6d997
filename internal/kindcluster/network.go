package kindcluster

import (
	"bufio"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"
)

// Network is a cluster's address plan, from kind-configs/network.env: the node
// subnet (one docker network holding nodes and pods: Azure's node-subnet mode),
// its gateway, the range Docker may give nodes, the Service subnet, and the
// host port of the API server.
type Network struct {
	Subnet        netip.Prefix
	Gateway       netip.Addr
	IPRange       netip.Prefix
	ServiceSubnet netip.Prefix
	// APIServerPort is where 127.0.0.1 reaches the API server. Below the
	// kernel's ephemeral range on purpose: Docker publishes it with a DNAT rule
	// on 127.0.0.1 that outlives a killed dockerd, and kind's default (a random
	// ephemeral port) then steals any local listener the kernel gives that port
	// (a test's 127.0.0.1:0 server got "connection refused").
	APIServerPort uint16
	// TestWorld is TEST_WORLD_CIDR: the addresses of the offline test world's
	// containers (scripts/test-world.sh), inside Subnet, never a node's (outside
	// IPRange) nor a pod's (the agents reserve it). Invalid when the plan has none.
	TestWorld netip.Prefix
}

// ephemeralStart is where Linux's default ip_local_port_range begins.
const ephemeralStart = 32768

// envDefault matches network.env's only form, NAME=${NAME:-default}: the
// environment overrides the file, as when the shell sources it.
var envDefault = regexp.MustCompile(`^([A-Z_][A-Z0-9_]*)=\$\{([A-Z_][A-Z0-9_]*):-([^}]*)\}$`)

// LoadNetwork reads the address plan from the network.env file at path, each value
// overridden by the variable of the same name when getenv returns one.
func LoadNetwork(path string, getenv func(string) string) (Network, error) {
	f, err := os.Open(path)
	if err != nil {
		return Network{}, fmt.Errorf("reading the address plan: %w", err)
	}
	defer f.Close()
	vals := map[string]string{}
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		m := envDefault.FindStringSubmatch(text)
		if m == nil || m[1] != m[2] {
			return Network{}, fmt.Errorf("%s:%d: want NAME=${NAME:-default}, got %q", path, line, text)
		}
		vals[m[1]] = m[3]
		if v := getenv(m[1]); v != "" {
			vals[m[1]] = v
		}
	}
	if err := sc.Err(); err != nil {
		return Network{}, fmt.Errorf("reading %s: %w", path, err)
	}
	return parseNetwork(vals)
}

func parseNetwork(vals map[string]string) (Network, error) {
	var n Network
	var errs []string
	prefix := func(name string, into *netip.Prefix) {
		p, err := netip.ParsePrefix(vals[name])
		if err != nil || !p.Addr().Is4() {
			errs = append(errs, fmt.Sprintf("%s=%q is not an IPv4 CIDR", name, vals[name]))
			return
		}
		*into = p
	}
	prefix("NODE_SUBNET", &n.Subnet)
	prefix("NODE_IP_RANGE", &n.IPRange)
	prefix("SERVICE_SUBNET", &n.ServiceSubnet)
	gw, err := netip.ParseAddr(vals["NODE_GATEWAY"])
	if err != nil || !gw.Is4() {
		errs = append(errs, fmt.Sprintf("NODE_GATEWAY=%q is not an IPv4 address", vals["NODE_GATEWAY"]))
	}
	n.Gateway = gw
	port, err := strconv.ParseUint(vals["API_SERVER_PORT"], 10, 16)
	if err != nil || port < 1024 || port >= ephemeralStart {
		errs = append(errs, fmt.Sprintf("API_SERVER_PORT=%q: want a port from 1024 to %d, below the ephemeral range (e.g. 26443)", vals["API_SERVER_PORT"], ephemeralStart-1))
	}
	n.APIServerPort = uint16(port)
	if v, ok := vals["TEST_WORLD_CIDR"]; ok && len(errs) == 0 {
		if err := n.setTestWorld(v); err != nil {
			errs = append(errs, err.Error())
		}
	}
	if len(errs) > 0 {
		return Network{}, fmt.Errorf("the address plan (kind-configs/network.env, or the variables overriding it): %s", strings.Join(errs, "; "))
	}
	return n, nil
}

// Use is an address range something on this machine already holds.
type Use struct {
	Prefix  netip.Prefix
	By      string // "docker network NAME uses" or "the host routes"
	Network bool   // a docker network, which the user may remove
}

// firstConflict returns the first use that overlaps subnet: a docker network on
// it would make Docker refuse, or route nodes' packets somewhere else.
func firstConflict(subnet netip.Prefix, uses []Use) (Use, bool) {
	for _, u := range uses {
		if u.Prefix.Overlaps(subnet) {
			return u, true
		}
	}
	return Use{}, false
}

// setTestWorld checks TEST_WORLD_CIDR against the rest of the plan: a test-world
// address outside the node subnet would not be on the nodes' link (or would
// leave the machine), one in NODE_IP_RANGE could be given to a node, and the
// subnet's network and gateway addresses belong to Docker (the broadcast address
// is never given to a container, so the subnet's last /24 is a fine block).
func (n *Network) setTestWorld(v string) error {
	hint := fmt.Sprintf("pick a block of NODE_SUBNET outside NODE_IP_RANGE, e.g. TEST_WORLD_CIDR=%s (the last /24 of NODE_SUBNET)", lastSlash24(n.Subnet))
	p, err := netip.ParsePrefix(v)
	switch {
	case err != nil || !p.Addr().Is4():
		return fmt.Errorf("TEST_WORLD_CIDR=%q is not an IPv4 CIDR; %s", v, hint)
	case p != p.Masked():
		return fmt.Errorf("TEST_WORLD_CIDR=%s has host bits set; write %s", p, p.Masked())
	case p.Bits() < n.Subnet.Bits() || !n.Subnet.Contains(p.Addr()):
		return fmt.Errorf("TEST_WORLD_CIDR=%s is not inside NODE_SUBNET=%s: the test world must sit on the nodes' docker network; %s", p, n.Subnet, hint)
	case p.Overlaps(n.IPRange):
		return fmt.Errorf("TEST_WORLD_CIDR=%s overlaps NODE_IP_RANGE=%s, where Docker places the nodes; %s", p, n.IPRange, hint)
	case p.Contains(n.Gateway) || p.Contains(n.Subnet.Addr()):
		return fmt.Errorf("TEST_WORLD_CIDR=%s holds the network or gateway address (NODE_GATEWAY=%s) of NODE_SUBNET=%s; %s", p, n.Gateway, n.Subnet, hint)
	}
	n.TestWorld = p
	return nil
}

// lastSlash24 is the /24 holding subnet's last address (a /24 or smaller
// subnet is returned whole: a suggestion only, which the checks then judge).
func lastSlash24(subnet netip.Prefix) netip.Prefix {
	if subnet.Bits() >= 24 {
		return subnet
	}
	p, _ := lastAddr(subnet).Prefix(24)
	return p
}

// lastAddr is the last address of p.
func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v |= uint32(1)<<(32-p.Bits()) - 1
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
