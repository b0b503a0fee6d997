package agent

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// TestStopPartsWaitsForEveryPart: the deferred closes (the datapath's) run only
// after every part has stopped, the first error is the one returned, and a part
// that never stops is named after the bound instead of hanging the agent.
func TestStopPartsWaitsForEveryPart(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 3)
	var stopped [2]time.Time
	boom := errors.New("boom")
	errc <- boom // the first part fails
	for i := range stopped {
		go func() {
			<-ctx.Done()
			time.Sleep(50 * time.Millisecond) // its way out: emptying the warm pool
			stopped[i] = time.Now()
			errc <- nil
		}()
	}
	err := stopParts(cancel, errc, 3, 10*time.Second)
	returned := time.Now()
	if !errors.Is(err, boom) {
		t.Fatalf("stopParts = %v, want the first part's error", err)
	}
	for i, at := range stopped {
		if at.IsZero() || at.After(returned) {
			t.Fatalf("part %d stopped at %v, after stopParts returned (%v)", i+1, at, returned)
		}
	}

	_, cancel = context.WithCancel(context.Background())
	errc = make(chan error, 2)
	errc <- nil // a clean stop; the other part never stops
	err = stopParts(cancel, errc, 2, 100*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "did not stop within 100ms") {
		t.Fatalf("stopParts with a part that hangs = %v, want the bound named", err)
	}
}
