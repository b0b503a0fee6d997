package endpointapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"
)

// Client calls the agent over its unix socket.
type Client struct {
	socket  string
	timeout time.Duration
	http    *http.Client
}

// NewClient returns a client for the agent socket at path; each call is
// bounded by timeout (DefaultTimeout when zero), connection included.
func NewClient(path string, timeout time.Duration) *Client {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	d := net.Dialer{}
	return &Client{
		socket:  path,
		timeout: timeout,
		http: &http.Client{Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return d.DialContext(ctx, "unix", path)
			},
			DisableKeepAlives: true, // one call per plugin process
		}},
	}
}

// PutEndpoint registers ep and returns once the agent accepted it.
func (c *Client) PutEndpoint(ctx context.Context, ep Endpoint) error {
	return c.PutEndpointOfAdd(ctx, ep, time.Time{}, nil, nil)
}

// PutEndpointOfAdd is PutEndpoint as the last step of an ADD that began at
// started (zero: not an ADD) and went through phases before it, its process
// scheduled as sched says: the agent observes the ADD's duration
// (AddStartedHeader), its phases (AddPhasesHeader) and sched (AddSchedHeader).
func (c *Client) PutEndpointOfAdd(ctx context.Context, ep Endpoint, started time.Time, phases, sched []AddPhase) error {
	body, err := json.Marshal(ep)
	if err != nil {
		return fmt.Errorf("encode endpoint %s: %w", ep.ContainerID, err)
	}
	var h http.Header
	if !started.IsZero() {
		h = http.Header{AddStartedHeader: {started.Format(time.RFC3339Nano)}}
		if len(phases) > 0 {
			h.Set(AddPhasesHeader, FormatAddPhases(phases))
		}
		if len(sched) > 0 {
			h.Set(AddSchedHeader, FormatAddPhases(sched))
		}
	}
	return c.call(ctx, http.MethodPut, "/v1/endpoints/"+url.PathEscape(ep.ContainerID), body, h)
}

// DeleteEndpoint tells the agent the endpoint is gone.
func (c *Client) DeleteEndpoint(ctx context.Context, containerID string) error {
	return c.call(ctx, http.MethodDelete, "/v1/endpoints/"+url.PathEscape(containerID), nil, nil)
}

// PostObservation reports one plugin operation for the agent's metrics.
func (c *Client) PostObservation(ctx context.Context, o Observation) error {
	body, err := json.Marshal(o)
	if err != nil {
		return fmt.Errorf("encode observation: %w", err)
	}
	return c.call(ctx, http.MethodPost, ObservationPath, body, nil)
}

// Healthz succeeds when the agent is up and serving.
func (c *Client) Healthz(ctx context.Context) error {
	return c.call(ctx, http.MethodGet, "/v1/healthz", nil, nil)
}

func (c *Client) call(ctx context.Context, method, path string, body []byte, header http.Header) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, "http://flatnet-agent"+path, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("build %s %s: %w", method, path, err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s on agent socket %s (is the flatnet agent running on this node?): %w", method, path, c.socket, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if resp.StatusCode/100 == 2 {
		return nil
	}
	var er ErrorResponse
	if json.Unmarshal(raw, &er) != nil || er.Error == "" {
		er.Error = string(bytes.TrimSpace(raw))
	}
	return &APIError{Status: resp.StatusCode, Message: er.Error}
}
