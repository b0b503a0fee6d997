// Package identity names the numeric security identities the datapath matches on.
//
// A pod's identity stands for its label set (pod labels + namespace labels); every
// packet is judged by (identity, direction, protocol, port), never by IP list. The
// reserved numbers follow Cilium's so that flows read the same to people used to it.
package identity

import "strconv"

// ID is a numeric security identity as stored in BPF maps.
type ID uint32

const (
	// Any is the wildcard identity in a policy key: "every peer".
	Any ID = 0
	// Host is the local node (kubelet probes, hostNetwork pods).
	Host ID = 1
	// World is every address outside the cluster that no CIDR rule names more precisely.
	World ID = 2
	// Unmanaged is a cluster address with no known endpoint (yet).
	Unmanaged ID = 3
	// RemoteNode is any other node of the cluster.
	RemoteNode ID = 6
	// KubeAPIServer is the API server when it runs outside pods.
	KubeAPIServer ID = 7

	// MinCluster is the first identity allocated to a label set of cluster endpoints.
	MinCluster ID = 256
	// MinLocal is the first node-local identity, used for CIDR selectors (as Cilium's
	// local-scope identities); never shared across nodes.
	MinLocal ID = 1 << 24
)

// Reserved reports whether id is one of the fixed identities above.
func (id ID) Reserved() bool { return id < MinCluster }

// String gives the reserved name of id, as Cilium prints it, or its number.
func (id ID) String() string {
	switch id {
	case Any:
		return "any"
	case Host:
		return "reserved:host"
	case World:
		return "reserved:world"
	case Unmanaged:
		return "reserved:unmanaged"
	case RemoteNode:
		return "reserved:remote-node"
	case KubeAPIServer:
		return "reserved:kube-apiserver"
	}
	return strconv.FormatUint(uint64(id), 10)
}
