// Package endpointapi is the seam between the CNI plugin and the node agent:
// before ADD returns, the plugin tells the agent about the new endpoint so
// that policy is in place before the pod's first packet; DEL tells it the
// endpoint is gone. JSON over HTTP on a unix socket:
//
//	PUT    /v1/endpoints/{containerID}   body: Endpoint          -> 200 Response
//	       header AddStartedHeader (optional): when the plugin's ADD began
//	       header AddPhasesHeader (optional): how long its steps before the PUT took
//	DELETE /v1/endpoints/{containerID}                           -> 200 Response (also when unknown)
//	GET    /v1/healthz                                           -> 200 (agent up; used by CNI STATUS)
//	POST   /v1/cni/observations          body: Observation       -> 204 (the agent's CNI metrics)
//
// Errors come back as a non-2xx status with an ErrorResponse body. The agent
// implements Handler and serves NewHTTPHandler(h) on ListenUnix(path), and
// Observations on its own mux; the plugin uses Client.
package endpointapi

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// DefaultSocket is where the agent listens unless configured otherwise.
const DefaultSocket = "/run/flatnet/agent.sock"

// DefaultTimeout bounds one call of the plugin to the agent.
const DefaultTimeout = 5 * time.Second

// Endpoint is one pod attachment as the CNI plugin created it.
type Endpoint struct {
	ContainerID  string     `json:"containerID"`
	PodNamespace string     `json:"podNamespace"`
	PodName      string     `json:"podName"`
	Netns        string     `json:"netns"`
	HostIfName   string     `json:"hostIfName"`  // host side of the veth, where the datapath attaches
	HostIfIndex  int        `json:"hostIfIndex"` // its ifindex in the node's netns
	PodIfName    string     `json:"podIfName"`   // the interface name inside the pod (CNI_IFNAME)
	IP           netip.Addr `json:"ip"`
	MAC          string     `json:"mac"` // the pod interface's MAC
}

// Validate reports the first missing or malformed field.
func (e Endpoint) Validate() error {
	switch {
	case e.ContainerID == "":
		return errors.New("containerID: missing")
	case e.HostIfName == "":
		return errors.New("hostIfName: missing")
	case e.HostIfIndex <= 0:
		return fmt.Errorf("hostIfIndex: %d is not an interface index", e.HostIfIndex)
	case e.PodIfName == "":
		return errors.New("podIfName: missing")
	case !e.IP.IsValid():
		return errors.New("ip: missing")
	}
	return nil
}

// Response acknowledges a PUT or DELETE.
type Response struct {
	ContainerID string `json:"containerID"`
}

// ErrorResponse is the body of every non-2xx answer.
type ErrorResponse struct {
	Error string `json:"error"`
}

// Handler is what the agent implements. Both methods must be idempotent:
// the plugin retries ADD and DEL as the container runtime does.
type Handler interface {
	// PutEndpoint registers or replaces the endpoint and returns once the
	// endpoint's policy is enforced. An error refuses the pod: the plugin
	// undoes its ADD and the runtime retries later.
	PutEndpoint(ctx context.Context, ep Endpoint) error
	// DeleteEndpoint forgets the endpoint; an unknown ID is not an error.
	DeleteEndpoint(ctx context.Context, containerID string) error
}

// Observation is one plugin operation's outcome, posted to the agent.
type Observation struct {
	Op      string  `json:"op"`
	Seconds float64 `json:"seconds"`
	OK      bool    `json:"ok"`
}

// ObservationPath is the agent socket route the plugin posts Observations to.
const ObservationPath = "/v1/cni/observations"

// AddStartedHeader on a PUT carries the time the plugin's ADD began
// (RFC 3339, nanoseconds). The agent counts the ADD as observed when it
// answers the PUT, the ADD's last step, so a successful ADD makes one round
// trip to the agent, not two; an ADD that fails before its PUT posts an
// Observation instead.
const AddStartedHeader = "Flatnet-Add-Started"

// ErrInvalidEndpoint wrapped in a Handler's error turns it into a 400 (the
// request is wrong) instead of a 500 (the agent failed).
var ErrInvalidEndpoint = errors.New("invalid endpoint")

// APIError is what the client returns when the agent answered with an error.
type APIError struct {
	Status  int    // HTTP status
	Message string // the agent's ErrorResponse.Error
}

func (e *APIError) Error() string {
	return fmt.Sprintf("agent answered %d: %s", e.Status, e.Message)
}
