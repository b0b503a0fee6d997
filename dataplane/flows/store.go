package flows

import (
	"sync"
)

// DefaultCapacity is how many recent flows an agent keeps.
const DefaultCapacity = 10000

// Store is a bounded history of recent flows with live subscribers. Safe for
// concurrent use.
type Store struct {
	mu   sync.Mutex
	ring []*Response
	next int  // index of the next write
	full bool // the ring has wrapped
	subs map[chan *Response]struct{}
}

// NewStore keeps the last capacity flows (DefaultCapacity when <= 0).
func NewStore(capacity int) *Store {
	if capacity <= 0 {
		capacity = DefaultCapacity
	}
	return &Store{ring: make([]*Response, capacity), subs: map[chan *Response]struct{}{}}
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
