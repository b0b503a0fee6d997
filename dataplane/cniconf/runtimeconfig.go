package cniconf

import (
	"fmt"
	"net/netip"
	"strings"
)

// PortMappingsCapability is the capability flatnet declares in the conflist:
// the runtime then hands it the pod's hostPorts in runtimeConfig.portMappings
// (on ADD, CHECK and DEL), and flatnet runs CNI's portmap plugin for those
// pods only.
const PortMappingsCapability = "portMappings"

// RuntimeConfig is what the runtime injects for the capabilities the conflist
// declares.
type RuntimeConfig struct {
	PortMappings []PortMapping `json:"portMappings,omitempty"`
}

// PortMapping is one hostPort of the pod, in the shape CNI's portmap plugin
// reads (CNI CONVENTIONS.md, "portMappings").
type PortMapping struct {
	HostPort      int    `json:"hostPort"`
	ContainerPort int    `json:"containerPort"`
	Protocol      string `json:"protocol,omitempty"`
	HostIP        string `json:"hostIP,omitempty"`
}

// PortMappings returns the pod's hostPorts (none when the runtime sent none).
func (c *Config) PortMappings() []PortMapping {
	if c.Raw.RuntimeConfig == nil {
		return nil
	}
	return c.Raw.RuntimeConfig.PortMappings
}

// validatePortMappings refuses what portmap would refuse only after flatnet
// had plumbed the pod, so a bad mapping fails ADD before any work.
func validatePortMappings(rc *RuntimeConfig) error {
	if rc == nil {
		return nil
	}
	for i, pm := range rc.PortMappings {
		field := fmt.Sprintf("runtimeConfig.portMappings[%d]", i)
		if pm.HostPort < 1 || pm.HostPort > 65535 {
			return fmt.Errorf("%s.hostPort %d: must be 1..65535", field, pm.HostPort)
		}
		if pm.ContainerPort < 1 || pm.ContainerPort > 65535 {
			return fmt.Errorf("%s.containerPort %d: must be 1..65535", field, pm.ContainerPort)
		}
		switch strings.ToLower(pm.Protocol) {
		case "", "tcp", "udp", "sctp":
		default:
			return fmt.Errorf("%s.protocol %q: must be tcp, udp or sctp", field, pm.Protocol)
		}
		if pm.HostIP != "" {
			if _, err := netip.ParseAddr(pm.HostIP); err != nil {
				return fmt.Errorf("%s.hostIP %q: not an IP address", field, pm.HostIP)
			}
		}
	}
	return nil
}
