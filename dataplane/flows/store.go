package flows

import (
	"sync"
)

// DefaultCapacity is how many recent flows an agent keeps.
const DefaultCapacity = 10000

// Store is a bounded history of recent flows with live subscribers. Safe for
// concurrent use.
//
// Every flow added gets a sequence number, 0 for the first: readers that keep
// their own position (ReadFrom, ReadBefore, Wait) cost Add nothing per reader and
// learn exactly how many flows the ring overwrote before they read them, which is
// how Hubble's observer reports a slow follower's losses.
type Store struct {
	mu   sync.Mutex
	ring []*Response
	next int  // index of the next write
	full bool // the ring has wrapped
	subs map[chan *Response]struct{}
	// seen is how many flows were ever added: the sequence number of the next.
	seen uint64
	// wake is closed by the next Add, so every waiting reader wakes at the cost
	// of one close; nil while nobody waits.
	wake chan struct{}
	// closed is a closed channel, what Wait returns when there is already a flow.
	closed chan struct{}
}

// NewStore keeps the last capacity flows (DefaultCapacity when <= 0).
func NewStore(capacity int) *Store {
	if capacity <= 0 {
		capacity = DefaultCapacity
	}
	closed := make(chan struct{})
	close(closed)
	return &Store{ring: make([]*Response, capacity), subs: map[chan *Response]struct{}{}, closed: closed}
}

// Add records a flow and hands it to subscribers; a subscriber that does not keep up
// misses flows rather than stalling the reader.
func (s *Store) Add(r *Response) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ring[s.next] = r
	s.next++
	if s.next == len(s.ring) {
		s.next, s.full = 0, true
	}
	s.seen++
	if s.wake != nil {
		close(s.wake)
		s.wake = nil
	}
	for c := range s.subs {
		select {
		case c <- r:
		default:
		}
	}
}

// Recent returns the matching flows, oldest first; last > 0 keeps only the newest
// last of them.
func (s *Store) Recent(f Filter, last int) []*Response {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.recentLocked(f, last)
}

func (s *Store) recentLocked(f Filter, last int) []*Response {
	var out []*Response
	visit := func(r *Response) {
		if r != nil && f.Match(r) {
			out = append(out, r)
		}
	}
	if s.full {
		for _, r := range s.ring[s.next:] {
			visit(r)
		}
	}
	for _, r := range s.ring[:s.next] {
		visit(r)
	}
	if last > 0 && len(out) > last {
		out = out[len(out)-last:]
	}
	return out
}

// Follow returns the matching history (as Recent) and a channel of every flow added
// after it, taken at one instant so a follower sees no gap and no duplicate. The
// channel is buffered: a reader that does not keep up loses flows. Call stop when done.
func (s *Store) Follow(f Filter, last, buffer int) (hist []*Response, live <-chan *Response, stop func()) {
	c := make(chan *Response, buffer)
	s.mu.Lock()
	defer s.mu.Unlock()
	hist = s.recentLocked(f, last)
	s.subs[c] = struct{}{}
	return hist, c, func() {
		s.mu.Lock()
		delete(s.subs, c)
		s.mu.Unlock()
	}
}

// Stats says how many flows the store holds now, how many it can hold, and how
// many were ever added.
func (s *Store) Stats() (length, capacity int, seen uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lenLocked(), len(s.ring), s.seen
}

func (s *Store) lenLocked() int {
	if s.full {
		return len(s.ring)
	}
	return s.next
}

// Bounds returns the sequence numbers of the oldest flow kept and of the next
// flow to be added (equal when the store is empty).
func (s *Store) Bounds() (oldest, next uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seen - uint64(s.lenLocked()), s.seen
}

// ReadFrom copies into buf the flows from sequence number from on, oldest first,
// and says how many it copied. Flows of that range the ring has overwritten are
// skipped and counted in lost: the next read starts at from+lost+n. The lock is
// held for len(buf) pointer copies at most, so keep buf small.
func (s *Store) ReadFrom(from uint64, buf []*Response) (n int, lost uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if oldest := s.seen - uint64(s.lenLocked()); from < oldest {
		lost, from = oldest-from, oldest
	}
	for ; n < len(buf) && from < s.seen; n, from = n+1, from+1 {
		buf[n] = s.ring[from%uint64(len(s.ring))]
	}
	return n, lost
}

// ReadBefore copies into buf the flows just before sequence number before, as
// many as fit and are still kept, oldest first; first is the sequence number of
// buf[0]. n == 0 means no flow before it is kept. Like ReadFrom, it holds the lock
// for len(buf) pointer copies at most.
func (s *Store) ReadBefore(before uint64, buf []*Response) (n int, first uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	before = min(before, s.seen)
	first = max(s.seen-uint64(s.lenLocked()), before-min(before, uint64(len(buf))))
	for seq := first; seq < before; seq, n = seq+1, n+1 {
		buf[n] = s.ring[seq%uint64(len(s.ring))]
	}
	return n, first
}

// Wait returns a channel that is closed once the flow with sequence number seq
// has been added (at once if it has). A reader that finds nothing new waits on
// it rather than polling.
func (s *Store) Wait(seq uint64) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if seq < s.seen {
		return s.closed
	}
	if s.wake == nil {
		s.wake = make(chan struct{})
	}
	return s.wake
}
