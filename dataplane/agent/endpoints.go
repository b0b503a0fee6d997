package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flatnet/flatnet/dataplane/endpointapi"
	"github.com/flatnet/flatnet/dataplane/ipam/nodealloc"
)

// EndpointHook is what the agent calls for each pod endpoint of the node, so that
// another part of the node (the policy enforcer) can act on it; the agent keeps
// the endpoint records and the hook keeps whatever it installs.
//
// The contract:
//   - Attach runs while the agent answers the CNI plugin's ADD (PUT), before the
//     plugin returns to the runtime, so what it installs is in place before the
//     pod's first packet. An error refuses the pod: the ADD fails and the agent
//     records nothing new. Attach may block until ctx ends (the enforcer waits
//     for its first full sync).
//   - Detach runs for the plugin's DEL and for endpoints the agent collects or
//     replaces. ep may carry only ContainerID when the agent never knew the
//     endpoint (DEL after a lost record): that must succeed. An error fails the
//     DEL and the record is kept, so the runtime's retry calls Detach again.
//   - Both must be idempotent: Attach runs again for every known endpoint when the
//     agent restarts (its veth still there), and the plugin retries a failed PUT.
//   - Before attaching an endpoint, the agent detaches any other endpoint it has
//     recorded with the same address (a stale one whose DEL never arrived).
//   - Calls may come from several goroutines at once (the endpoint API and the
//     restart resync): implementations must be safe for concurrent use.
type EndpointHook interface {
	// Attach installs what the endpoint needs (the enforcer: programs and maps).
	Attach(ctx context.Context, ep endpointapi.Endpoint) error
	// Detach removes it.
	Detach(ctx context.Context, ep endpointapi.Endpoint) error
}

// NoPolicy is the default EndpointHook: pods get networking, nothing is enforced.
type NoPolicy struct{}

// Attach does nothing.
func (NoPolicy) Attach(context.Context, endpointapi.Endpoint) error { return nil }

// Detach does nothing.
func (NoPolicy) Detach(context.Context, endpointapi.Endpoint) error { return nil }

// Record is an endpoint as the agent keeps it on disk.
type Record struct {
	endpointapi.Endpoint
	Created time.Time `json:"created"`
}

// Endpoints is the node's endpoint registry: it implements the endpoint API
// the plugin calls, keeps one file per endpoint under dir (so an agent
// restart knows every pod it attached) and calls its EndpointHook.
type Endpoints struct {
	dir     string
	hook    EndpointHook
	metrics *Metrics
	pool    *Pool // counts claims and misses; nil: no warm pool
	// announce, once set (SetAnnounce), is given the address of every endpoint
	// put: the agent announces it on the uplink (the plugin does not, see
	// podnet.Setup).
	announce atomic.Pointer[func(netip.Addr)]

	// OnChange, when set, runs after every successful Put or Delete (the
	// agent refreshes the block's status).
	OnChange func()

	// ops orders the changes: a Put checks for and replaces a stale endpoint of
	// its address under it. A Put's attach and a Delete's detach run outside
	// it, so the attaches of a burst of ADDs, and the detaches of a burst of
	// DELs, meet in the datapath's queue and are done together (one write, one
	// grace period: enforce's group commit); no change touches an endpoint or
	// an address whose attach or detach is under way (busy; inFlight signals
	// the end of one).
	ops      sync.Mutex
	inFlight *sync.Cond            // on ops
	busy     map[string]netip.Addr // container ID -> address, attaches and detaches under way

	mu   sync.Mutex
	byID map[string]Record
}

// containerIDRE bounds what may become a file name.
var containerIDRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)

