package compile

import (
	"net/netip"
	"sort"

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
	ps, ok := c.pods[namespace+"/"+name]
	if !ok || !ps.hasI {
		return nil
	}
	is := c.ids.byID[ps.id]
	if is == nil {
		return nil
	}
	seen := map[policy.Ref]bool{}
	var out []policy.Ref
	for _, e := range c.repo.selecting(is) {
		if e.pol.DefaultDeny[dir] && !seen[e.pol.Ref] {
			seen[e.pol.Ref] = true
			out = append(out, e.pol.Ref)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out
}
