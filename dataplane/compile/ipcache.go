package compile

import (
	"net/netip"
	"slices"
	"sort"
	"strings"

	"github.com/flatnet/flatnet/dataplane/identity"
	"github.com/flatnet/flatnet/dataplane/ipv4"
)

// ipCache maps addresses to identities. An address can have several owners at once
// (a node and its host-network pods, the API server on a node's address, two pods
// while one is being deleted), each claiming an identity; resolve picks the winner.
//
// Invariants: owners holds every claim on an IPv4 address by its owner
// ("pod/ns/name", "node/name", "apiserver/ip") and nothing else; every change of an
// address's claims touches it in out, which follows the datapath's /32 entries.
type ipCache struct {
	owners    map[netip.Addr]map[string]identity.ID
	nodes     map[string][]netip.Addr // each node's addresses
	apiServer []netip.Addr
	out       mirror[netip.Addr]
}

func newIPCache() *ipCache {
	return &ipCache{
		owners: map[netip.Addr]map[string]identity.ID{},
		nodes:  map[string][]netip.Addr{},
		out: newMirror(func(ip netip.Addr) (ipv4.Prefix, bool) {
			hp, err := ipv4.HostPrefix(ip)
			return hp, err == nil // add keeps non-IPv4 addresses out
		}),
	}
}

// podOwner names a pod's claim on its address.
func podOwner(podKey string) string { return "pod/" + podKey }

func (ic *ipCache) add(ip netip.Addr, owner string, id identity.ID) {
	if !ip.Is4() {
		return // the datapath is IPv4-only: no other address can be keyed or seen
	}
	if ic.owners[ip] == nil {
		ic.owners[ip] = map[string]identity.ID{}
	}
	ic.owners[ip][owner] = id
	ic.out.touch(ip)
}

func (ic *ipCache) del(ip netip.Addr, owner string) {
	if o := ic.owners[ip]; o != nil {
		delete(o, owner)
		if len(o) == 0 {
			delete(ic.owners, ip)
		}
	}
	ic.out.touch(ip)
}

// upsertNode replaces a node's claims: the local node's addresses get identity.Host,
// the others identity.RemoteNode.
func (ic *ipCache) upsertNode(name string, ips []netip.Addr, local bool) {
	ic.deleteNode(name)
	id := identity.RemoteNode
	if local {
		id = identity.Host
	}
	for _, ip := range ips {
		ic.add(ip, "node/"+name, id)
	}
	ic.nodes[name] = slices.Clone(ips)
}

func (ic *ipCache) deleteNode(name string) {
	ips, ok := ic.nodes[name]
	if !ok {
		return
	}
	for _, ip := range ips {
		ic.del(ip, "node/"+name)
	}
	delete(ic.nodes, name)
}

// setAPIServer replaces the API server's claims (identity.KubeAPIServer).
func (ic *ipCache) setAPIServer(ips []netip.Addr) {
	for _, ip := range ic.apiServer {
		ic.del(ip, "apiserver/"+ip.String())
	}
	ic.apiServer = slices.Clone(ips)
	for _, ip := range ips {
		ic.add(ip, "apiserver/"+ip.String(), identity.KubeAPIServer)
	}
}

// resolve picks the identity of an address: a node wins over pods (a host-network
// pod shares its node's address), then the pod whose key sorts first (two pods hold
// the same IP only briefly, while one is being deleted).
func (ic *ipCache) resolve(ip netip.Addr) (identity.ID, bool) {
	owners := ic.owners[ip]
	if len(owners) == 0 {
		return 0, false
	}
	best, bestRank := "", 99
	for o, id := range owners {
		r := ownerRank(o, id)
		if r < bestRank || (r == bestRank && o < best) {
			best, bestRank = o, r
		}
	}
	return owners[best], true
}

// ownerRank orders the claims on an address: the local node (always allowed), then
// the API server (a node's address that also serves the API), other nodes, pods.
func ownerRank(owner string, id identity.ID) int {
	switch {
	case strings.HasPrefix(owner, "node/") && id == identity.Host:
		return 0
	case strings.HasPrefix(owner, "apiserver/"):
		return 1
	case strings.HasPrefix(owner, "node/"):
		return 2
	}
	return 3
}

// owner names who holds ip with identity id, as resolve chose it: the node, and the
// pod (namespace, name) when one holds it (the first by key).
func (ic *ipCache) owner(ip netip.Addr, id identity.ID) (node, namespace, name string) {
	var owners []string
	for o, oid := range ic.owners[ip] {
		if oid == id {
			owners = append(owners, o)
		}
	}
	sort.Strings(owners)
	for _, o := range owners {
		switch {
		case strings.HasPrefix(o, "node/"):
			node = strings.TrimPrefix(o, "node/")
		case strings.HasPrefix(o, "pod/") && name == "":
			if ns, n, ok := strings.Cut(strings.TrimPrefix(o, "pod/"), "/"); ok {
				namespace, name = ns, n
			}
		}
	}
	return node, namespace, name
}

// flush returns the /32 entries that changed since the last flush, sorted.
// flush returns the IP cache's changes; seen is told of every address looked at
// (the snapshot's peers to republish).
func (ic *ipCache) flush(seen func(netip.Addr)) []PrefixUpdate { return ic.out.flush(ic.resolve, seen) }

// invalidate forgets what was emitted, so the next flush emits every address.
func (ic *ipCache) invalidate() {
	ic.out.forget()
	for ip := range ic.owners {
		ic.out.touch(ip)
	}
}
