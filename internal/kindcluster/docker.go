package kindcluster

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os/exec"
	"regexp"
	"strings"

	"github.com/coreos/go-iptables/iptables"
	"github.com/vishvananda/netlink"
)

// docker runs the docker CLI, as kind's own docker provider does, and returns its
// stdout; a failure carries the command and what it printed on stderr.
func docker(ctx context.Context, args ...string) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "docker", args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("docker %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// networkSubnets returns the IPv4 subnets of docker network name; found is false
// when there is no such network.
func networkSubnets(ctx context.Context, name string) (subnets []netip.Prefix, found bool, err error) {
	out, err := docker(ctx, "network", "ls", "-q", "--filter", "name=^"+regexp.QuoteMeta(name)+"$")
	if err != nil || len(bytes.TrimSpace(out)) == 0 {
		return nil, false, err
	}
	uses, err := dockerNetworkUses(ctx, string(bytes.TrimSpace(out)))
	if err != nil {
		return nil, false, err
	}
	for _, u := range uses {
		subnets = append(subnets, u.Prefix)
	}
	return subnets, true, nil
}

// dockerNetworkUses returns the IPv4 subnets of the docker networks given (all of
// them when none is).
func dockerNetworkUses(ctx context.Context, ids ...string) ([]Use, error) {
	if len(ids) == 0 {
		out, err := docker(ctx, "network", "ls", "-q")
		if err != nil {
			return nil, err
		}
		ids = strings.Fields(string(out))
	}
	out, err := docker(ctx, append([]string{"network", "inspect"}, ids...)...)
	if err != nil {
		return nil, err
	}
	var nets []struct {
		Name string
		IPAM struct{ Config []struct{ Subnet string } }
	}
	if err := json.Unmarshal(out, &nets); err != nil {
		return nil, fmt.Errorf("decoding docker network inspect: %w", err)
	}
	var uses []Use
	for _, n := range nets {
		for _, c := range n.IPAM.Config {
			p, err := netip.ParsePrefix(c.Subnet)
			if err != nil || !p.Addr().Is4() {
				continue
			}
			uses = append(uses, Use{Prefix: p, By: "docker network " + n.Name + " uses", Network: true})
		}
	}
	return uses, nil
}

// hostRouteUses returns the host's IPv4 routes to networks (default and
// single-host routes left out, as `ip -4 route` shows them without a prefix).
func hostRouteUses() ([]Use, error) {
	routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("listing the host's routes: %w", err)
	}
	var uses []Use
	for _, r := range routes {
		if r.Dst == nil {
			continue
		}
		p, ok := netip.AddrFromSlice(r.Dst.IP.To4())
		ones, _ := r.Dst.Mask.Size()
		if !ok || ones == 0 || ones == 32 {
			continue
		}
		uses = append(uses, Use{Prefix: netip.PrefixFrom(p, ones), By: "the host routes"})
	}
	return uses, nil
}

// fence keeps everything from the node subnet on this machine: Docker's
// DOCKER-USER chain drops what the subnet sends anywhere but to itself (the host,
// INPUT, stays reachable). No chain (an engine without iptables): nothing to do.
func fence(add bool, subnet netip.Prefix) error {
	ipt, err := iptables.New()
	if err != nil {
		return nil
	}
	if ok, err := ipt.ChainExists("filter", "DOCKER-USER"); err != nil || !ok {
		return nil
	}
	rule := []string{"-s", subnet.String(), "!", "-d", subnet.String(), "-j", "DROP"}
	if add {
		ok, err := ipt.Exists("filter", "DOCKER-USER", rule...)
		if err == nil && !ok {
			err = ipt.Insert("filter", "DOCKER-USER", 1, rule...)
		}
		if err != nil {
			return fmt.Errorf("fencing the node subnet %s in DOCKER-USER: %w", subnet, err)
		}
		return nil
	}
	for {
		if ok, err := ipt.Exists("filter", "DOCKER-USER", rule...); err != nil || !ok {
			return nil
		}
		if err := ipt.Delete("filter", "DOCKER-USER", rule...); err != nil {
			return fmt.Errorf("removing the fence of %s from DOCKER-USER: %w", subnet, err)
		}
	}
}

// endpoint is a node container's state and its endpoint on the cluster network.
type endpoint struct {
	Running bool
	Address string // what it holds now
	Fixed   string // what it is pinned to ("" when Docker picks)
}

// endpoints inspects the node containers given, on docker network network.
func endpoints(ctx context.Context, network string, nodes []string) (map[string]endpoint, error) {
	out, err := docker(ctx, append([]string{"inspect", "--type", "container"}, nodes...)...)
	if err != nil {
		return nil, err
	}
	var cs []struct {
		Name            string
		State           struct{ Running bool }
		NetworkSettings struct {
			Networks map[string]struct {
				IPAddress  string
				IPAMConfig *struct{ IPv4Address string }
			}
		}
	}
	if err := json.Unmarshal(out, &cs); err != nil {
		return nil, fmt.Errorf("decoding docker inspect: %w", err)
	}
	eps := map[string]endpoint{}
	for _, c := range cs {
		ep := endpoint{Running: c.State.Running}
		if n, ok := c.NetworkSettings.Networks[network]; ok {
			ep.Address = n.IPAddress
			if n.IPAMConfig != nil {
				ep.Fixed = n.IPAMConfig.IPv4Address
			}
		}
		eps[strings.TrimPrefix(c.Name, "/")] = ep
	}
	return eps, nil
}

// kindNodeIP returns the address kind gave node: the node-ip of its
// /kind/kubeadm.conf, read with docker cp, which works on a stopped container too.
// "" when the file names none.
func kindNodeIP(ctx context.Context, node string) (string, error) {
	out, err := docker(ctx, "cp", node+":/kind/kubeadm.conf", "-")
	if err != nil {
		return "", err
	}
	tr := tar.NewReader(bytes.NewReader(out))
	if _, err := tr.Next(); err != nil {
		return "", fmt.Errorf("reading /kind/kubeadm.conf of node %s: %w", node, err)
	}
	conf, err := io.ReadAll(tr)
	if err != nil && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("reading /kind/kubeadm.conf of node %s: %w", node, err)
	}
	return nodeIPOf(conf), nil
}

var nodeIPLine = regexp.MustCompile(`(?m)(?:node-ip:|name:\s*"?node-ip"?\s*\n\s*value:)\s*"?([^"\s]+)`)

// nodeIPOf returns the first node-ip kubelet argument of a kubeadm config kind
// rendered (kubeletExtraArgs is a map in kubeadm v1beta3, which kind renders up to
// Kubernetes v1.35, and a list of name/value pairs in v1beta4, from v1.36; quoted in
// kind's template, bare once kind has applied config patches).
func nodeIPOf(kubeadmConf []byte) string {
	if m := nodeIPLine.FindSubmatch(kubeadmConf); m != nil {
		return string(m[1])
	}
	return ""
}