// NewEndpoints loads the records under dir.
func NewEndpoints(dir string, hook EndpointHook, m *Metrics) (*Endpoints, error) {
	if hook == nil {
		hook = NoPolicy{}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create endpoint dir %s: %w", dir, err)
	}
	e := &Endpoints{dir: dir, hook: hook, metrics: m, byID: map[string]Record{}, busy: map[string]netip.Addr{}}
	e.inFlight = sync.NewCond(&e.ops)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read endpoint dir %s: %w", dir, err)
	}
	for _, ent := range entries {
		if filepath.Ext(ent.Name()) != ".json" {
			_ = os.Remove(filepath.Join(dir, ent.Name())) // temp files of a killed writer
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, ent.Name()))
		if err != nil {
			return nil, fmt.Errorf("read endpoint record %s: %w", ent.Name(), err)
		}
		var r Record
		if err := json.Unmarshal(b, &r); err != nil || r.Validate() != nil {
			// Renamed into place, so this is outside damage or a machine
			// crash (which took the pod's veth too): drop it; the leak
			// reconciler frees its address if no pod has it.
			_ = os.Remove(filepath.Join(dir, ent.Name()))
			continue
		}
		e.byID[r.ContainerID] = r
	}
	m.endpoints.Set(float64(len(e.byID)))
	return e, nil
}

// Collect forgets every endpoint of snapshot (an earlier List) whose container
// holds no address any more and whose host veth is gone: its DEL or the
// runtime's GC tore it down without reaching the agent. A record is written
// only after its address was allocated, so taking the snapshot before reading
// the allocations never collects an endpoint whose ADD is under way; an
// endpoint whose veth still exists stays enforced whatever the allocator's
// file says.
func (e *Endpoints) Collect(ctx context.Context, snapshot []Record, allocs []nodealloc.Allocation, linkExists func(name string) bool) ([]string, error) {
	held := make(map[string]bool, len(allocs))
	for _, a := range allocs {
		held[a.ContainerID] = true
	}
	var gone []string
	var errs []error
	for _, r := range snapshot {
		if held[r.ContainerID] || linkExists(r.HostIfName) {
			continue
		}
		if err := e.DeleteEndpoint(ctx, r.ContainerID); err != nil {
			errs = append(errs, err)
			continue
		}
		gone = append(gone, r.ContainerID)
	}
	return gone, errors.Join(errs...)
}

