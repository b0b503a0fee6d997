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
// flatnet, then CNI's portmap (hostPort: the runtime hands it the pod's port
// mappings through the portMappings capability), then loopback (which passes the
// result through). The list
// declares cniVersion 1.0.0 for runtimes with an older libcni and, per CNI
// 1.1, cniVersions so that newer runtimes pick 1.1.0 and send GC and STATUS.
// The result is validated exactly as the plugin will parse it.
func Conflist(nc NetConf) ([]byte, error) {
	nc.Name, nc.Type, nc.CNIVersion = NetworkName, PluginType, ""
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
		"plugins": []json.RawMessage{plugin,
			json.RawMessage(`{"type":"portmap","capabilities":{"portMappings":true}}`),
			json.RawMessage(`{"type":"loopback"}`)},
	}
	out, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode conflist: %w", err)
	}
	return append(out, '\n'), nil
}
