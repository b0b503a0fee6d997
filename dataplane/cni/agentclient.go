package cni

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/flatnet/flatnet/dataplane/endpointapi"
)

// agentWait is how long ADD keeps trying to reach an agent that does not
// accept connections at all (restarting during a rollout) before failing: the
// runtime's retry of a failed ADD tears the whole sandbox down and costs far
// more.
const agentWait = 10 * time.Second

// putEndpoint registers ep as the last step of the ADD begun at start, which
// went through phases before (the agent publishes them). It
// retries only while the agent cannot be reached; once the request is sent it
// waits for the answer until ctx ends: an agent busy attaching a burst of pods
// answers late, and giving up on it would throw its work away and fail the ADD
// into the runtime's back-off. An answer, even a refusal, is final, and the
// agent observed the ADD (answered).
func putEndpoint(ctx context.Context, socket string, ep endpointapi.Endpoint, start time.Time, phases, sched []endpointapi.AddPhase) (answered bool, err error) {
	deadline, ok := ctx.Deadline()
	if !ok {
		return false, errors.New("putEndpoint needs a context with a deadline")
	}
	c := endpointapi.NewClient(socket, time.Until(deadline))
	giveUp := time.Now().Add(agentWait)
	wait := 50 * time.Millisecond
	for {
		err := c.PutEndpointOfAdd(ctx, ep, start, phases, sched)
		var refused *endpointapi.APIError
		if err == nil || errors.As(err, &refused) {
			return true, err
		}
		if !unreachable(err) {
			return false, err
		}
		if time.Now().After(giveUp) {
			return false, fmt.Errorf("%w (unreachable for %s)", err, agentWait)
		}
		select {
		case <-ctx.Done():
			return false, fmt.Errorf("%w (%v)", err, ctx.Err())
		case <-time.After(wait):
		}
		wait = min(2*wait, time.Second)
	}
}

// unreachable reports whether err means the request never reached the agent
// (no socket, or nothing accepting on it), so it is safe to send it again.
func unreachable(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// forgetEndpoint tells the agent an ADD that sent it the endpoint is being
// undone (best effort: the agent also collects endpoints whose address and
// veth are gone).
func forgetEndpoint(socket, containerID string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = endpointapi.NewClient(socket, 2*time.Second).DeleteEndpoint(ctx, containerID)
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
