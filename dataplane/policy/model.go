// Package policy turns Kubernetes NetworkPolicies and Cilium(Clusterwide)NetworkPolicies
// into one internal model. Everything downstream (the compiler, the datapath) only ever
// sees the model: a policy selects endpoints, may put them in default deny per direction,
// and carries allow and deny rules made of peers and ports.
//
// Peers and subjects are label selectors over identity labels: a pod's own labels plus
// the reserved keys NamespaceLabel and NamespaceLabelPrefix+<key> for its namespace, as
// Cilium does. A Kubernetes podSelector/namespaceSelector pair therefore becomes a single
// selector, and a CNP fromEndpoints that names the namespace label crosses namespaces.
package policy

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"

	"github.com/flatnet/flatnet/dataplane/ipv4"
)

// Reserved identity label keys (the k8s: source prefix is dropped everywhere).
const (
	// NamespaceLabel carries the pod's namespace name.
	NamespaceLabel = "io.kubernetes.pod.namespace"
	// NamespaceLabelPrefix prefixes each label of the pod's namespace.
	NamespaceLabelPrefix = "io.cilium.k8s.namespace.labels."
	// ServiceAccountLabel carries the pod's service account.
	ServiceAccountLabel = "io.cilium.k8s.policy.serviceaccount"
	// ClusterLabel carries the cluster name; flatnet has one cluster, "default" as
	// Cilium names a cluster without cluster-mesh configuration.
	ClusterLabel = "io.cilium.k8s.policy.cluster"
	ClusterName  = "default"
)

// Direction is the side of the endpoint a rule guards.
type Direction uint8

const (
	Ingress Direction = iota // traffic entering the selected endpoint
	Egress                   // traffic leaving it
)

func (d Direction) String() string {
	if d == Egress {
		return "egress"
	}
	return "ingress"
}

// Protocol numbers as in the IP header; ProtoAny matches every protocol.
type Protocol uint8

const (
	ProtoAny  Protocol = 0
	ProtoTCP  Protocol = 6
	ProtoUDP  Protocol = 17
	ProtoSCTP Protocol = 132
)

func (p Protocol) String() string {
	switch p {
	case ProtoTCP:
		return "TCP"
	case ProtoUDP:
		return "UDP"
	case ProtoSCTP:
		return "SCTP"
	case ProtoAny:
		return "ANY"
	}
	return fmt.Sprintf("proto-%d", uint8(p))
}

// Kind names where a policy came from.
type Kind string

const (
	KindNetworkPolicy Kind = "NetworkPolicy"
	KindCNP           Kind = "CiliumNetworkPolicy"
	KindCCNP          Kind = "CiliumClusterwideNetworkPolicy"
)

// Ref identifies a source object; Namespace is empty for cluster-wide kinds.
type Ref struct {
	Kind      Kind
	Namespace string
	Name      string
}

func (r Ref) String() string {
	if r.Namespace == "" {
		return fmt.Sprintf("%s %s", r.Kind, r.Name)
	}
	return fmt.Sprintf("%s %s/%s", r.Kind, r.Namespace, r.Name)
}

// Policy is one source object in the internal model. A CNP with several specs becomes
// one Policy per spec (Spec is the index), so each keeps its own subject.
type Policy struct {
	Ref  Ref
	Spec int
	// Subject selects the endpoints the policy applies to.
	Subject Selector
	// DefaultDeny[d] puts the selected endpoints into default deny for direction d.
	DefaultDeny [2]bool
	Rules       []Rule
}

// Rule allows or denies traffic in one direction to/from Peers on Ports.
type Rule struct {
	Direction Direction
	Deny      bool
	// Name is the rule's field path in its source object, e.g. "spec.ingress[1]";
	// flows and explanations use it to point at the rule.
	Name string
	// AnyPeer matches every remote (no peer restriction); Peers is then empty.
	AnyPeer bool
	Peers   []Peer
	// Ports empty means every protocol and port.
	Ports []Port
}

// Peer is one remote a rule matches: exactly one of the fields is set.
type Peer struct {
	Endpoints *Selector
	CIDR      *CIDR
	Entity    Entity
}

