package cni

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/flatnet/flatnet/dataplane/endpointapi"
)

// PostObservation sends o to the agent listening on socket.
func PostObservation(ctx context.Context, socket string, o Observation) error {
	var d net.Dialer
	c := &http.Client{Transport: &http.Transport{
		DialContext:       func(ctx context.Context, _, _ string) (net.Conn, error) { return d.DialContext(ctx, "unix", socket) },
		DisableKeepAlives: true,
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://flatnet-agent"+ObservationPath, bytes.NewReader(EncodeObservation(o)))
	if err != nil {
		return fmt.Errorf("build observation request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("post observation to %s: %w", socket, err)
	}
	resp.Body.Close()
	return nil
}

// agentWait is how long ADD waits for an agent that does not answer at all
// (restarting during a rollout) before failing: the runtime's retry of a
// failed ADD tears the whole sandbox down and costs far more.
const agentWait = 10 * time.Second

// putEndpoint registers ep, retrying while the agent cannot be reached; an
// answer from the agent, even a refusal, is final.
func putEndpoint(ctx context.Context, socket string, ep endpointapi.Endpoint) error {
	ctx, cancel := context.WithTimeout(ctx, agentWait)
	defer cancel()
	c := endpointapi.NewClient(socket, 0)
	wait := 50 * time.Millisecond
	for {
		err := c.PutEndpoint(ctx, ep)
		var answered *endpointapi.APIError
		if err == nil || errors.As(err, &answered) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (no answer for %s)", err, agentWait)
		case <-time.After(wait):
		}
		wait = min(2*wait, time.Second)
	}
}

// Observation is one plugin operation's outcome, posted to the agent.
type Observation struct {
	Op      string  `json:"op"`
	Seconds float64 `json:"seconds"`
	OK      bool    `json:"ok"`
}

// ObservationPath is the agent socket route the plugin posts Observations to.
const ObservationPath = "/v1/cni/observations"

// EncodeObservation is the request body for an Observation.
func EncodeObservation(o Observation) []byte {
	b, _ := json.Marshal(o)
	return b
}
