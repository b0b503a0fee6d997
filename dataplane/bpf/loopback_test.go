package bpf

import (
	"context"
	"net/netip"
	"testing"

	"github.com/flatnet/flatnet/dataplane/policy"
)

// TestPodToNodeLoopbackIsDropped: a pod's packet to 127/8 leaves with the pod's
// own (valid) source; where kube-proxy sets route_localnet=1 the host answers it
// from its loopback-only services, the agent's flows API among them, unless
// KUBE-FIREWALL is there. The datapath drops it (and 0/8) itself, counted as
// UNROUTABLE, whatever the policy allows; other egress is unchanged.
func TestPodToNodeLoopbackIsDropped(t *testing.T) {
	d := loadTest(t)
	newCluster(t, d) // server, no policy: egress is not enforced
	for _, c := range []struct {
		dst  string
		want uint32
	}{
		{"192.0.2.7", tcxNext},
		{"127.0.0.1", tcxDrop},
		{"127.1.2.3", tcxDrop},
		{"0.0.0.1", tcxDrop},
		{"126.255.255.255", tcxNext},
		{"128.0.0.1", tcxNext},
	} {
		for _, proto := range []uint8{6, 17} {
			p := pkt{src: serverIP, dst: netip.MustParseAddr(c.dst), proto: proto, sport: 40000, dport: 9970, tcpFlags: tcpSYN}
			if got := run(t, d, dirEgress, p); got != c.want {
				t.Errorf("pod -> %s:9970 (proto %d): verdict %#x, want %#x", c.dst, proto, got, c.want)
			}
		}
	}
	counters, err := d.Counters(context.Background())
	must(t, err)
	var dropped uint64
	for _, c := range counters {
		if c.IfIndex == testIfindex && c.Direction == policy.Egress && c.Code == DropUnroutable {
			dropped += c.Packets
		}
	}
	if dropped != 6 {
		t.Errorf("egress UNROUTABLE drops counted: %d, want 6", dropped)
	}
}
