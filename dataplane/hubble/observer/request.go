package observer

import (
	"errors"
	"fmt"
	"time"

	observerpb "github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/flatnet/flatnet/dataplane/hubble/filter"
)

// query is a validated GetFlowsRequest.
type query struct {
	// number is how many flows: the newest ones, or the oldest with first (or
	// from since on). 0 means all the store holds, as in Hubble (the CLI asks
	// for 20 by default and for ^uint64(0) with --all); while following it only
	// bounds the history sent first.
	number uint64
	first  bool
	follow bool
	// since and until bound the flows' time; zero when not set.
	since, until time.Time
	match        filter.Func
	// mask is the field mask; nil sends whole flows.
	mask fieldMask
}

func (q *query) inTime(t time.Time) (before, after bool) {
	return !q.since.IsZero() && t.Before(q.since), !q.until.IsZero() && t.After(q.until)
}

// parseRequest validates req as Hubble's observer does and more strictly: every
// error is InvalidArgument naming the field and what to send instead, where
// Hubble would return an empty stream or an unnamed error.
func parseRequest(req *observerpb.GetFlowsRequest) (*query, error) {
	q := &query{number: req.GetNumber(), first: req.GetFirst(), follow: req.GetFollow()}
	if q.first && q.follow {
		return nil, invalid("first", "cannot be combined with follow: first reads the oldest flows, follow streams new ones",
			"drop one of them")
	}
	var err error
	if q.since, err = parseTime("since", req.GetSince()); err != nil {
		return nil, err
	}
	if q.until, err = parseTime("until", req.GetUntil()); err != nil {
		return nil, err
	}
	if !q.since.IsZero() && !q.until.IsZero() && q.since.After(q.until) {
		return nil, invalid("since", fmt.Sprintf("%s is after until (%s): no flow can match",
			q.since.Format(time.RFC3339Nano), q.until.Format(time.RFC3339Nano)), "swap since and until, or drop one")
	}
	if q.match, err = filter.Compile(req.GetWhitelist(), req.GetBlacklist()); err != nil {
		var fe *filter.Error
		if errors.As(err, &fe) {
			return nil, invalid(fe.Path, fe.Problem+errSuffix(fe.Err), fe.Fix)
		}
		return nil, status.Errorf(codes.InvalidArgument, "GetFlows: compiling whitelist and blacklist: %v", err)
	}
	if q.mask, err = requestFieldMask(req); err != nil {
		return nil, err
	}
	return q, nil
}

func errSuffix(err error) string {
	if err == nil {
		return ""
	}
	return ": " + err.Error()
}

func parseTime(field string, ts *timestamppb.Timestamp) (time.Time, error) {
	if ts == nil {
		return time.Time{}, nil
	}
	if err := ts.CheckValid(); err != nil {
		return time.Time{}, invalid(field, err.Error(), "send a timestamp between years 1 and 9999 with nanos in [0, 1e9)")
	}
	return ts.AsTime(), nil
}

// invalid is InvalidArgument naming field, what is wrong and the fix, with the
// field also in a BadRequest detail for clients that read details.
func invalid(field, problem, fix string) error {
	msg := problem
	if fix != "" {
		msg += " (" + fix + ")"
	}
	st := status.New(codes.InvalidArgument, "GetFlows: "+field+": "+msg)
	withDetail, err := st.WithDetails(&errdetails.BadRequest{
		FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: field, Description: msg}},
	})
	if err != nil {
		return st.Err()
	}
	return withDetail.Err()
}
