// Package mapwatch records the instant each kind node's agent puts a new policy
// into force for an endpoint: it polls, from the machine running kind, the
// agents' pinned datapath maps through each node container's root
// (/proc/<pid>/root/sys/fs/bpf/flatnet), as root. An agent replaces an
// endpoint's policy by swapping a freshly filled inner map into fn_policy, so
// the inner map's ID under the endpoint's interface index changes exactly when
// the new policy is in force. The enforcement benchmark uses it to split the
// apply -> enforced latency into the API call, the agents' share and the
// probe's.
//
// The layouts read are dataplane/bpf/c's: fn_endpoints maps an interface index
// (u32) to struct endpoint_info (address first, in network byte order), fn_policy
// an interface index to the endpoint's policy map. This package reads them
// without importing the dataplane (the suites judge it from outside).
package mapwatch

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
)

// PinDir is where the agent pins its maps inside a node.
const PinDir = "/sys/fs/bpf/flatnet"

// Target is one endpoint to watch: a pod's address on a kind node (the node's
// container name, as kind names nodes).
type Target struct {
	Node string
	IP   netip.Addr
}

// Swap is one change of an endpoint's policy map: At is when the poll saw it.
type Swap struct {
	At    time.Time
	MapID uint32
}

type watched struct {
	target  Target
	ifindex uint32
	policy  *ebpf.Map
	last    uint32
	swaps   []Swap
	pollErr error
}

// Watcher polls the targets' policy maps every interval until Stop.
type Watcher struct {
	mu     sync.Mutex
	eps    []*watched
	maps   []*ebpf.Map
	cancel context.CancelFunc
	done   chan struct{}
}

// Start opens each target's node maps, finds the target's interface index by
// its address and polls until Stop. It fails, before polling, naming the node
// or address it could not resolve (not root, not a kind node on this machine,
// no agent datapath, no endpoint with that address).
func Start(ctx context.Context, targets []Target, interval time.Duration) (*Watcher, error) {
	return start(ctx, targets, interval, kindNodeDir)
}

// kindNodeDir is the agent's pin directory of a kind node, seen from the
// machine running it.
func kindNodeDir(ctx context.Context, node string) (string, error) {
	out, err := exec.CommandContext(ctx, "docker", "inspect", "-f", "{{.State.Pid}}", node).Output()
	if err != nil {
		return "", fmt.Errorf("finding kind node %s's process (docker inspect): %w", node, err)
	}
	return filepath.Join("/proc", strings.TrimSpace(string(out)), "root", PinDir), nil
}

func start(ctx context.Context, targets []Target, interval time.Duration, dirOf func(context.Context, string) (string, error)) (*Watcher, error) {
	w := &Watcher{done: make(chan struct{})}
	byNode := map[string][2]*ebpf.Map{}
	for _, t := range targets {
		m, ok := byNode[t.Node]
		if !ok {
			dir, err := dirOf(ctx, t.Node)
			if err != nil {
				w.closeMaps()
				return nil, err
			}
			eps, pol, err := openDir(dir)
			if err != nil {
				w.closeMaps()
				return nil, fmt.Errorf("node %s: %w", t.Node, err)
			}
			w.maps = append(w.maps, eps, pol)
			m = [2]*ebpf.Map{eps, pol}
			byNode[t.Node] = m
		}
		ifindex, err := ifindexOf(m[0], t.IP)
		if err != nil {
			w.closeMaps()
			return nil, fmt.Errorf("node %s: %w", t.Node, err)
		}
		ep := &watched{target: t, ifindex: ifindex, policy: m[1]}
		if ep.last, err = ep.read(); err != nil {
			w.closeMaps()
			return nil, fmt.Errorf("node %s, pod %s: %w", t.Node, t.IP, err)
		}
		w.eps = append(w.eps, ep)
	}
	ctx, w.cancel = context.WithCancel(ctx)
	go w.poll(ctx, interval)
	return w, nil
}

// openDir opens the pinned fn_endpoints and fn_policy in dir, read-only.
func openDir(dir string) (eps, pol *ebpf.Map, err error) {
	ro := &ebpf.LoadPinOptions{ReadOnly: true}
	if eps, err = ebpf.LoadPinnedMap(filepath.Join(dir, "fn_endpoints"), ro); err != nil {
		return nil, nil, fmt.Errorf("opening the agent's pinned maps in %s (run as root on the machine running kind): %w", dir, err)
	}
	if pol, err = ebpf.LoadPinnedMap(filepath.Join(dir, "fn_policy"), ro); err != nil {
		eps.Close()
		return nil, nil, fmt.Errorf("opening the agent's pinned maps in %s: %w", dir, err)
	}
	return eps, pol, nil
}

// ifindexOf finds the endpoint with address ip in fn_endpoints.
func ifindexOf(eps *ebpf.Map, ip netip.Addr) (uint32, error) {
	if eps.ValueSize() < 4 {
		return 0, fmt.Errorf("fn_endpoints has %d-byte values: not the layout this package reads", eps.ValueSize())
	}
	want := ip.As4()
	var key uint32
	val := make([]byte, eps.ValueSize())
	it := eps.Iterate()
	for it.Next(&key, &val) {
		if [4]byte(val[:4]) == want {
			return key, nil
		}
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("reading fn_endpoints: %w", err)
	}
	return 0, fmt.Errorf("no endpoint with address %s in fn_endpoints", ip)
}

func (ep *watched) read() (uint32, error) {
	var id uint32
	if err := ep.policy.Lookup(ep.ifindex, &id); err != nil {
		return 0, fmt.Errorf("reading fn_policy[%d]: %w", ep.ifindex, err)
	}
	return id, nil
}

func (w *Watcher) poll(ctx context.Context, interval time.Duration) {
	defer close(w.done)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, ep := range w.eps {
			id, err := ep.read()
			now := time.Now()
			w.mu.Lock()
			switch {
			case err != nil:
				ep.pollErr = err
			case id != ep.last:
				ep.last = id
				ep.swaps = append(ep.swaps, Swap{At: now, MapID: id})
			}
			w.mu.Unlock()
		}
	}
}

// FirstSwap is the first swap of t's policy map at or after since.
func (w *Watcher) FirstSwap(t Target, since time.Time) (Swap, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, ep := range w.eps {
		if ep.target != t {
			continue
		}
		for _, s := range ep.swaps {
			if !s.At.Before(since) {
				return s, true
			}
		}
	}
	return Swap{}, false
}

// Stop ends the polling, closes the maps and returns the first read that failed.
func (w *Watcher) Stop() error {
	w.cancel()
	<-w.done
	w.closeMaps()
	var errs []error
	for _, ep := range w.eps {
		if ep.pollErr != nil {
			errs = append(errs, fmt.Errorf("node %s, pod %s: %w", ep.target.Node, ep.target.IP, ep.pollErr))
		}
	}
	return errors.Join(errs...)
}

func (w *Watcher) closeMaps() {
	for _, m := range w.maps {
		m.Close()
	}
}
