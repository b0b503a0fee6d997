// Package nodealloc is the node-local address allocator the CNI plugin uses:
// it hands out addresses of the node's block (see package ipam) to pod
// attachments and remembers them in one JSON file under a data directory.
//
// Every operation takes an exclusive flock on <dir>/lock, reads the state,
// changes it, and writes it back atomically (temp file, fsync, rename). A
// process killed at any point, or a power loss, leaves either the old or the
// new state on disk and its lock released by the kernel; temp files it left
// are removed by the next holder of the lock. Allocations are keyed by the CNI
// attachment (container ID + interface name), which makes a repeated ADD
// return the same address and a repeated DEL a no-op.
package nodealloc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flatnet/flatnet/dataplane/ipam"
)

// DefaultDir is where the plugin keeps its state unless configured otherwise.
const DefaultDir = "/var/lib/flatnet/ipam"

const (
	stateFile  = "allocations.json"
	lockFile   = "lock"
	tempPrefix = stateFile + ".tmp-"
)

// Attachment identifies one CNI attachment, as in the GC valid-attachments list.
type Attachment struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
}

// Allocation is one address held by one attachment.
type Allocation struct {
	IP netip.Addr `json:"ip"`
	Attachment
}

// state is the on-disk document.
type state struct {
	Version int `json:"version"`
	// Last is the most recently handed-out address: the next search starts
	// after it, so a just-released address is not reused at once while
	// conntrack entries and peers' caches may still name its old owner.
	Last        netip.Addr   `json:"last,omitzero"`
	Allocations []Allocation `json:"allocations"`
}

// ExhaustedError says the node's block has no free address.
type ExhaustedError struct {
	Node  string
	Block ipam.Block
	// Waited is how long AllocateWaiting waited for releases under way;
	// UnderWay how many were still under way when it stopped.
	Waited   time.Duration
	UnderWay int
}

func (e *ExhaustedError) Error() string {
	waited := ""
	if e.Waited > 0 {
		waited = fmt.Sprintf(" (after waiting %s for deleted pods to release theirs; %d release(s) still under way)", e.Waited.Round(time.Millisecond), e.UnderWay)
	}
	return fmt.Sprintf("node %q: all %d addresses of its block %s are in use%s; raise the flatnet agent's blockSize setting (%d..%d; it also sets the kubelet's maxPods, so the scheduler stops placing pods here first) or delete pods on this node",
		e.Node, e.Block.Size, e.Block, waited, ipam.MinBlockSize, ipam.MaxBlockSize)
}

// Store is the allocator over one data directory. It holds no state in memory
// between calls: many plugin processes share the directory.
type Store struct {
	dir string
	// beforeRename, when set, runs after the new state is written and synced to
	// the temp file and before it replaces the old one (tests crash here).
	beforeRename func()
}

// New returns a Store over dir (created on first use).
func New(dir string) *Store { return &Store{dir: dir} }

// Dir is the data directory.
func (s *Store) Dir() string { return s.dir }

// Allocate returns the address att already holds, or reserves the next free
// address of block for it. created says whether this call made the
// reservation (a rollback must release only what it created).
func (s *Store) Allocate(ctx context.Context, node string, block ipam.Block, att Attachment) (ip netip.Addr, created bool, err error) {
	err = s.update(ctx, func(st *state) (bool, error) {
		for _, a := range st.Allocations {
			if a.Attachment == att {
				ip = a.IP
				return false, nil
			}
		}
		used := make(map[netip.Addr]bool, len(st.Allocations))
		for _, a := range st.Allocations {
			used[a.IP] = true
		}
		start := 0
		if off := block.Offset(st.Last); off >= 0 {
			start = off + 1
		}
		for i := range block.Size {
			cand := block.Nth((start + i) % block.Size)
			if !used[cand] {
				ip, created = cand, true
				st.Last = cand
				st.Allocations = append(st.Allocations, Allocation{IP: cand, Attachment: att})
				return true, nil
			}
		}
		return false, &ExhaustedError{Node: node, Block: block}
	})
	if err != nil {
		return netip.Addr{}, false, err
	}
	return ip, created, nil
}

// Get returns the address held by att, if any.
func (s *Store) Get(ctx context.Context, att Attachment) (netip.Addr, bool, error) {
	var ip netip.Addr
	err := s.update(ctx, func(st *state) (bool, error) {
		for _, a := range st.Allocations {
			if a.Attachment == att {
				ip = a.IP
			}
		}
		return false, nil
	})
	return ip, ip.IsValid(), err
}

// Release frees the address held by att. Releasing an attachment that holds
// nothing is not an error (DEL is idempotent); found says whether it held one.
func (s *Store) Release(ctx context.Context, att Attachment) (ip netip.Addr, found bool, err error) {
	err = s.update(ctx, func(st *state) (bool, error) {
		i := slices.IndexFunc(st.Allocations, func(a Allocation) bool { return a.Attachment == att })
		if i < 0 {
			return false, nil
		}
		ip, found = st.Allocations[i].IP, true
		st.Allocations = slices.Delete(st.Allocations, i, i+1)
		return true, nil
	})
	return ip, found, err
}

