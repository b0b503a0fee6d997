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
