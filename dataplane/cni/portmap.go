package cni

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/flatnet/flatnet/dataplane/cniconf"
)

// portmapPlugin is CNI's portmap, which flatnet runs for the pods with
// hostPorts, the way a chained plugin would run: same network name and
// version, the pod's mappings in runtimeConfig, the result so far as
// prevResult. portmap names its iptables chains after the network name and
// the container ID, so it also finds the chains of pods set up while it was
// chained in the conflist (flatnet, portmap, loopback).
const portmapPlugin = "portmap"

// portmapConf is portmap's network config for this invocation; prevResult is
// the JSON-ready result so far (nil on a DEL without one).
func portmapConf(cfg *cniconf.Config, prevResult any) ([]byte, error) {
	conf := map[string]any{
		"cniVersion":    cfg.Raw.CNIVersion,
		"name":          cfg.Raw.Name,
		"type":          portmapPlugin,
		"runtimeConfig": cniconf.RuntimeConfig{PortMappings: cfg.PortMappings()},
	}
	if prevResult != nil {
		conf["prevResult"] = prevResult
	}
	b, err := json.Marshal(conf)
	if err != nil {
		return nil, fmt.Errorf("encode portmap config: %w", err)
	}
	return b, nil
}

// portmapAdd maps the pod's hostPorts to it; res is flatnet's result.
func portmapAdd(ctx context.Context, cfg *cniconf.Config, res types.Result) (types.Result, error) {
	prev, err := res.GetAsVersion(cfg.Raw.CNIVersion)
	if err != nil {
		return nil, fmt.Errorf("convert the result to cniVersion %s for portmap: %w", cfg.Raw.CNIVersion, err)
	}
	conf, err := portmapConf(cfg, prev)
	if err != nil {
		return nil, err
	}
	out, err := invoke.DelegateAdd(ctx, portmapPlugin, conf, nil)
	if err != nil {
		return nil, fmt.Errorf("map hostPorts %s with CNI's portmap: %w", describe(cfg.PortMappings()), err)
	}
	return out, nil
}

// portmapDel removes the pod's hostPort mappings (idempotent, as portmap's DEL is).
func portmapDel(ctx context.Context, cfg *cniconf.Config) error {
	var prev any
	if cfg.Raw.RawPrevResult != nil {
		prev = cfg.Raw.RawPrevResult
	}
	conf, err := portmapConf(cfg, prev)
	if err != nil {
		return err
	}
	if err := invoke.DelegateDel(ctx, portmapPlugin, conf, nil); err != nil {
		return fmt.Errorf("unmap hostPorts %s with CNI's portmap: %w", describe(cfg.PortMappings()), err)
	}
	return nil
}

// portmapCheck verifies the pod's hostPort mappings against prevResult (as
// parsed by CHECK: version.ParsePrevResult drops the raw one).
func portmapCheck(ctx context.Context, cfg *cniconf.Config) error {
	conf, err := portmapConf(cfg, cfg.Raw.PrevResult)
	if err != nil {
		return err
	}
	if err := invoke.DelegateCheck(ctx, portmapPlugin, conf, nil); err != nil {
		return fmt.Errorf("hostPorts %s (CNI's portmap): %w", describe(cfg.PortMappings()), err)
	}
	return nil
}

func describe(pms []cniconf.PortMapping) string {
	s := "["
	for i, pm := range pms {
		if i > 0 {
			s += " "
		}
		proto := pm.Protocol
		if proto == "" {
			proto = "tcp"
		}
		s += fmt.Sprintf("%d->%d/%s", pm.HostPort, pm.ContainerPort, proto)
	}
	return s + "]"
}
