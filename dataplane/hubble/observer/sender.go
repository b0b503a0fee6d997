package observer

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	observerpb "github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// sendQueue is how many responses wait for a client's gRPC stream: enough to
// keep a reader busy between the reads of the store, small enough to hold
// nothing that matters when a client stalls.
const sendQueue = 64

// sender sends a stream's responses from a goroutine of its own, so that the
// handler can give up on a client that does not read: gRPC's Send blocks on the
// client's flow-control window and cannot be cancelled, but it fails once the
// handler returns.
type sender struct {
	stream grpc.ServerStreamingServer[observerpb.GetFlowsResponse]
	stall  time.Duration
	queue  chan *observerpb.GetFlowsResponse
	quit   chan struct{} // closed by abort: send nothing more
	done   chan struct{} // closed when the goroutine ends
	err    error         // why it ended early; read after done
	sent   atomic.Uint64 // progress, for the stall checks
	queued atomic.Uint64 // responses put: sent < queued means the client owes reads
	once   sync.Once
}

func startSender(stream grpc.ServerStreamingServer[observerpb.GetFlowsResponse], stall time.Duration, wg *sync.WaitGroup) *sender {
	s := &sender{
		stream: stream,
		stall:  stall,
		queue:  make(chan *observerpb.GetFlowsResponse, sendQueue),
		quit:   make(chan struct{}),
		done:   make(chan struct{}),
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(s.done)
		for {
			var resp *observerpb.GetFlowsResponse
			select {
			case <-s.quit:
				return
			case r, ok := <-s.queue:
				if !ok {
					return
				}
				resp = r
			}
			if err := s.stream.Send(resp); err != nil {
				s.err = err
				return
			}
			s.sent.Add(1)
		}
	}()
	return s
}

// put queues resp. When the queue is full it waits up to the stall bound for
// room: the client then has accepted nothing for that long, and put returns
// ResourceExhausted so the handler disconnects it.
func (s *sender) put(ctx context.Context, resp *observerpb.GetFlowsResponse) error {
	select {
	case s.queue <- resp:
		s.queued.Add(1)
		return nil
	default:
	}
	t := time.NewTimer(s.stall)
	defer t.Stop()
	select {
	case s.queue <- resp:
		s.queued.Add(1)
		return nil
	case <-s.done:
		return s.ended()
	case <-ctx.Done():
		return status.FromContextError(ctx.Err()).Err()
	case <-t.C:
		return s.stalled()
	}
}

// ended is why the sending goroutine ended before the stream did: Send's
// error (the client left, or the server stops).
func (s *sender) ended() error {
	if s.err == nil {
		return status.Error(codes.Internal, "GetFlows: the stream's sender stopped early")
	}
	return s.err
}

// finish waits until every queued response is sent, giving up when the client
// makes no progress for the stall bound.
func (s *sender) finish(ctx context.Context) error {
	close(s.queue)
	t := time.NewTimer(s.stall)
	defer t.Stop()
	for {
		progress := s.sent.Load()
		select {
		case <-s.done:
			return s.err
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-t.C:
			if s.sent.Load() == progress {
				return s.stalled()
			}
			t.Reset(s.stall)
		}
	}
}

// stallCheck is for a handler about to wait for new flows while responses may
// still wait for the client (a quiet follow stream puts nothing, so put alone
// would never see the stall): a channel that fires after the stall bound when
// something is owed, nil when nothing is, and the progress to compare then.
func (s *sender) stallCheck() (*time.Timer, uint64) {
	sent := s.sent.Load()
	if sent >= s.queued.Load() {
		return nil, sent
	}
	return time.NewTimer(s.stall), sent
}

// stuck says whether the client has accepted nothing since progress.
func (s *sender) stuck(progress uint64) bool {
	return s.sent.Load() == progress && progress < s.queued.Load()
}

// abort stops sending; what is queued is dropped. The handler returns next,
// which fails a Send blocked on the client.
func (s *sender) abort() {
	s.once.Do(func() { close(s.quit) })
}

func (s *sender) stalled() error {
	return status.Errorf(codes.ResourceExhausted, "GetFlows: the client accepted no response for %s while flows waited; "+
		"disconnected so that it holds nothing on the agent (read the stream steadily, or narrow it with filters)", s.stall)
}
