package kindcluster

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadNetworkRepoFile(t *testing.T) {
	n, err := LoadNetwork("../../kind-configs/network.env", func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	want := Network{
		Subnet:        netip.MustParsePrefix("10.224.0.0/16"),
		Gateway:       netip.MustParseAddr("10.224.0.1"),
		IPRange:       netip.MustParsePrefix("10.224.0.0/27"),
		ServiceSubnet: netip.MustParsePrefix("10.96.0.0/16"),
		APIServerPort: 26443,
		TestWorld:     netip.MustParsePrefix("10.224.255.0/24"),
	}
	if n != want {
		t.Fatalf("got %+v, want %+v", n, want)
	}
}

func TestLoadNetworkEnvironmentOverrides(t *testing.T) {
	env := map[string]string{"NODE_SUBNET": "10.225.0.0/16", "NODE_GATEWAY": "10.225.0.1", "NODE_IP_RANGE": "10.225.0.0/27", "API_SERVER_PORT": "26444", "TEST_WORLD_CIDR": "10.225.255.0/24"}
	n, err := LoadNetwork("../../kind-configs/network.env", func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if n.Subnet.String() != "10.225.0.0/16" || n.Gateway.String() != "10.225.0.1" ||
		n.IPRange.String() != "10.225.0.0/27" || n.ServiceSubnet.String() != "10.96.0.0/16" || n.APIServerPort != 26444 {
		t.Fatalf("got %+v", n)
	}
}

func TestLoadNetworkRefuses(t *testing.T) {
	for name, tc := range map[string]struct{ file, want string }{
		"not a default":  {"NODE_SUBNET=10.224.0.0/16\n", "want NAME=${NAME:-default}"},
		"other variable": {"NODE_SUBNET=${OTHER:-10.224.0.0/16}\n", "want NAME=${NAME:-default}"},
		"bad CIDR": {"NODE_SUBNET=${NODE_SUBNET:-10.224.0.0}\nNODE_GATEWAY=${NODE_GATEWAY:-10.224.0.1}\n" +
			"NODE_IP_RANGE=${NODE_IP_RANGE:-10.224.0.0/27}\nSERVICE_SUBNET=${SERVICE_SUBNET:-10.96.0.0/16}\n", `NODE_SUBNET="10.224.0.0" is not an IPv4 CIDR`},
		"IPv6 subnet": {"NODE_SUBNET=${NODE_SUBNET:-fd00::/64}\nNODE_GATEWAY=${NODE_GATEWAY:-10.224.0.1}\n" +
			"NODE_IP_RANGE=${NODE_IP_RANGE:-10.224.0.0/27}\nSERVICE_SUBNET=${SERVICE_SUBNET:-10.96.0.0/16}\n", `NODE_SUBNET="fd00::/64" is not an IPv4 CIDR`},
		"ephemeral API server port": {"NODE_SUBNET=${NODE_SUBNET:-10.224.0.0/16}\nNODE_GATEWAY=${NODE_GATEWAY:-10.224.0.1}\n" +
			"NODE_IP_RANGE=${NODE_IP_RANGE:-10.224.0.0/27}\nSERVICE_SUBNET=${SERVICE_SUBNET:-10.96.0.0/16}\n" + "API_SERVER_PORT=${API_SERVER_PORT:-43307}\n", `API_SERVER_PORT="43307": want a port from 1024 to 32767`},
		"missing gateway": {"NODE_SUBNET=${NODE_SUBNET:-10.224.0.0/16}\n" +
			"NODE_IP_RANGE=${NODE_IP_RANGE:-10.224.0.0/27}\nSERVICE_SUBNET=${SERVICE_SUBNET:-10.96.0.0/16}\n", `NODE_GATEWAY="" is not an IPv4 address`},
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "network.env")
			if err := os.WriteFile(path, []byte("# comment\n\n"+tc.file), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := LoadNetwork(path, func(string) string { return "" })
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error with %q", err, tc.want)
			}
		})
	}
}

