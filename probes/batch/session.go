package batch

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/flatnet/flatnet/probes/connect"
)

// A session (`probe batch --session`) answers many batches from one process: the
// caller keeps one exec open per pod instead of making one per batch, and each
// exec costs the API server, the kubelet and the container runtime far more than
// the batch itself (~90 ms of CPU on a kind node here, against a few ms).
//
// The protocol is JSON lines: the caller writes a Request, the session answers it
// with one Response line, and the next Request may follow. The session ends when
// its input does.

// Request is one batch of a session. Zero fields take the session's defaults (the
// flags it was started with).
type Request struct {
	// ID is echoed in the Response, so a caller can tell an answer is to its request.
	ID uint64 `json:"id"`
	// Timeout is a Go duration ("1s"), as --timeout.
	Timeout     string           `json:"timeout,omitempty"`
	Parallel    int              `json:"parallel,omitempty"`
	Protocol    connect.Protocol `json:"protocol,omitempty"`
	UDPPayload  string           `json:"udp_data,omitempty"`
	SCTPPayload string           `json:"sctp_data,omitempty"`
	Targets     []Target         `json:"targets"`
}

// Response answers a Request: a Result per target, in order, or Error when the
// request was refused before anything was probed (bad options, a bad target).
type Response struct {
	ID      uint64   `json:"id"`
	Results []Result `json:"results,omitempty"`
	Error   string   `json:"error,omitempty"`
}

// NewRequest is the Request for targets with opts (as a Runner's options).
func NewRequest(id uint64, targets []Target, opts Options) Request {
	return Request{ID: id, Timeout: opts.Timeout.String(), Parallel: opts.Parallel, Protocol: opts.Protocol,
		UDPPayload: opts.UDPPayload, SCTPPayload: opts.SCTPPayload, Targets: targets}
}

// options are the request's options over the session's defaults; an error names
// the field.
func (q Request) options(defaults Options) (Options, error) {
	o := defaults
	if q.Timeout != "" {
		d, err := time.ParseDuration(q.Timeout)
		if err != nil {
			return o, fmt.Errorf("timeout %q: not a duration, e.g. \"3s\"", q.Timeout)
		}
		o.Timeout = d
	}
	if q.Parallel != 0 {
		o.Parallel = q.Parallel
	}
	if q.Protocol != "" {
		o.Protocol = q.Protocol
	}
	if q.UDPPayload != "" {
		o.UDPPayload = q.UDPPayload
	}
	if q.SCTPPayload != "" {
		o.SCTPPayload = q.SCTPPayload
	}
	return o, o.Validate()
}

// maxRequestBytes bounds one request line: a matrix row of thousands of targets
// fits many times over.
const maxRequestBytes = 16 << 20

// Serve answers requests read from r on w, one at a time, until r ends (nil) or
// ctx is done. A request it cannot read or refuses is answered with an Error and
// the session goes on; only a failed write ends it.
func Serve(ctx context.Context, r io.Reader, w io.Writer, defaults Options) error {
	in := bufio.NewScanner(r)
	in.Buffer(make([]byte, 0, 64<<10), maxRequestBytes)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	for in.Scan() {
		if len(in.Bytes()) == 0 {
			continue
		}
		resp := answer(ctx, in.Bytes(), defaults)
		if err := enc.Encode(resp); err != nil {
			return fmt.Errorf("writing the answer to request %d: %w", resp.ID, err)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	if err := in.Err(); err != nil {
		return fmt.Errorf("reading requests: %w", err)
	}
	return nil
}

func answer(ctx context.Context, line []byte, defaults Options) Response {
	var q Request
	if err := json.Unmarshal(line, &q); err != nil {
		return Response{Error: fmt.Sprintf("request: not a JSON request line: %v", err)}
	}
	opts, err := q.options(defaults)
	if err != nil {
		return Response{ID: q.ID, Error: "request: " + err.Error()}
	}
	for i, t := range q.Targets {
		if err := ValidateTarget(t); err != nil {
			return Response{ID: q.ID, Error: fmt.Sprintf("request: targets[%d] %q: %v", i, t.Target, err)}
		}
	}
	results := make([]Result, 0, len(q.Targets))
	if err := Run(ctx, q.Targets, opts, func(r Result) error { results = append(results, r); return nil }); err != nil {
		return Response{ID: q.ID, Error: err.Error()}
	}
	return Response{ID: q.ID, Results: results}
}
