package compile

import (
	"net/netip"

	"github.com/flatnet/flatnet/dataplane/identity"
	"github.com/flatnet/flatnet/dataplane/policy"
)

// Peer is what the compiler knows of an address, for flow records: the owning pod
// (Namespace/Name empty for a node or an unknown address), its identity and that
// identity's labels (nil for reserved identities), and the pod's workloads. Labels
// and Workloads are shared with the compiler and its snapshots: read-only.
type Peer struct {
	Namespace, Name string
	Node            string // set when a node owns the address
	Identity        identity.ID
	Labels          map[string]string
	Workloads       []Workload
}

// PeerOf names the owner of an address as the datapath resolves it; false when the
// compiler knows no owner (the datapath then sees reserved:world or a CIDR).
func (c *Compiler) PeerOf(ip netip.Addr) (Peer, bool) {
	id, ok := c.ipc.resolve(ip)
	if !ok {
		return Peer{}, false
	}
	p := Peer{Identity: id}
	p.Node, p.Namespace, p.Name = c.ipc.owner(ip, id)
	if is := c.ids.byID[id]; is != nil {
		p.Labels = is.labels
	}
	if p.Name != "" {
		if ps := c.pods[p.Namespace+"/"+p.Name]; ps != nil {
			p.Workloads = ps.pod.Workloads
		}
	}
	return p, true
}

// DefaultDenyBy lists the policies that put a pod in default deny for a direction:
// they name a drop that no rule matched (RuleID 0).
func (c *Compiler) DefaultDenyBy(namespace, name string, dir policy.Direction) []policy.Ref {
	return c.defaultDeny(namespace, name)[dir]
}

// defaultDeny is DefaultDenyBy for both directions, from one walk of the policies
// selecting the pod (publish keeps both for each flushed endpoint).
func (c *Compiler) defaultDeny(namespace, name string) (out [2][]policy.Ref) {
	ps, ok := c.pods[namespace+"/"+name]
	if !ok || !ps.hasI {
		return out
	}
	is := c.ids.byID[ps.id]
	if is == nil {
		return out
	}
	return c.repo.defaultDeny(is)
}
