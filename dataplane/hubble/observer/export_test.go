package observer

import "time"

// WaitSenders waits up to d for every sending goroutine GetFlows started to
// end, and says whether they did.
func (o *Observer) WaitSenders(d time.Duration) bool {
	done := make(chan struct{})
	go func() { o.senders.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

// Following is how many GetFlows streams follow now.
func (o *Observer) Following() int { return len(o.followers) }
