package cniconf

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/flatnet/flatnet/dataplane/ipam"
)

const validConf = `{"cniVersion":"1.1.0","name":"flatnet","type":"flatnet","nodeName":"kind-worker","uplink":"eth0",
"subnet":"10.224.0.0/16","gateway":"10.224.0.1","dockerRange":"10.224.0.0/27",
"block":{"first":"10.224.0.32","size":30},"dataDir":"/var/lib/flatnet/ipam","agentSocket":"/run/flatnet/agent.sock"}`

// FuzzParseConfig: any input either fails with a CNI error result of a config
// code, or yields a config whose block lies inside the subnet, has a legal
// size and holds no reserved address.
func FuzzParseConfig(f *testing.F) {
	for _, s := range []string{
		validConf, `{}`, `null`, `[]`, `{"name":"x"}`,
		`{"name":"f","nodeName":"n","uplink":"eth0","subnet":"10.0.0.0/30","block":{"first":"10.0.0.1","size":10}}`,
		`{"name":"f","nodeName":"n","uplink":"eth0","subnet":"10.224.0.0/16","block":{"first":"10.224.255.250","size":250}}`,
		`{"name":"f","nodeName":"n","uplink":"eth0","subnet":"10.224.0.0/16","gateway":"10.224.0.40","block":{"first":"10.224.0.32","size":10}}`,
		`{"name":"f","nodeName":"n","uplink":"a/b","subnet":"::/0","block":{"first":"::1","size":10}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseConfig(data)
		if err != nil {
			var e *types.Error
			if !errors.As(err, &e) || (e.Code != types.ErrDecodingFailure && e.Code != types.ErrInvalidNetworkConfig) || e.Msg == "" {
				t.Fatalf("error %v is not a config error result", err)
			}
			return
		}
		b := c.Block
		if b.Size < ipam.MinBlockSize || b.Size > ipam.MaxBlockSize {
			t.Fatalf("accepted block size %d", b.Size)
		}
		if !c.Layout.Subnet.Contains(b.First) || !c.Layout.Subnet.Contains(b.Last()) {
			t.Fatalf("accepted block %s outside subnet %s", b, c.Layout.Subnet)
		}
		if b.Contains(c.Layout.Subnet.Masked().Addr()) || (c.Layout.Gateway.IsValid() && b.Contains(c.Layout.Gateway)) {
			t.Fatalf("accepted block %s holding the network address or gateway %s", b, c.Layout.Gateway)
		}
		if c.Layout.DockerRange.IsValid() && b.Contains(c.Layout.DockerRange.Masked().Addr()) {
			t.Fatalf("accepted block %s overlapping dockerRange %s", b, c.Layout.DockerRange)
		}
		if c.NodeName == "" || c.Uplink == "" || c.DataDir == "" {
			t.Fatalf("accepted config with empty nodeName/uplink/dataDir: %+v", c)
		}
		// What the agent would write from it parses back the same.
		out, err := Conflist(*c.Raw)
		if err != nil {
			t.Fatalf("accepted config does not render as a conflist: %v", err)
		}
		var list struct{ Plugins []json.RawMessage }
		if err := json.Unmarshal(out, &list); err != nil || len(list.Plugins) != 1 {
			t.Fatalf("conflist %s: %v", out, err)
		}
		again, err := ParseConfig(list.Plugins[0])
		if err != nil || again.Block != c.Block || !reflect.DeepEqual(again.Layout, c.Layout) {
			t.Fatalf("conflist plugin config parses to %+v, %v; want block %s", again, err, c.Block)
		}
	})
}

func TestConfigErrorsNameTheField(t *testing.T) {
	base := map[string]any{}
	json.Unmarshal([]byte(validConf), &base)
	if _, err := ParseConfig([]byte(validConf)); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	for field, bad := range map[string]any{
		"subnet":      "10.224.0.1/16",
		"gateway":     "10.223.0.1",
		"dockerRange": "nope",
		"block.size":  map[string]any{"first": "10.224.0.32", "size": 300},
		"block.first": map[string]any{"first": "x", "size": 30},
		"nodeName":    "",
		"name":        "",
		"agentSocket": "agent.sock",
	} {
		c := map[string]any{}
		for k, v := range base {
			c[k] = v
		}
		key := field
		if field == "block.size" || field == "block.first" {
			key = "block"
		}
		c[key] = bad
		b, _ := json.Marshal(c)
		_, err := ParseConfig(b)
		var e *types.Error
		if !errors.As(err, &e) || e.Code != types.ErrInvalidNetworkConfig {
			t.Errorf("%s=%v: %v, want an invalid-config error", field, bad, err)
			continue
		}
		if want := field + " "; !strings.Contains(e.Msg, want) && !strings.Contains(e.Msg, field+":") {
			t.Errorf("%s=%v: message %q does not name the field", field, bad, e.Msg)
		}
	}
}

// TestPortMappingErrorsNameTheField: a hostPort portmap would refuse only
// after the pod was plumbed is refused by ParseConfig, naming the field.
func TestPortMappingErrorsNameTheField(t *testing.T) {
	withMapping := func(pm string) []byte {
		return []byte(strings.TrimSuffix(validConf, "}") + `,"runtimeConfig":{"portMappings":[` + pm + `]}}`)
	}
	c, err := ParseConfig(withMapping(`{"hostPort":8080,"containerPort":80,"protocol":"TCP","hostIP":"10.224.0.2"}`))
	if err != nil || len(c.PortMappings()) != 1 || c.PortMappings()[0].HostPort != 8080 {
		t.Fatalf("valid mapping: %+v, %v", c, err)
	}
	for field, pm := range map[string]string{
		"hostPort":      `{"hostPort":0,"containerPort":80}`,
		"containerPort": `{"hostPort":8080,"containerPort":70000}`,
		"protocol":      `{"hostPort":8080,"containerPort":80,"protocol":"icmp"}`,
		"hostIP":        `{"hostPort":8080,"containerPort":80,"hostIP":"node"}`,
	} {
		_, err := ParseConfig(withMapping(pm))
		var e *types.Error
		if !errors.As(err, &e) || e.Code != types.ErrInvalidNetworkConfig || !strings.Contains(e.Msg, "runtimeConfig.portMappings[0]."+field+" ") {
			t.Errorf("mapping %s: %v, want an invalid-config error naming runtimeConfig.portMappings[0].%s", pm, err, field)
		}
	}
}
