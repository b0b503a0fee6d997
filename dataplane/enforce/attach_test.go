package enforce

import (
	"context"
	"net/netip"
	"testing"

	"github.com/flatnet/flatnet/dataplane/policy"
)

// TestConcurrentAttaches: 30 pods' ADDs at once (attached in groups) each end
// attached with the policy the compiler computes for it: the servers admit the
// clients on their port and refuse others, the clients (no policy) admit anyone.
func TestConcurrentAttaches(t *testing.T) {
	e, node, eps := attachNode(t, 30)
	attachAll(t, e, node, eps)
	inMapsAsCompiled(t, e, len(eps))
	if got := e.LocalPods(); len(got) != len(eps) {
		t.Errorf("LocalPods: %d, want %d", len(got), len(eps))
	}
	have, err := e.Datapath().Endpoints(context.Background())
	must(t, err)
	client, outsider := eps[1].IP, fillerPeer(1)
	for i, ep := range eps {
		if have[ep.HostIfIndex].IP != ep.IP {
			t.Errorf("datapath endpoint on %d: %+v, want %s's address %s", ep.HostIfIndex, have[ep.HostIfIndex], ep.PodName, ep.IP)
		}
		server := i%2 == 0
		for remote, want := range map[string]bool{client.String(): true, outsider.String(): !server} {
			md, _, err := e.LookupMaps(ep.PodNamespace, ep.PodName, policy.Ingress, netip.MustParseAddr(remote), policy.ProtoTCP, burstPort)
			must(t, err)
			if md.Allowed != want {
				t.Errorf("%s admits %s: %v, want %v", ep.PodName, remote, md.Allowed, want)
			}
		}
	}
}
