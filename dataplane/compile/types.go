// Package compile turns the policy model, the cluster's pods and namespaces into what
// the datapath needs: a security identity per label set, IP -> identity entries, CIDR
// prefix -> identity entries, and one policy (a set of keyed verdicts) per local
// endpoint. It is incremental: every Upsert/Delete marks what it touches, and Flush
// recomputes only the endpoints whose policy may have changed.
//
// Lookup contract with the datapath (dataplane/bpf implements it): for a packet the
// datapath looks the policy up with the remote's identity, with the identity of the
// longest CIDR prefix holding the remote address (in the WorldCIDR space when the
// remote is world and the direction has world-only entries), and with identity.Any;
// each lookup
// returns the entry with the longest (protocol, port prefix) match. A deny from any of
// the lookups wins; otherwise an allow from any of them allows; otherwise the packet is
// dropped when the direction is enforced. The compiler folds deny entries into the
// more specific allow entries they cover, so a longest match never hides a deny.
package compile

import (
	"net/netip"

	"github.com/flatnet/flatnet/dataplane/identity"
	"github.com/flatnet/flatnet/dataplane/ipv4"
	"github.com/flatnet/flatnet/dataplane/policy"
)

// Namespace is what the compiler needs of a namespace.
type Namespace struct {
	Name   string
	Labels map[string]string
}

// NamedPort is one container port with a name.
type NamedPort struct {
	Name     string
	Protocol policy.Protocol
	Port     uint16
}

// Pod is what the compiler needs of a pod. Local pods are endpoints of this node and
// get a policy; every pod with an IP feeds the IP -> identity cache.
type Pod struct {
	Namespace      string
	Name           string
	Labels         map[string]string
	ServiceAccount string
	IP             netip.Addr // invalid until the pod has one
	Ports          []NamedPort
	Local          bool
	HostNetwork    bool // a host-network pod has the node's identity, not its own
	// Workloads are the controllers the pod belongs to, as Hubble names them
	// (WorkloadsOf); flows report them. Not part of policy.
	Workloads []Workload
}

// Workload is a pod's controller as Hubble reports it in flow.Endpoint.workloads:
// the Deployment of a ReplicaSet's pod, the CronJob of a Job's, or the owner itself.
// The JSON names are Hubble's; flow records share these values, never copy them.
type Workload struct {
	Name string `json:"name,omitempty"`
	Kind string `json:"kind,omitempty"`
}

// Key is one policy entry: direction, remote identity (identity.Any for every remote),
// protocol (ProtoAny for all protocols, then Port and PortPrefixLen are 0) and a port
// prefix: the top PortPrefixLen bits of Port (16 = exactly Port, 0 = every port).
type Key struct {
	Direction     policy.Direction
	Identity      identity.ID
	Protocol      policy.Protocol
	Port          uint16
	PortPrefixLen uint8
}

// worldCIDRBit marks the key space of world-only CIDR entries (POLICY_WORLD_CIDR_BIT
// in the datapath). Prefix identities stay far below it.
const worldCIDRBit identity.ID = 1 << 31

// WorldCIDR is the key identity, for remotes outside the cluster, of prefix identity
// id. CiliumNetworkPolicy CIDR rules key their entries there only (in Cilium they
// never select pods or nodes); a NetworkPolicy ipBlock keys its entries with id. When
// a direction has any world-only entry, the compiler copies the plain CIDR entries of
// that direction into the world space too, so that one lookup finds both for a world
// remote (see Decide).
func WorldCIDR(id identity.ID) identity.ID { return id | worldCIDRBit }

// IsWorldCIDR reports whether a key identity is in the world-only CIDR space.
func IsWorldCIDR(id identity.ID) bool { return id&worldCIDRBit != 0 }

// Verdict of an entry, and the rule that produced it (for flows and explanations).
type Verdict struct {
	Deny   bool
	RuleID RuleID
}

// RuleID names one rule of one policy; 0 is "no rule".
type RuleID uint32

// RuleInfo is what a RuleID stands for.
type RuleInfo struct {
	Policy policy.Ref
	Rule   string // the rule's field path, e.g. "spec.ingressDeny[0]"
}

// EndpointPolicy is the complete policy of one endpoint. A direction that is not
// enforced allows everything its entries do not deny.
type EndpointPolicy struct {
	Enforce [2]bool
	Entries map[Key]Verdict
}

// Equal reports whether two policies are the same.
func (p *EndpointPolicy) Equal(o *EndpointPolicy) bool {
	if p == nil || o == nil {
		return p == o
	}
	if p.Enforce != o.Enforce || len(p.Entries) != len(o.Entries) {
		return false
	}
	for k, v := range p.Entries {
		if w, ok := o.Entries[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// EndpointUpdate carries the new policy of a local endpoint; Policy is nil when the
// endpoint is gone.
type EndpointUpdate struct {
	Namespace, Name string
	IP              netip.Addr
	Identity        identity.ID
	Policy          *EndpointPolicy
}

// PrefixUpdate maps a prefix to an identity, or deletes it (Delete set).
type PrefixUpdate struct {
	Prefix   ipv4.Prefix // valid IPv4 by construction: every update can be keyed
	Identity identity.ID
	Delete   bool
}

// Update is everything that changed since the last Flush. Apply it in this order so
// that no packet meets an identity its endpoint's policy does not know yet: Identities,
// deletes of IPCache and CIDRs, then Endpoints, then upserts of IPCache and CIDRs. (Identity
// numbers are never reused, so a policy briefly naming a gone identity is harmless.)
//
// The policies still know the identities the IP cache upserts move addresses off
// (Retiring), and policy changes that name new CIDR prefixes wait for them to be
// written (Held): once an Unsettled update is written, pass it to Compiler.Written
// and write the next Flush at once, which takes the retired identities out and
// applies the held changes.
type Update struct {
	// Identities to remember (or forget) across agent restarts; see
	// identity.Allocator.Remember. Write them before anything else.
	Identities []IdentityUpdate
	Endpoints  []EndpointUpdate
	IPCache    []PrefixUpdate // pod and node addresses (/32)
	CIDRs      []PrefixUpdate // prefixes named by CIDR rules, with local identities
	// Retiring are the identities no pod holds and the CIDR prefixes' no rule
	// names any more, kept in the policies (and the prefixes in the datapath)
	// until this update is in the datapath; not a change to write.
	Retiring []identity.ID
	// Held counts the policy changes held until this update, which stages the
	// prefixes they name, is written (stage.go); not a change to write.
	Held int
}

// Unsettled reports whether the compiler has more to write once u is written:
// identities to retire or policy changes held for it (Compiler.Written).
func (u Update) Unsettled() bool { return len(u.Retiring) > 0 || u.Held > 0 }

// IdentityUpdate records that a label set (by Sum) has an identity, or no longer has.
type IdentityUpdate struct {
	Sum    identity.Sum
	ID     identity.ID
	Delete bool
}

// Empty reports whether the update changes nothing.
func (u Update) Empty() bool {
	return len(u.Identities) == 0 && len(u.Endpoints) == 0 && len(u.IPCache) == 0 && len(u.CIDRs) == 0
}