// GC releases every allocation whose attachment is not in valid and returns
// what it released.
func (s *Store) GC(ctx context.Context, valid []Attachment) ([]Allocation, error) {
	var released []Allocation
	err := s.update(ctx, func(st *state) (bool, error) {
		keep := st.Allocations[:0]
		for _, a := range st.Allocations {
			if slices.Contains(valid, a.Attachment) {
				keep = append(keep, a)
			} else {
				released = append(released, a)
			}
		}
		st.Allocations = keep
		return len(released) > 0, nil
	})
	return released, err
}

// List returns every allocation, ordered by address.
func (s *Store) List(ctx context.Context) ([]Allocation, error) {
	var out []Allocation
	err := s.update(ctx, func(st *state) (bool, error) {
		out = slices.Clone(st.Allocations)
		return false, nil
	})
	slices.SortFunc(out, func(a, b Allocation) int { return a.IP.Compare(b.IP) })
	return out, err
}

// CheckWritable takes and drops the lock, proving the directory is usable (for CNI STATUS).
func (s *Store) CheckWritable(ctx context.Context) error {
	return s.update(ctx, func(*state) (bool, error) { return false, nil })
}

// update runs fn on the current state under the lock and, when fn reports a
// change, writes the result atomically before releasing the lock.
func (s *Store) update(ctx context.Context, fn func(*state) (bool, error)) error {
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return fmt.Errorf("create IPAM data dir %s: %w", s.dir, err)
	}
	unlock, err := s.lock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	s.removeStaleTemps()

	st, err := s.read()
	if err != nil {
		return err
	}
	changed, err := fn(st)
	if err != nil || !changed {
		return err
	}
	return s.write(st)
}

// lock takes the exclusive flock. The wait blocks in the kernel, which wakes a
// waiter as soon as the lock is free: polling instead left a hundred plugin
// processes of a burst sleeping and waking in turn while the holder waited for
// CPU, and ADDs and DELs ran out of their 30 s (TestConcurrentAddsNeverShareAnAddress).
// If ctx ends first the wait is abandoned: the lock, should it still come, is
// dropped at once.
func (s *Store) lock(ctx context.Context) (func(), error) {
	path := filepath.Join(s.dir, lockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open IPAM lock %s: %w", path, err)
	}
	got := make(chan error, 1)
	go func() {
		for {
			err := unix.Flock(int(f.Fd()), unix.LOCK_EX)
			if !errors.Is(err, unix.EINTR) {
				got <- err
				return
			}
		}
	}()
	select {
	case err := <-got:
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("flock IPAM lock %s: %w", path, err)
		}
		return func() { f.Close() }, nil // closing the only descriptor drops the flock
	case <-ctx.Done():
		go func() { <-got; f.Close() }()
		return nil, fmt.Errorf("wait for IPAM lock %s (held by another flatnet process): %w", path, ctx.Err())
	}
}

func (s *Store) read() (*state, error) {
	path := filepath.Join(s.dir, stateFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return &state{Version: 1}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read IPAM state %s: %w", path, err)
	}
	st := &state{}
	if err := json.Unmarshal(b, st); err != nil {
		// Never start from empty here: that would hand out addresses pods still use.
		return nil, fmt.Errorf("parse IPAM state %s: %w (the file is only ever replaced atomically, so this is outside damage; move it aside and let CNI GC and DEL rebuild the truth)", path, err)
	}
	if st.Version != 1 {
		return nil, fmt.Errorf("IPAM state %s has version %d; this plugin reads version 1", path, st.Version)
	}
	return st, nil
}

func (s *Store) write(st *state) error {
	b, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("encode IPAM state: %w", err)
	}
	tmp, err := os.CreateTemp(s.dir, tempPrefix)
	if err != nil {
		return fmt.Errorf("create IPAM temp state in %s: %w", s.dir, err)
	}
	defer os.Remove(tmp.Name()) // no-op after a successful rename
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("write IPAM temp state %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("fsync IPAM temp state %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("close IPAM temp state %s: %w", tmp.Name(), err)
	}
	if s.beforeRename != nil {
		s.beforeRename()
	}
	path := filepath.Join(s.dir, stateFile)
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("replace IPAM state %s: %w", path, err)
	}
	// The directory is not fsynced: the data is (the file a rename exposes is
	// whole), and a power loss that forgets the rename leaves the previous
	// state, whose pods died with the node anyway (a lost release is freed by
	// GC). Each fsync is held under the lock every ADD of a burst waits for.
	return nil
}

// removeStaleTemps deletes temp files of writers that died before renaming.
// Only called with the lock held, so no live writer owns one.
func (s *Store) removeStaleTemps() {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), tempPrefix) {
			_ = os.Remove(filepath.Join(s.dir, e.Name()))
		}
	}
}
