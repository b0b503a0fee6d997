package peer

import (
	"context"
	"sync"

	peerpb "github.com/cilium/cilium/api/v1/peer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// queue holds one client's pending notifications. push never blocks (it runs in
// the informer's handler goroutine); past max the queue fails for good, so a
// client that does not read costs at most max notifications.
type queue struct {
	max int

	mu      sync.Mutex
	items   []*peerpb.ChangeNotification
	failed  bool
	waiting chan struct{} // closed by push when pop waits on an empty queue
}

func newQueue(max int) *queue { return &queue{max: max} }

func (q *queue) push(cn *peerpb.ChangeNotification) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.failed {
		return
	}
	if len(q.items) >= q.max {
		q.failed, q.items = true, nil
	} else {
		q.items = append(q.items, cn)
	}
	if q.waiting != nil {
		close(q.waiting)
		q.waiting = nil
	}
}

// pop returns the oldest notification, waiting for one until ctx ends.
func (q *queue) pop(ctx context.Context) (*peerpb.ChangeNotification, error) {
	for {
		q.mu.Lock()
		if q.failed {
			q.mu.Unlock()
			return nil, status.Errorf(codes.ResourceExhausted,
				"peer change notifications: the client fell %d notifications behind; reconnect", q.max)
		}
		if len(q.items) > 0 {
			cn := q.items[0]
			q.items[0] = nil
			q.items = q.items[1:]
			q.mu.Unlock()
			return cn, nil
		}
		if q.waiting == nil {
			q.waiting = make(chan struct{})
		}
		w := q.waiting
		q.mu.Unlock()
		select {
		case <-w:
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
}