// CIDR is an address block minus its exceptions (each inside Prefix).
// The prefixes are ipv4.Prefix: valid, masked IPv4 by construction, so nothing the
// compiler derives from them can fail to become a datapath key.
type CIDR struct {
	Prefix ipv4.Prefix
	Except []ipv4.Prefix
	// WorldOnly restricts the block to addresses outside the cluster, as Cilium's
	// CIDR selectors (fromCIDR, toCIDRSet, ...) never select pods or nodes; a
	// NetworkPolicy ipBlock selects every address in it.
	WorldOnly bool
}

// Contains reports whether a falls in the block and outside every exception.
func (c CIDR) Contains(a netip.Addr) bool {
	if !c.Prefix.Contains(a) {
		return false
	}
	for _, e := range c.Except {
		if e.Contains(a) {
			return false
		}
	}
	return true
}

// Entity is a Cilium entity name, reduced to what the datapath distinguishes.
type Entity string

const (
	EntityNone       Entity = ""
	EntityAll        Entity = "all"
	EntityWorld      Entity = "world"
	EntityCluster    Entity = "cluster"
	EntityHost       Entity = "host"
	EntityRemoteNode Entity = "remote-node"
	EntityKubeAPI    Entity = "kube-apiserver"
)

// Port is a protocol and a port range; Port 0 means all ports. Name, when set, is a
// named container port resolved by the compiler (Port is then 0).
type Port struct {
	Protocol Protocol
	Port     uint16
	EndPort  uint16 // inclusive; equals Port for a single port
	Name     string
}

// Operator of a selector requirement.
type Operator string

const (
	OpIn           Operator = "In"
	OpNotIn        Operator = "NotIn"
	OpExists       Operator = "Exists"
	OpDoesNotExist Operator = "DoesNotExist"
)

// Requirement is one condition on a label key.
type Requirement struct {
	Key      string
	Operator Operator
	Values   []string // sorted
}

// Selector is a conjunction of requirements; the empty selector matches everything.
type Selector struct {
	Requirements []Requirement // sorted by key then operator
}

// Matches reports whether labels satisfy every requirement.
func (s Selector) Matches(labels map[string]string) bool {
	for _, r := range s.Requirements {
		v, ok := labels[r.Key]
		switch r.Operator {
		case OpExists:
			if !ok {
				return false
			}
		case OpDoesNotExist:
			if ok {
				return false
			}
		case OpIn:
			if !ok || !contains(r.Values, v) {
				return false
			}
		case OpNotIn:
			if ok && contains(r.Values, v) {
				return false
			}
		}
	}
	return true
}

// HasKey reports whether any requirement constrains key.
func (s Selector) HasKey(key string) bool {
	for _, r := range s.Requirements {
		if r.Key == key {
			return true
		}
	}
	return false
}

// And returns a selector requiring both s and more.
func (s Selector) And(more ...Requirement) Selector {
	out := Selector{Requirements: append(append([]Requirement(nil), s.Requirements...), more...)}
	out.normalize()
	return out
}

// String is a canonical form, usable as a map key to share work between equal selectors.
func (s Selector) String() string {
	var b strings.Builder
	for i, r := range s.Requirements {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(r.Key)
		b.WriteByte(' ')
		b.WriteString(string(r.Operator))
		if len(r.Values) > 0 {
			b.WriteString(" (")
			b.WriteString(strings.Join(r.Values, "|"))
			b.WriteByte(')')
		}
	}
	return b.String()
}

func (s *Selector) normalize() {
	for i := range s.Requirements {
		sort.Strings(s.Requirements[i].Values)
	}
	sort.SliceStable(s.Requirements, func(i, j int) bool {
		a, b := s.Requirements[i], s.Requirements[j]
		if a.Key != b.Key {
			return a.Key < b.Key
		}
		return a.Operator < b.Operator
	})
}

// Eq is the requirement key=value.
func Eq(key, value string) Requirement {
	return Requirement{Key: key, Operator: OpIn, Values: []string{value}}
}

func contains(sorted []string, v string) bool {
	i := sort.SearchStrings(sorted, v)
	return i < len(sorted) && sorted[i] == v
}

func sortStrings(s []string) { sort.Strings(s) }
