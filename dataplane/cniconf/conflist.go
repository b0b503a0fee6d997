package cniconf

import (
	"encoding/json"
	"fmt"
)

// NetworkName is the name of flatnet's network in the conflist.
const NetworkName = "flatnet"

// ConflistFile is the file name the agent writes into the CNI conf dir; "05-"
// sorts it before anything a node image might ship.
const ConflistFile = "05-flatnet.conflist"

// Conflist renders the network configuration list for plugin config nc:
// flatnet alone. It sets up the pod's loopback itself and declares the
// portMappings capability, so the runtime hands it a pod's hostPorts and it
// runs CNI's portmap plugin for those pods only: a pod without hostPorts
// costs one process start, not three. The list declares cniVersion 1.0.0 for
// runtimes with an older libcni and, per CNI 1.1, cniVersions so that newer
// runtimes pick 1.1.0 and send GC and STATUS. The result is validated exactly
// as the plugin will parse it.
//
// Pods set up by the older list (flatnet, portmap, loopback) are deleted
// cleanly under this one: the runtime passes their portMappings on DEL too,
// flatnet hands them to portmap under the same network name (so portmap finds
// its chains), and loopback's DEL only set lo down in a netns about to go.
func Conflist(nc NetConf) ([]byte, error) {
	nc.Name, nc.Type, nc.CNIVersion = NetworkName, PluginType, ""
	nc.Capabilities = map[string]bool{PortMappingsCapability: true}
	nc.RuntimeConfig = nil
	plugin, err := json.Marshal(nc)
	if err != nil {
		return nil, fmt.Errorf("encode flatnet plugin config: %w", err)
	}
	// types.PluginConf always writes "ipam" and "dns"; flatnet uses neither.
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(plugin, &fields); err != nil {
		return nil, fmt.Errorf("re-read flatnet plugin config: %w", err)
	}
	for _, k := range []string{"ipam", "dns"} {
		if string(fields[k]) == "{}" {
			delete(fields, k)
		}
	}
	if plugin, err = json.Marshal(fields); err != nil {
		return nil, fmt.Errorf("encode flatnet plugin config: %w", err)
	}
	check := nc
	check.CNIVersion = "1.1.0"
	if _, err := validate(&check); err != nil {
		return nil, fmt.Errorf("flatnet plugin config: %w", err)
	}
	list := map[string]any{
		"cniVersion":  "1.0.0",
		"cniVersions": []string{"1.0.0", "1.1.0"},
		"name":        NetworkName,
		"plugins":     []json.RawMessage{plugin},
	}
	out, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode conflist: %w", err)
	}
	return append(out, '\n'), nil
}
