package hubblecli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
	"time"

	observerpb "github.com/cilium/cilium/api/v1/observer"
	relaypb "github.com/cilium/cilium/api/v1/relay"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
)

// Refusal is how a GetFlows request that should be refused was answered. A
// Hubble server refuses it with the call's status. hubble-relay forwards a
// request to every agent and turns each agent's error into a NODE_ERROR node
// status event carrying the status's text ("rpc error: code =
// InvalidArgument desc = ..."; pkg/hubble/relay/observer nodeStatusError,
// identical messages of several nodes merged into one event), then ends the
// call OK; the CLI prints those events on stderr and exits 0.
type Refusal struct {
	// Status is the call's own InvalidArgument message.
	Status string
	// ByNode is each agent's InvalidArgument message, through the relay.
	ByNode map[string]string
	// Flows counts the flows that came.
	Flows int
	// Other is everything else, described: flows, other errors, unavailable nodes.
	Other []string
}

var (
	grpcErrorText = regexp.MustCompile(`^rpc error: code = (\w+) desc = (.*)$`)
	cliErrorText  = regexp.MustCompile(`rpc error: code = InvalidArgument desc = (.*)`)
)

// add reads one response of the stream.
func (r *Refusal) add(resp *observerpb.GetFlowsResponse) {
	ns := resp.GetNodeStatus()
	switch {
	case resp.GetFlow() != nil:
		r.Flows++
		r.Other = append(r.Other, "a flow: "+protojson.Format(resp.GetFlow()))
	case resp.GetLostEvents() != nil:
		r.Other = append(r.Other, "lost events: "+protojson.Format(resp.GetLostEvents()))
	case ns.GetStateChange() == relaypb.NodeState_NODE_ERROR:
		m := grpcErrorText.FindStringSubmatch(ns.GetMessage())
		if m == nil || m[1] != codes.InvalidArgument.String() {
			r.Other = append(r.Other, fmt.Sprintf("nodes %v: %s (not InvalidArgument)", ns.GetNodeNames(), ns.GetMessage()))
			return
		}
		for _, n := range ns.GetNodeNames() {
			r.ByNode[n] = m[2]
		}
	case ns.GetStateChange() == relaypb.NodeState_NODE_UNAVAILABLE:
		r.Other = append(r.Other, fmt.Sprintf("nodes %v unavailable", ns.GetNodeNames()))
	}
}

// end reads the error that ended the call.
func (r *Refusal) end(err error) {
	if st, ok := status.FromError(err); ok && st.Code() == codes.InvalidArgument {
		r.Status = st.Message()
		return
	}
	r.Other = append(r.Other, "the call failed: "+err.Error())
}

// ReadRefusal sends req and reads the stream to its end (at most a minute).
func ReadRefusal(ctx context.Context, client observerpb.ObserverClient, req *observerpb.GetFlowsRequest) Refusal {
	r := Refusal{ByNode: map[string]string{}}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	stream, err := client.GetFlows(ctx, req)
	if err != nil {
		r.end(err)
		return r
	}
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return r
		}
		if err != nil {
			r.end(err)
			return r
		}
		r.add(resp)
	}
}

// Refusal reads a `hubble observe -o json` run: a call refused outright
// fails the CLI with the status on stderr; the relay's NODE_ERROR events are
// JSON lines on stderr, flows on stdout.
func (res Result) Refusal() Refusal {
	r := Refusal{ByNode: map[string]string{}}
	if res.ExitCode != 0 {
		if m := cliErrorText.FindStringSubmatch(res.Stderr); m != nil {
			r.Status = strings.TrimSpace(m[1])
		} else {
			r.Other = append(r.Other, res.String())
		}
		return r
	}
	for _, e := range NodeEvents(res.Stderr) {
		r.add(e)
	}
	out, err := ParseLines(res.Stdout)
	if err != nil {
		r.Other = append(r.Other, "stdout: "+err.Error())
	}
	for _, o := range out {
		r.add(o)
	}
	return r
}

// NodeEvents picks the JSON node status events out of the CLI's stderr,
// where `-o json` writes them (among any log lines).
func NodeEvents(stderr string) []*observerpb.GetFlowsResponse {
	var out []*observerpb.GetFlowsResponse
	for _, l := range strings.Split(stderr, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "{") {
			continue
		}
		rs, err := ParseLines(l)
		if err == nil && len(rs) == 1 && rs[0].GetNodeStatus() != nil {
			out = append(out, rs[0])
		}
	}
	return out
}
