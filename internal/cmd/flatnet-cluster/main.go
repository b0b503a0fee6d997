// Command flatnet-cluster runs the life of a flatnet kind cluster
// (internal/kindcluster); scripts/cluster.sh calls it once the Docker engine is up.
//
//	flatnet-cluster up         create cluster -name (topology -config), keep it when
//	                           healthy, or recover/recreate it
//	flatnet-cluster down       remove the cluster and its network, nothing else
//	flatnet-cluster status     exit 0 when the cluster answers
//	flatnet-cluster nodes      the node containers' names, one a line
//	flatnet-cluster logs DIR   every node's logs under DIR (as `kind export logs`)
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/flatnet/flatnet/internal/kindcluster"
)

func main() {
	os.Exit(run())
}

func run() int {
	name := flag.String("name", envOr("CLUSTER", "flatnet"), "the kind cluster")
	topology := flag.String("config", envOr("CONFIG", "default"), "the topology: kind-configs/<config>.yaml")
	repo := flag.String("repo", ".", "the flatnet repository (kind-configs, scripts)")
	out := flag.String("out", os.Getenv("OUT_DIR"), "where the kubeconfig and logs go (default <repo>/_output)")
	since := flag.Int64("since", time.Now().Unix(), "unix time the run started, for the [mm:ss] stamps")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: %s [flags] up|down|status|nodes|network|logs DIR\n", os.Args[0])
		flag.PrintDefaults()
	}
	flag.Parse()
	progress := kindcluster.NewProgress(os.Stderr, time.Unix(*since, 0))
	if *out == "" {
		*out = filepath.Join(*repo, "_output")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	net, err := kindcluster.LoadNetwork(filepath.Join(*repo, "kind-configs", "network.env"), os.Getenv)
	if err == nil {
		err = os.MkdirAll(*out, 0o755)
	}
	var c *kindcluster.Cluster
	if err == nil {
		c, err = kindcluster.New(kindcluster.Config{
			Name:       *name,
			Topology:   *topology,
			ConfigDir:  filepath.Join(*repo, "kind-configs"),
			Network:    net,
			Kubeconfig: filepath.Join(*out, *name+".kubeconfig"),
			OutDir:     *out,
			NodeImage:  nodeImage(filepath.Join(*repo, "scripts", "node-image.sh")),
		}, progress)
	}
	if err != nil {
		progress.Fail(err)
		return 1
	}

	switch cmd := flag.Arg(0); {
	case cmd == "up" && flag.NArg() == 1:
		err = c.Up(ctx)
	case cmd == "down" && flag.NArg() == 1:
		err = c.Down(ctx)
	case cmd == "status" && flag.NArg() == 1:
		if !c.Answers(ctx) {
			return 1
		}
	case cmd == "nodes" && flag.NArg() == 1:
		var nodes []string
		if nodes, err = c.Nodes(); err == nil {
			for _, n := range nodes {
				fmt.Println(n)
			}
		}
	case cmd == "network" && flag.NArg() == 1:
		// The checked address plan, for scripts that must not repeat the checks
		// (scripts/test-world.sh): reaching here means LoadNetwork accepted it.
		fmt.Printf("NODE_SUBNET=%s\nNODE_GATEWAY=%s\nNODE_IP_RANGE=%s\nTEST_WORLD_CIDR=%s\n", net.Subnet, net.Gateway, net.IPRange, net.TestWorld)
	case cmd == "logs" && flag.NArg() == 2:
		err = c.CollectLogs(flag.Arg(1))
	default:
		flag.Usage()
		return 2
	}
	if err != nil {
		progress.Fail(err)
		return 1
	}
	return 0
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// nodeImage builds (or finds) the node image with the script that owns that
// docker work; the reference is the last line it prints, its progress is on stderr.
func nodeImage(script string) func(context.Context) (string, error) {
	return func(ctx context.Context) (string, error) {
		var stdout bytes.Buffer
		cmd := exec.CommandContext(ctx, "bash", script)
		cmd.Stdout, cmd.Stderr = &stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			return "", fmt.Errorf("the node image (%s): %w", script, err)
		}
		lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
		return lines[len(lines)-1], nil
	}
}
