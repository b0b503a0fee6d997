package nodealloc

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/flatnet/flatnet/dataplane/ipam"
)

// The kubelet takes a deleted pod off its node's count (maxPods, which is the
// block size) when its containers have stopped, before the runtime's CNI DEL
// has released its address. A pod created in that window would find the
// block full: its ADD failed and the kubelet retried it after a back-off of
// seconds, while the address it needed was being freed. So a DEL marks its
// release under way for its whole run (a file under releasingDir), and an ADD
// that finds the block full waits while some release is under way, and a
// little while for one to begin.
const (
	releasingDir = "releasing"
	// releaseMarkMaxAge: a mark older than this is of a DEL that died (one
	// bounds each of its two waits to 30 s); it is ignored and removed.
	releaseMarkMaxAge = 90 * time.Second
	// waitPoll is how often a waiting ADD tries again.
	waitPoll = 50 * time.Millisecond
)

// BeginRelease marks att's release under way until done is called (after
// Release, or when the DEL gives up). The mark is best effort: without it an
// ADD finding the block full waits only AllocateWaiting's Quiet for the
// address.
func (s *Store) BeginRelease(att Attachment) (done func()) {
	dir := filepath.Join(s.dir, releasingDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return func() {}
	}
	path := filepath.Join(dir, markName(att))
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return func() {}
	}
	f.Close()
	now := time.Now()
	_ = os.Chtimes(path, now, now) // a repeated DEL's mark is as young as it
	return func() { os.Remove(path) }
}

// markName is a file name for att (container IDs are the runtime's strings).
func markName(att Attachment) string {
	sum := sha256.Sum256([]byte(att.ContainerID + "\x00" + att.IfName))
	return hex.EncodeToString(sum[:16])
}

// releasesUnderWay counts the live marks, removing those of DELs that died.
func (s *Store) releasesUnderWay(now time.Time) int {
	dir := filepath.Join(s.dir, releasingDir)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range entries {
		info, err := e.Info()
		if err != nil {
			continue // removed meanwhile: that release is done
		}
		if now.Sub(info.ModTime()) > releaseMarkMaxAge {
			os.Remove(filepath.Join(dir, e.Name()))
			continue
		}
		n++
	}
	return n
}

// Wait bounds AllocateWaiting's wait for addresses on a full block.
type Wait struct {
	// Bound is the longest wait in all.
	Bound time.Duration
	// Quiet is how long a full block is waited on with no release under way:
	// the kubelet frees a deleted pod's slot as its containers stop, and its
	// runtime's DEL begins seconds later. Zero fails at once then.
	Quiet time.Duration
}

// AllocateWaiting is Allocate, except that a full block is waited on for an
// address to come free: while releases are under way (BeginRelease), and for
// w.Quiet when none is, up to w.Bound in all. waited is how long it waited.
func (s *Store) AllocateWaiting(ctx context.Context, node string, block ipam.Block, att Attachment, w Wait) (ip netip.Addr, created bool, waited time.Duration, err error) {
	start := time.Now()
	lastUnderWay := start // when a release was last seen under way
	for try := 0; ; try++ {
		ip, created, err = s.Allocate(ctx, node, block, att)
		now := time.Now()
		if try > 0 {
			waited = now.Sub(start)
		}
		var ex *ExhaustedError
		if !errors.As(err, &ex) {
			return ip, created, waited, err
		}
		under := s.releasesUnderWay(now)
		if under > 0 {
			lastUnderWay = now
		}
		if waited >= w.Bound || (under == 0 && now.Sub(lastUnderWay) >= w.Quiet) {
			ex.Waited, ex.UnderWay = waited, under
			return ip, created, waited, err
		}
		select {
		case <-ctx.Done():
			return ip, created, waited, fmt.Errorf("%w (stopped waiting for an address to come free: %w)", err, ctx.Err())
		case <-time.After(waitPoll):
		}
	}
}
