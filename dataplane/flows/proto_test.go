package flows

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/flatnet/flatnet/dataplane/bpf"
	"github.com/flatnet/flatnet/dataplane/flows/flowstest"
	"github.com/flatnet/flatnet/dataplane/identity"
	"github.com/flatnet/flatnet/dataplane/policy"
)

// TestProtoSaysWhatTheJSONSays: Hubble's form of a flow (protojson with the
// proto's field names, as `hubble observe -o json` prints it) carries every
// field of flatnet's JSON with the same value, for a policy deny, a forward to
// the world and a non-IPv4 drop. flatnet's own fields (flatnet_reason,
// flatnet_rule) are the only ones Hubble's API has no place for.
func TestProtoSaysWhatTheJSONSays(t *testing.T) {
	c := flowstest.Compiler(t, denyClientCNP, toWorldCNP)
	deny, err := c.Explain("default", "server", policy.Ingress, clientIP, policy.ProtoTCP, 80)
	must(t, err)
	world, err := c.Explain("default", "client", policy.Egress, worldIP, policy.ProtoUDP, 53)
	must(t, err)
	serverID, _ := c.IdentityOf("default", "server")
	clientID, _ := c.IdentityOf("default", "client")
	en, err := NewEnricher("node-a", c.Latest())
	must(t, err)
	for name, ev := range map[string]bpf.FlowEvent{
		"ingress deny": {Monotonic: time.Second, Src: clientIP, Dst: serverIP, SrcPort: 41000, DstPort: 80,
			Protocol: 6, TCPFlags: 0x02, Direction: policy.Ingress, Code: bpf.DropPolicyDeny, RuleID: deny.RuleID,
			RemoteIdentity: clientID, LocalIdentity: serverID},
		"egress to world": {Monotonic: 2 * time.Second, Src: clientIP, Dst: worldIP, SrcPort: 5353, DstPort: 53,
			Protocol: 17, Direction: policy.Egress, Code: bpf.ForwardPolicy, RuleID: world.RuleID,
			LocalIdentity: clientID, RemoteIdentity: identity.World},
		"non-IPv4 drop": {Src: clientIP, Dst: netip.IPv4Unspecified(), Direction: policy.Egress,
			Code: bpf.DropUnknownL3, LocalIdentity: clientID},
	} {
		t.Run(name, func(t *testing.T) {
			f := en.Flow(ev)
			r := &Response{Flow: f, NodeName: f.NodeName, Time: f.Time}
			ours := decode(t, must2(t, func() ([]byte, error) { return json.Marshal(f) }))
			p := r.Proto()
			if r.Proto() != p {
				t.Error("Proto built the flow twice")
			}
			hubble := decode(t, must2(t, func() ([]byte, error) { return protojson.MarshalOptions{UseProtoNames: true}.Marshal(p) }))
			delete(ours, "flatnet_reason")
			delete(ours, "flatnet_rule")
			sameJSON(t, "flow", ours, hubble)
			if p.GetUuid() == "" {
				t.Error("uuid empty: Hubble's flows carry one (the uuid filter needs it)")
			}
			if forwarded := f.Verdict == VerdictForwarded; (p.GetIsReply() != nil) != forwarded || p.GetIsReply().GetValue() {
				t.Errorf("is_reply %v on a %s flow: want false on forwards (the datapath reports connection openings), unset on drops", p.GetIsReply(), f.Verdict)
			}
		})
	}
}

func must2(t *testing.T, f func() ([]byte, error)) []byte {
	t.Helper()
	b, err := f()
	must(t, err)
	return b
}

func decode(t *testing.T, b []byte) map[string]any {
	t.Helper()
	var m map[string]any
	must(t, json.Unmarshal(b, &m))
	return m
}

// sameJSON checks that every value of ours is in hubble at the same path.
// protojson writes 64-bit integers as strings and times in UTC with nanoseconds
// trimmed: those compare by value.
func sameJSON(t *testing.T, path string, ours, hubble any) {
	t.Helper()
	switch o := ours.(type) {
	case map[string]any:
		h, ok := hubble.(map[string]any)
		if !ok {
			t.Errorf("%s: Hubble has %v, want an object like %v", path, hubble, ours)
			return
		}
		for k, v := range o {
			sameJSON(t, path+"."+k, v, h[k])
		}
	case []any:
		h, ok := hubble.([]any)
		if !ok || len(h) != len(o) {
			t.Errorf("%s: Hubble has %v, want %v", path, hubble, ours)
			return
		}
		for i := range o {
			sameJSON(t, fmt.Sprintf("%s[%d]", path, i), o[i], h[i])
		}
	case string:
		if ot, err := time.Parse(time.RFC3339Nano, o); err == nil {
			if hs, _ := hubble.(string); !ot.Equal(parseTime(hs)) {
				t.Errorf("%s: Hubble has %v, want the time %v", path, hubble, ours)
			}
			return
		}
		if hubble != ours {
			t.Errorf("%s: Hubble has %v, want %v", path, hubble, ours)
		}
	default:
		if hubble != ours && fmt.Sprint(hubble) != fmt.Sprint(ours) {
			t.Errorf("%s: Hubble has %v, want %v", path, hubble, ours)
		}
	}
}

func parseTime(s string) time.Time {
	t, _ := time.Parse(time.RFC3339Nano, s)
	return t
}
