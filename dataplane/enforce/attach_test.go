package enforce

import (
	"context"
	"net/netip"
	"testing"

	"github.com/flatnet/flatnet/dataplane/endpointapi"
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

// TestConcurrentDetaches: the DELs of half the pods at once (detached in
// groups) leave nothing of them in the maps, and the other half attached with
// their policies as compiled.
func TestConcurrentDetaches(t *testing.T) {
	e, node, eps := attachNode(t, 30)
	attachAll(t, e, node, eps)
	var servers, clients []endpointapi.Endpoint
	for i, ep := range eps {
		if i%2 == 0 {
			servers = append(servers, ep)
		} else {
			clients = append(clients, ep)
		}
	}
	detachAll(t, e, node, servers)
	inMapsAsCompiled(t, e, len(clients))
	if got := e.LocalPods(); len(got) != len(clients) {
		t.Errorf("LocalPods: %d, want the %d clients", len(got), len(clients))
	}
	have, err := e.Datapath().Endpoints(context.Background())
	must(t, err)
	for _, ep := range servers {
		if _, ok := have[ep.HostIfIndex]; ok {
			t.Errorf("%s still an endpoint of the datapath on %d after its DEL", ep.PodName, ep.HostIfIndex)
		}
		if _, err := e.Datapath().EndpointPolicy(context.Background(), ep.HostIfIndex); err == nil {
			t.Errorf("%s's policy map still installed on %d after its DEL", ep.PodName, ep.HostIfIndex)
		}
	}
	for _, ep := range clients {
		if have[ep.HostIfIndex].IP != ep.IP {
			t.Errorf("datapath endpoint on %d: %+v, want %s's address %s", ep.HostIfIndex, have[ep.HostIfIndex], ep.PodName, ep.IP)
		}
	}
}
