package podnet

import (
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
)

// The warm pool: host interface indexes the agent prepares ahead of any pod (the
// datapath's per-interface maps installed for them), so that an ADD whose host
// veth is created with one of them waits for none of the kernel's grace periods.
// An index is free while the file <pool dir>/<index> exists. An ADD claims it by
// removing that file: unlink is atomic, so of two ADDs racing for one index
// exactly one succeeds and the other tries the next; no lock and no round trip to
// the agent (the ADD's one round trip stays the endpoint PUT at its end). The
// kernel gives a new link the index its creator asks for, when no link of the
// netns has it (EEXIST otherwise): the agent takes indexes from PoolIndexBase up,
// a range the kernel's own counter, which hands out indexes from 1, never reaches.
const (
	PoolIndexBase  = 1 << 30
	PoolIndexRange = 1 << 20
)

// ErrPoolEmpty is ClaimPoolIndex's answer when no index is free.
var ErrPoolEmpty = errors.New("warm pool: no free interface index")

// PoolDir is the pool directory under the plugin's data directory: the agent
// publishes there, the plugin claims there.
func PoolDir(dataDir string) string { return filepath.Join(dataDir, "pool") }

// IsPoolIndex reports whether ifindex is in the pool's range.
func IsPoolIndex(ifindex int) bool {
	return ifindex >= PoolIndexBase && ifindex < PoolIndexBase+PoolIndexRange
}

// poolIndexOf parses a pool file's name.
func poolIndexOf(name string) (int, bool) {
	i, err := strconv.Atoi(name)
	return i, err == nil && IsPoolIndex(i) && strconv.Itoa(i) == name
}

// PublishPoolIndex makes ifindex claimable: its file appears atomically (written
// aside, renamed into place), so a claimer never sees an index half-published.
func PublishPoolIndex(poolDir string, ifindex int) error {
	name := strconv.Itoa(ifindex)
	tmp := filepath.Join(poolDir, "."+name)
	if err := os.WriteFile(tmp, nil, 0o600); err != nil {
		return fmt.Errorf("publish pool index %d: %w", ifindex, err)
	}
	if err := os.Rename(tmp, filepath.Join(poolDir, name)); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("publish pool index %d: %w", ifindex, err)
	}
	return nil
}

// FreePoolIndexes lists the published, unclaimed indexes; half-published ones
// (a publish cut short) are in aside.
func FreePoolIndexes(poolDir string) (free, aside []int, err error) {
	ents, err := os.ReadDir(poolDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("list the warm pool %s: %w", poolDir, err)
	}
	for _, e := range ents {
		if i, ok := poolIndexOf(e.Name()); ok {
			free = append(free, i)
		} else if len(e.Name()) > 1 && e.Name()[0] == '.' {
			if i, ok := poolIndexOf(e.Name()[1:]); ok {
				aside = append(aside, i)
			}
		}
	}
	return free, aside, nil
}

// TakePoolIndex removes ifindex's file, the claim (or the agent taking a free
// index back); false if another took it first.
func TakePoolIndex(poolDir string, ifindex int) (bool, error) {
	err := os.Remove(filepath.Join(poolDir, strconv.Itoa(ifindex)))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("claim pool index %d: %w", ifindex, err)
	}
	return true, nil
}

// ClaimPoolIndex claims one free index for the attachment and returns it, or
// ErrPoolEmpty. Concurrent ADDs start at different places (a hash of their
// container ID) so that they seldom race for the same file.
func ClaimPoolIndex(poolDir, containerID string) (int, error) {
	free, _, err := FreePoolIndexes(poolDir)
	if err != nil {
		return 0, err
	}
	if len(free) == 0 {
		return 0, ErrPoolEmpty
	}
	h := fnv.New32a()
	h.Write([]byte(containerID))
	start := int(h.Sum32() % uint32(len(free)))
	for i := range free {
		ifindex := free[(start+i)%len(free)]
		ok, err := TakePoolIndex(poolDir, ifindex)
		if err != nil {
			return 0, err
		}
		if ok {
			return ifindex, nil
		}
	}
	return 0, ErrPoolEmpty
}
