// Package flows turns the datapath's flow events into records in the shape of
// Cilium's flow API (what `hubble observe -o json` prints), keeps a bounded recent
// history of them, filters them, and serves them over HTTP. It names flows through
// small getters (Source), not through the enforcer: their implementation reads the
// policy compiler's published snapshot and takes no lock. The datapath's counters
// are exported by package metrics, explanations by the agent's API.
//
// The types are our own, with Cilium's JSON field names, plus flatnet's reason and
// rule fields: what the agent's HTTP API and flatnetctl speak. Proto converts a flow
// into Hubble's own API type (github.com/cilium/cilium/api/v1/flow), which the gRPC
// Observer, the exporter and Hubble's metrics use.
package flows

import (
	"sync/atomic"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"

	"github.com/flatnet/flatnet/dataplane/compile"
)

// Response is one line of `hubble observe -o json` (observer.GetFlowsResponse).
type Response struct {
	Flow     *Flow     `json:"flow"`
	NodeName string    `json:"node_name"`
	Time     time.Time `json:"time"`

	// DatapathLost is how many flow events the datapath could not hand over on
	// CPU (its per-CPU rate limit, or a full ring) since the previous event it
	// wrote there: they happened before this flow, and no record of them exists.
	// Hubble reports them as a LostEvent from PERF_EVENT_RING_BUFFER with the CPU
	// (package observer); flows.Run sets them. Not part of the JSON record.
	DatapathLost uint64 `json:"-"`
	CPU          uint32 `json:"-"` // the CPU whose datapath wrote this flow's event

	proto atomic.Pointer[flowpb.Flow] // Proto's cache
}

// Flow is flow.Flow of Cilium's API, restricted to what the datapath reports.
type Flow struct {
	Time             time.Time `json:"time"`
	UUID             string    `json:"uuid,omitempty"` // unique per flow, named by the enricher
	Verdict          string    `json:"verdict"`        // FORWARDED or DROPPED
	DropReason       uint32    `json:"drop_reason,omitempty"`
	DropReasonDesc   string    `json:"drop_reason_desc,omitempty"`
	IP               *IP       `json:"IP,omitempty"`
	L4               *Layer4   `json:"l4,omitempty"`
	Source           *Endpoint `json:"source,omitempty"`
	Destination      *Endpoint `json:"destination,omitempty"`
	Type             string    `json:"Type"` // always L3_L4
	NodeName         string    `json:"node_name"`
	EventType        EventType `json:"event_type"`
	TrafficDirection string    `json:"traffic_direction"` // INGRESS or EGRESS, relative to the local pod
	// TraceObservationPoint is where the datapath saw the packet: TO_ENDPOINT for
	// ingress, FROM_ENDPOINT for egress (the pod's host veth either way).
	TraceObservationPoint string    `json:"trace_observation_point,omitempty"`
	IngressAllowedBy      []*Policy `json:"ingress_allowed_by,omitempty"`
	EgressAllowedBy       []*Policy `json:"egress_allowed_by,omitempty"`
	IngressDeniedBy       []*Policy `json:"ingress_denied_by,omitempty"`
	EgressDeniedBy        []*Policy `json:"egress_denied_by,omitempty"`
	Summary               string    `json:"Summary,omitempty"`
	// Reason is flatnet's own text for the verdict code (no Cilium field carries it
	// for forwarded flows).
	Reason string `json:"flatnet_reason,omitempty"`
	// Rule is the field path of the deciding rule inside its policy (flatnet's own).
	Rule string `json:"flatnet_rule,omitempty"`
}

// EventType is Cilium's monitor event type: 1 = drop, 4 = trace (a forwarded flow).
type EventType struct {
	Type    int `json:"type"`
	SubType int `json:"sub_type,omitempty"`
}

// IP is the layer 3 part.
type IP struct {
	Source      string `json:"source"`
	Destination string `json:"destination"`
	IPVersion   string `json:"ipVersion"` // Cilium's proto names this field ipVersion
}

// Layer4 holds exactly one protocol.
type Layer4 struct {
	TCP    *TCP  `json:"TCP,omitempty"`
	UDP    *UDP  `json:"UDP,omitempty"`
	ICMPv4 *ICMP `json:"ICMPv4,omitempty"`
	SCTP   *UDP  `json:"SCTP,omitempty"` // same two fields as UDP
}

// TCP ports and flags.
type TCP struct {
	SourcePort      uint16    `json:"source_port"`
	DestinationPort uint16    `json:"destination_port"`
	Flags           *TCPFlags `json:"flags,omitempty"`
}

// UDP ports (SCTP has the same shape).
type UDP struct {
	SourcePort      uint16 `json:"source_port"`
	DestinationPort uint16 `json:"destination_port"`
}

// ICMP type and code; flatnet's datapath reports the echo id instead, so these are
// filled only for echo requests/replies.
type ICMP struct {
	Type uint32 `json:"type"`
	Code uint32 `json:"code"`
}

// TCPFlags as Cilium names them (upper case field names).
type TCPFlags struct {
	FIN bool `json:"FIN,omitempty"`
	SYN bool `json:"SYN,omitempty"`
	RST bool `json:"RST,omitempty"`
	PSH bool `json:"PSH,omitempty"`
	ACK bool `json:"ACK,omitempty"`
	URG bool `json:"URG,omitempty"`
	ECE bool `json:"ECE,omitempty"`
	CWR bool `json:"CWR,omitempty"`
}

// Endpoint is one side of a flow.
type Endpoint struct {
	ID          uint32   `json:"ID,omitempty"`
	Identity    uint32   `json:"identity"`
	ClusterName string   `json:"cluster_name,omitempty"`
	Namespace   string   `json:"namespace,omitempty"`
	Labels      []string `json:"labels,omitempty"` // "k8s:app=server", "reserved:world"
	PodName     string   `json:"pod_name,omitempty"`
	// Workloads is the pod's controller (compile.WorkloadsOf), shared with the
	// compiler's snapshot: read-only.
	Workloads []Workload `json:"workloads,omitempty"`
}

// Workload is flow.Workload of Cilium's API: {name, kind}. It is the compiler's
// own type, so that a flow carries the snapshot's slice instead of a copy.
type Workload = compile.Workload

// Policy names a policy that decided a flow.
type Policy struct {
	Name      string   `json:"name"`
	Namespace string   `json:"namespace,omitempty"`
	Labels    []string `json:"labels,omitempty"`
	Revision  uint64   `json:"revision,omitempty"`
	Kind      string   `json:"kind"`
}

// Verdicts and directions as Cilium spells them.
const (
	VerdictForwarded = "FORWARDED"
	VerdictDropped   = "DROPPED"
	Ingress          = "INGRESS"
	Egress           = "EGRESS"
)
