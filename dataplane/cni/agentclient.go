package cni

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
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