// Resync calls Attach for every known endpoint whose host veth still exists
// (after an agent restart) and drops the records of the others.
func (e *Endpoints) Resync(ctx context.Context, linkExists func(name string) bool) error {
	var errs []error
	for _, r := range e.List() {
		if !linkExists(r.HostIfName) {
			if err := e.DeleteEndpoint(ctx, r.ContainerID); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		if err := e.hook.Attach(ctx, r.Endpoint); err != nil {
			errs = append(errs, fmt.Errorf("re-attach endpoint %s: %w", r.ContainerID, err))
		}
	}
	return errors.Join(errs...)
}

// PutEndpoint implements endpointapi.Handler.
func (e *Endpoints) PutEndpoint(ctx context.Context, ep endpointapi.Endpoint) error {
	if !containerIDRE.MatchString(ep.ContainerID) {
		return fmt.Errorf("%w: containerID %q: not a container ID", endpointapi.ErrInvalidEndpoint, ep.ContainerID)
	}
	t0 := time.Now()
	e.ops.Lock()
	for e.inFlightLocked(ep.ContainerID, ep.IP) {
		e.inFlight.Wait()
	}
	t1 := time.Now()
	e.metrics.register.WithLabelValues("queued").Observe(t1.Sub(t0).Seconds())
	// The allocator hands an address out again only after its holder's
	// allocation was released, so another endpoint still recorded with it lost
	// its DEL (kubelet or runtime crash, agent down): it is detached and
	// forgotten before ep takes the address, never left to answer for it.
	for _, stale := range e.List() {
		if stale.ContainerID != ep.ContainerID && stale.IP == ep.IP {
			if err := e.forget(ctx, stale.ContainerID); err != nil {
				e.ops.Unlock()
				return fmt.Errorf("replace stale endpoint %s holding %s: %w", stale.ContainerID, ep.IP, err)
			}
		}
	}
	defer e.busyLocked(ep.ContainerID, ep.IP)()
	e.pool.ObserveAdd(ep.HostIfIndex)
	if err := e.hook.Attach(ctx, ep); err != nil {
		return fmt.Errorf("attach datapath to %s: %w", ep.HostIfName, err)
	}
	t2 := time.Now()
	e.metrics.register.WithLabelValues("attach").Observe(t2.Sub(t1).Seconds())
	defer func() { e.metrics.register.WithLabelValues("record").Observe(time.Since(t2).Seconds()) }()
	r := Record{Endpoint: ep, Created: time.Now().UTC()}
	e.mu.Lock()
	defer e.mu.Unlock()
	if old, ok := e.byID[ep.ContainerID]; ok {
		r.Created = old.Created
	}
	if err := e.write(r); err != nil {
		return err
	}
	e.byID[ep.ContainerID] = r
	e.metrics.endpoints.Set(float64(len(e.byID)))
	e.metrics.allocations.Inc()
	e.changed()
	if f := e.announce.Load(); f != nil {
		(*f)(ep.IP)
	}
	return nil
}

// SetAnnounce has every endpoint put from now on announced with f, which must
// not block (the PUT answers an ADD).
func (e *Endpoints) SetAnnounce(f func(netip.Addr)) { e.announce.Store(&f) }

// DeleteEndpoint implements endpointapi.Handler; unknown IDs are fine.
func (e *Endpoints) DeleteEndpoint(ctx context.Context, containerID string) error {
	if !containerIDRE.MatchString(containerID) {
		return fmt.Errorf("%w: containerID %q: not a container ID", endpointapi.ErrInvalidEndpoint, containerID)
	}
	e.ops.Lock()
	for e.inFlightLocked(containerID, netip.Addr{}) {
		e.inFlight.Wait()
	}
	e.mu.Lock()
	r := e.byID[containerID]
	e.mu.Unlock()
	defer e.busyLocked(containerID, r.IP)()
	return e.forget(ctx, containerID)
}

// busyLocked marks an attach or a detach of the container and address under
// way and drops e.ops; the func it returns ends it. Call with e.ops held.
func (e *Endpoints) busyLocked(containerID string, addr netip.Addr) func() {
	e.busy[containerID] = addr
	e.ops.Unlock()
	return func() {
		e.ops.Lock()
		delete(e.busy, containerID)
		e.inFlight.Broadcast()
		e.ops.Unlock()
	}
}

// inFlightLocked reports whether an attach or a detach under way holds the
// container or the address (invalid: none). Call with e.ops held.
func (e *Endpoints) inFlightLocked(containerID string, addr netip.Addr) bool {
	if _, ok := e.busy[containerID]; ok {
		return true
	}
	if addr.IsValid() {
		for _, a := range e.busy {
			if a == addr {
				return true
			}
		}
	}
	return false
}

// forget detaches and forgets an endpoint; the caller holds e.ops, or has
// marked the endpoint busy.
func (e *Endpoints) forget(ctx context.Context, containerID string) error {
	e.mu.Lock()
	r, ok := e.byID[containerID]
	e.mu.Unlock()
	if !ok {
		r.ContainerID = containerID
	}
	if err := e.hook.Detach(ctx, r.Endpoint); err != nil {
		return fmt.Errorf("detach datapath from %s: %w", containerID, err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := os.Remove(e.path(containerID)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove endpoint record %s: %w", containerID, err)
	}
	delete(e.byID, containerID)
	e.metrics.endpoints.Set(float64(len(e.byID)))
	e.changed()
	return nil
}

func (e *Endpoints) changed() {
	if e.OnChange != nil {
		e.OnChange()
	}
}

// List returns every known endpoint.
func (e *Endpoints) List() []Record {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]Record, 0, len(e.byID))
	for _, r := range e.byID {
		out = append(out, r)
	}
	return out
}

// Get returns the endpoint of a container.
func (e *Endpoints) Get(containerID string) (Record, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	r, ok := e.byID[containerID]
	return r, ok
}

func (e *Endpoints) path(id string) string { return filepath.Join(e.dir, id+".json") }

// write replaces a record atomically (temp file, fsync, rename).
func (e *Endpoints) write(r Record) error {
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode endpoint %s: %w", r.ContainerID, err)
	}
	// Not fsynced: it is written inside every ADD, behind the other ADDs of a
	// burst, and only a machine crash could lose it, which takes the pod's
	// veth with it (Resync drops records without one). Renamed into place, so
	// an agent killed mid-write leaves the old record or the new one.
	if err := replaceFile(e.path(r.ContainerID), b, 0o600, false); err != nil {
		return fmt.Errorf("store endpoint record %s: %w", r.ContainerID, err)
	}
	return nil
}
