package paths

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
)

// TestWorld is the offline world scripts/test-world.sh starts for a cluster
// (`make test-world`), as it records it in _output/<cluster>.test-world.env.
type TestWorld struct {
	CIDR     netip.Prefix
	Servers  []netip.Addr // serve TCP and UDP 80 and answer ICMP echo
	Client   string       // the outside client's container
	ClientIP netip.Addr
}

// ReadTestWorld reads the file test-world.sh wrote and checks that its
// containers run; every failure says how to start them.
func ReadTestWorld(ctx context.Context, path string) (TestWorld, error) {
	fix := "start it: make test-world CLUSTER=<cluster> (scripts/test-world.sh), then FLATNET_TEST_WORLD=_output/<cluster>.test-world.env"
	f, err := os.Open(path)
	if err != nil {
		return TestWorld{}, fmt.Errorf("the test world: %w; %s", err, fix)
	}
	defer f.Close()
	vals := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), "="); ok {
			vals[k] = v
		}
	}
	if err := sc.Err(); err != nil {
		return TestWorld{}, fmt.Errorf("reading %s: %w", path, err)
	}
	var w TestWorld
	if w.CIDR, err = netip.ParsePrefix(vals["TEST_WORLD_CIDR"]); err != nil {
		return TestWorld{}, fmt.Errorf("%s: TEST_WORLD_CIDR: %w; %s", path, err, fix)
	}
	for _, s := range strings.Split(vals["TEST_WORLD_SERVERS"], ",") {
		a, err := netip.ParseAddr(s)
		if err != nil || !w.CIDR.Contains(a) {
			return TestWorld{}, fmt.Errorf("%s: TEST_WORLD_SERVERS %q: want addresses of %s; %s", path, vals["TEST_WORLD_SERVERS"], w.CIDR, fix)
		}
		w.Servers = append(w.Servers, a)
	}
	if len(w.Servers) < 2 {
		return TestWorld{}, fmt.Errorf("%s: TEST_WORLD_SERVERS: want 2 servers, got %d; %s", path, len(w.Servers), fix)
	}
	w.Client = vals["TEST_WORLD_CLIENT"]
	if w.ClientIP, err = netip.ParseAddr(vals["TEST_WORLD_CLIENT_IP"]); err != nil {
		return TestWorld{}, fmt.Errorf("%s: TEST_WORLD_CLIENT_IP: %w; %s", path, err, fix)
	}
	out, err := exec.CommandContext(ctx, "docker", "inspect", "-f", "{{.State.Running}}", w.Client).Output()
	if err != nil || strings.TrimSpace(string(out)) != "true" {
		return TestWorld{}, fmt.Errorf("the test world's client container %q is not running (%v); %s", w.Client, err, fix)
	}
	return w, nil
}
