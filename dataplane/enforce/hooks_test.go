package enforce

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestHookMoverWaitsForQuiet: endpoints attached on filters stay there while an
// Attach is in flight, and move to tcx links once the node has been quiet for
// HookMoveQuiet, each counted.
func TestHookMoverWaitsForQuiet(t *testing.T) {
	e, node, eps := attachNode(t, 4)
	e.cfg.HookMoveQuiet = 300 * time.Millisecond
	attachAll(t, e, node, eps)
	if got := e.d.FilteredEndpoints(); len(got) != len(eps) {
		t.Fatalf("endpoints on filters after the attach: %v, want %d", got, len(eps))
	}

	busy := e.attachBegins() // an Attach in flight
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- node.Do(func(ns.NetNS) error { return e.RunHookMover(ctx) }) }()
	t.Cleanup(func() {
		cancel()
		must(t, <-done)
	})
	time.Sleep(4 * e.cfg.HookMoveQuiet)
	if got := e.d.FilteredEndpoints(); len(got) != len(eps) {
		t.Fatalf("endpoints on filters while an Attach is in flight: %v, want all %d (nothing moved)", got, len(eps))
	}
	if n := testutil.ToFloat64(e.metrics.OnFilters); n != float64(len(eps)) {
		t.Errorf("flatnet_endpoints_on_filters = %v, want %d", n, len(eps))
	}

	busy()
	deadline := time.Now().Add(20 * time.Second)
	for len(e.d.FilteredEndpoints()) > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if got := e.d.FilteredEndpoints(); len(got) != 0 {
		t.Fatalf("endpoints still on filters once quiet: %v", got)
	}
	if n := testutil.ToFloat64(e.metrics.HookMoves); n != float64(len(eps)) {
		t.Errorf("flatnet_endpoint_hook_moves_total = %v, want %d", n, len(eps))
	}
	for _, ep := range eps {
		for _, side := range []string{"ingress", "egress"} {
			pin := filepath.Join(e.cfg.PinDir, "links", fmt.Sprintf("%d-%s", ep.HostIfIndex, side))
			if _, err := os.Stat(pin); err != nil {
				t.Errorf("%s: no tcx link pinned at %s: %v", ep.PodName, pin, err)
			}
		}
	}
	inMapsAsCompiled(t, e, len(eps))
}
