package nodealloc

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fill allocates every address of the block to att(0..Size-1).
func fill(t *testing.T, s *Store) {
	t.Helper()
	for i := range block.Size {
		if _, _, err := s.Allocate(context.Background(), "node-a", block, att(i)); err != nil {
			t.Fatalf("allocation %d: %v", i, err)
		}
	}
}

// A pod created while another's DEL is under way on a full block gets the
// address that DEL frees, not an exhaustion error.
func TestFullBlockWaitsForAReleaseUnderWay(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s := New(t.TempDir())
	fill(t, s)
	freed, _, _ := s.Get(ctx, att(3))
	done := s.BeginRelease(att(3))
	released := make(chan error, 1)
	go func() {
		// The DEL's teardown takes a while; the ADD is already waiting or
		// comes meanwhile: either way it must end with att(3)'s address.
		time.Sleep(300 * time.Millisecond)
		_, _, err := s.Release(ctx, att(3))
		done()
		released <- err
	}()
	ip, created, _, err := s.AllocateWaiting(ctx, "node-a", block, att(99), Wait{Bound: time.Minute})
	if err != nil {
		t.Fatalf("ADD on a full block with a release under way: %v", err)
	}
	if err := <-released; err != nil {
		t.Fatal(err)
	}
	if !created || ip != freed {
		t.Fatalf("got %s (created %v), want the released %s", ip, created, freed)
	}
	if n := s.releasesUnderWay(time.Now()); n != 0 {
		t.Fatalf("%d release(s) still marked after the DEL finished", n)
	}
}

// A DEL that begins while the ADD waits (the kubelet freed the slot before
// the runtime tore the sandbox down) is waited for too.
func TestFullBlockWaitsForAReleaseToBegin(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s := New(t.TempDir())
	fill(t, s)
	freed, _, _ := s.Get(ctx, att(4))
	released := make(chan error, 1)
	go func() {
		time.Sleep(200 * time.Millisecond) // the runtime gets to the DEL
		done := s.BeginRelease(att(4))
		time.Sleep(200 * time.Millisecond) // the teardown
		_, _, err := s.Release(ctx, att(4))
		done()
		released <- err
	}()
	ip, _, waited, err := s.AllocateWaiting(ctx, "node-a", block, att(99), Wait{Bound: time.Minute, Quiet: time.Minute})
	if err != nil {
		t.Fatalf("ADD on a full block whose release began later: %v", err)
	}
	if err := <-released; err != nil {
		t.Fatal(err)
	}
	if ip != freed || waited == 0 {
		t.Fatalf("got %s after waiting %s, want the released %s after a wait", ip, waited, freed)
	}
}

// With no DEL under way, and none beginning within Quiet, nothing will come
// free: the ADD fails, as the runtime must hear (not after the whole bound).
func TestFullBlockWithNoReleaseUnderWayFailsAfterQuiet(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s := New(t.TempDir())
	fill(t, s)
	_, _, _, err := s.AllocateWaiting(ctx, "node-a", block, att(99), Wait{Bound: time.Hour, Quiet: 0})
	var ex *ExhaustedError
	if !errors.As(err, &ex) || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want an ExhaustedError without waiting", err)
	}
	if ex.UnderWay != 0 || strings.Contains(err.Error(), "after waiting") {
		t.Fatalf("error %q says it waited for %d release(s)", err, ex.UnderWay)
	}
}

// A DEL that died leaves its mark; once old it is ignored and removed.
func TestStaleReleaseMarkIsIgnoredAndRemoved(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s := New(t.TempDir())
	fill(t, s)
	s.BeginRelease(att(5)) // never done: its DEL was killed
	mark := filepath.Join(s.Dir(), releasingDir, markName(att(5)))
	old := time.Now().Add(-2 * releaseMarkMaxAge)
	if err := os.Chtimes(mark, old, old); err != nil {
		t.Fatal(err)
	}
	_, _, _, err := s.AllocateWaiting(ctx, "node-a", block, att(99), Wait{Bound: time.Hour})
	var ex *ExhaustedError
	if !errors.As(err, &ex) || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want an ExhaustedError without waiting on the stale mark", err)
	}
	if _, err := os.Stat(mark); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("stale mark %s not removed (stat: %v)", mark, err)
	}
}

// A release that never finishes is waited on only up to the bound, and the
// error says what it waited for.
func TestWaitForReleasesIsBounded(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s := New(t.TempDir())
	fill(t, s)
	defer s.BeginRelease(att(7))()
	_, _, waited, err := s.AllocateWaiting(ctx, "node-a", block, att(99), Wait{Bound: 200 * time.Millisecond, Quiet: time.Hour})
	var ex *ExhaustedError
	if !errors.As(err, &ex) || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want an ExhaustedError once the bound passed", err)
	}
	if waited < 200*time.Millisecond || ex.UnderWay != 1 {
		t.Fatalf("waited %s with %d under way, want >= the 200ms bound with 1", waited, ex.UnderWay)
	}
	for _, want := range []string{"after waiting", "1 release(s) still under way", "blockSize"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}
