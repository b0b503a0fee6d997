package cni

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/flatnet/flatnet/dataplane/endpointapi"
)

// agentWait is how long ADD waits for an agent that does not answer at all
// (restarting during a rollout) before failing: the runtime's retry of a
// failed ADD tears the whole sandbox down and costs far more.
const agentWait = 10 * time.Second

// putEndpoint registers ep as the last step of the ADD begun at start,
// retrying while the agent cannot be reached; an answer from the agent, even
// a refusal, is final, and it observed the ADD (answered).
func putEndpoint(ctx context.Context, socket string, ep endpointapi.Endpoint, start time.Time) (answered bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, agentWait)
	defer cancel()
	c := endpointapi.NewClient(socket, 0)
	wait := 50 * time.Millisecond
	for {
		err := c.PutEndpointOfAdd(ctx, ep, start)
		var refused *endpointapi.APIError
		if err == nil || errors.As(err, &refused) {
			return true, err
		}
		select {
		case <-ctx.Done():
			return false, fmt.Errorf("%w (no answer for %s)", err, agentWait)
		case <-time.After(wait):
		}
		wait = min(2*wait, time.Second)
	}
}

// observationWait bounds the report of an operation to the agent: it is best
// effort and must not slow the runtime down.
const observationWait = 200 * time.Millisecond

// report tells the agent how long the operation took (its ADD latency
// histogram); best effort with a short deadline, never failing the operation.
func report(socket, op string, start time.Time, opErr error) {
	if socket == "" {
		return
	}
	o := endpointapi.Observation{Op: op, Seconds: time.Since(start).Seconds(), OK: opErr == nil}
	_ = endpointapi.NewClient(socket, observationWait).PostObservation(context.Background(), o)
}