// TestLoadNetworkRefusesTestWorld: a TEST_WORLD_CIDR off the nodes' link, on
// Docker's node range or its gateway is refused by name, with the fix.
func TestLoadNetworkRefusesTestWorld(t *testing.T) {
	for cidr, want := range map[string]string{
		"10.224.255.0":    `TEST_WORLD_CIDR="10.224.255.0" is not an IPv4 CIDR`,
		"10.224.255.7/24": "TEST_WORLD_CIDR=10.224.255.7/24 has host bits set; write 10.224.255.0/24",
		"10.225.255.0/24": "TEST_WORLD_CIDR=10.225.255.0/24 is not inside NODE_SUBNET=10.224.0.0/16",
		"10.0.0.0/8":      "TEST_WORLD_CIDR=10.0.0.0/8 is not inside NODE_SUBNET=10.224.0.0/16",
		"10.224.0.16/28":  "TEST_WORLD_CIDR=10.224.0.16/28 overlaps NODE_IP_RANGE=10.224.0.0/27",
		"10.224.0.0/16":   "overlaps NODE_IP_RANGE",
		"10.224.0.0/31":   "overlaps NODE_IP_RANGE",
	} {
		t.Run(cidr, func(t *testing.T) {
			_, err := LoadNetwork("../../kind-configs/network.env", func(k string) string {
				return map[string]string{"TEST_WORLD_CIDR": cidr}[k]
			})
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("got %v, want an error with %q", err, want)
			}
			if !strings.Contains(err.Error(), "TEST_WORLD_CIDR") {
				t.Fatalf("%v: does not name TEST_WORLD_CIDR", err)
			}
		})
	}
	// The gateway outside Docker's range: only the gateway check can catch it.
	env := map[string]string{"NODE_GATEWAY": "10.224.255.254"}
	_, err := LoadNetwork("../../kind-configs/network.env", func(k string) string { return env[k] })
	if err == nil || !strings.Contains(err.Error(), "holds the network or gateway address (NODE_GATEWAY=10.224.255.254)") {
		t.Fatalf("gateway inside the test world: got %v", err)
	}
}

func TestFirstConflict(t *testing.T) {
	subnet := netip.MustParsePrefix("10.224.0.0/16")
	uses := []Use{
		{netip.MustParsePrefix("172.17.0.0/16"), "docker network bridge uses", true},
		{netip.MustParsePrefix("10.223.255.0/24"), "the host routes", false}, // adjacent below
		{netip.MustParsePrefix("10.225.0.0/16"), "the host routes", false},   // adjacent above
	}
	if u, busy := firstConflict(subnet, uses); busy {
		t.Fatalf("adjacent ranges reported busy: %+v", u)
	}
	for _, p := range []string{"10.224.7.0/24", "10.0.0.0/8", "10.224.0.0/16", "10.224.255.255/32"} {
		u, busy := firstConflict(subnet, append(uses, Use{netip.MustParsePrefix(p), "docker network x uses", true}))
		if !busy || u.Prefix.String() != p {
			t.Errorf("%s: got %+v busy=%v, want it busy", p, u, busy)
		}
	}
}

// TestLoadNetworkMatchesShell: the Go reader and the scripts, which source
// network.env, agree on the plan, with and without overrides.
func TestLoadNetworkMatchesShell(t *testing.T) {
	for _, env := range []map[string]string{
		{},
		{"NODE_SUBNET": "10.225.0.0/16", "NODE_GATEWAY": "10.225.0.1", "NODE_IP_RANGE": "10.225.0.0/27", "SERVICE_SUBNET": "10.97.0.0/16", "TEST_WORLD_CIDR": "10.225.255.0/24"},
	} {
		cmd := exec.Command("bash", "-c", `source ../../kind-configs/network.env; echo "$NODE_SUBNET $NODE_GATEWAY $NODE_IP_RANGE $SERVICE_SUBNET $TEST_WORLD_CIDR"`)
		cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
		for k, v := range env {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("sourcing network.env: %v", err)
		}
		n, err := LoadNetwork("../../kind-configs/network.env", func(k string) string { return env[k] })
		if err != nil {
			t.Fatal(err)
		}
		if got, want := fmt.Sprintf("%s %s %s %s %s", n.Subnet, n.Gateway, n.IPRange, n.ServiceSubnet, n.TestWorld), strings.TrimSpace(string(out)); got != want {
			t.Errorf("overrides %v: Go read %q, the shell %q", env, got, want)
		}
	}
}
