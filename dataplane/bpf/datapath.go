package bpf

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/flatnet/flatnet/dataplane/compile"
	"github.com/flatnet/flatnet/dataplane/identity"
	"github.com/flatnet/flatnet/dataplane/ipv4"
	"github.com/flatnet/flatnet/dataplane/policy"
)

// DefaultPinDir is where the agent pins the datapath.
const DefaultPinDir = "/sys/fs/bpf/flatnet"

// Direction codes of the C side (DIR_INGRESS / DIR_EGRESS).
const (
	dirIngress = 0
	dirEgress  = 1
)

// Datapath is the loaded datapath: maps pinned in PinDir, programs attached to
// endpoints through tcx links pinned in PinDir/links. Methods are safe for concurrent
// use.
type Datapath struct {
	pinDir string
	objs   datapathObjects
	inner  *ebpf.MapSpec // an endpoint's policy map
	ctEst  *ebpf.MapSpec // an endpoint's table of established connections, sized by Options

	mu       sync.Mutex
	up       *upgrade // pinned maps of another layout being taken over (upgrade.go); nil: none
	upgraded Upgrade  // what a finished upgrade did

	// The IP cache is two layers over one map: identities the compiler gives pod and
	// node addresses, and the Service flag of Service addresses (ClusterIPs,
	// externalIPs, LoadBalancer IPs), which may also be a node's or pod's.
	ipMu     sync.Mutex
	ipIDs    map[ipv4.Prefix]identity.ID
	services map[ipv4.Prefix]bool
}

// Endpoint is what the datapath needs to know of a local pod's attachment.
type Endpoint struct {
	IfIndex  int        // host-side veth
	IP       netip.Addr // pod IPv4
	Identity identity.ID
	// MAC is the pod interface's: with it, traffic from other local pods is handed
	// straight to the pod (bpf_redirect_peer); without it, through its host veth.
	MAC net.HardwareAddr
}

// Load is LoadWith with the default Options.
func Load(ctx context.Context, pinDir string) (*Datapath, error) {
	return LoadWith(ctx, pinDir, Options{})
}

// LoadWith loads the programs, creating the maps in pinDir or reusing the ones a
// previous agent pinned there, and moves every pinned endpoint link to the freshly
// loaded programs in one atomic step per link: an agent restart or upgrade never
// leaves an endpoint without its programs or with empty maps. When pinned maps have
// another layout (an upgrade), the previous programs keep them and keep enforcing,
// and each endpoint moves to the new programs when AttachEndpoint has written its
// part of the new maps (upgrade.go; Upgrade reports it).
func LoadWith(ctx context.Context, pinDir string, opts Options) (*Datapath, error) {
	ctShared, ctEst, err := opts.sizes()
	if err != nil {
		return nil, err
	}
	if err := checkBPFFS(filepath.Dir(pinDir)); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(pinDir, "links"), 0o700); err != nil {
		return nil, fmt.Errorf("creating pin directory: %w", err)
	}
	spec, err := loadDatapath()
	if err != nil {
		return nil, fmt.Errorf("loading datapath spec: %w", err)
	}
	d := &Datapath{pinDir: pinDir, inner: spec.Maps[datapathMapFnPolicyProto].Copy(),
		ipIDs: map[ipv4.Prefix]identity.ID{}, services: map[ipv4.Prefix]bool{}}
	d.inner.Name = "fn_ep_policy"
	spec.Maps[datapathMapFnCt].MaxEntries = ctShared
	d.ctEst = spec.Maps[datapathMapFnCtEstProto].Copy()
	d.ctEst.Name = "fn_ep_ct_est"
	d.ctEst.MaxEntries = ctEst
	if d.up, err = prepareUpgrade(spec, pinDir); err != nil {
		return nil, err
	}
	fail := func(err error) (*Datapath, error) {
		d.objs.Close()
		if d.up != nil {
			for _, m := range d.up.retired {
				m.Close()
			}
		}
		return nil, err
	}
	err = spec.LoadAndAssign(&d.objs, &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: pinDir}})
	if err != nil {
		return fail(fmt.Errorf("loading datapath into the kernel: %w", err))
	}
	// Pinned, the slot outlives this agent; the next one puts its own program there.
	if err := d.objs.FnCalls.Put(uint32(0), d.objs.DeliverToPod); err != nil {
		return fail(fmt.Errorf("installing deliver_to_pod for tail calls: %w", err))
	}
	// Endpoints of a version without tables of established connections get theirs.
	eps, err := d.Endpoints(ctx)
	if err != nil {
		return fail(err)
	}
	for ifindex := range eps {
		if err := d.ensureEstTable(ifindex); err != nil {
			return fail(err)
		}
	}
	if err := d.resumeLinks(ctx); err != nil {
		return fail(err)
	}
	if d.up != nil {
		for ifindex := range d.up.pending {
			if err := d.ensureEstTable(ifindex); err != nil {
				return fail(err)
			}
		}
		if err := d.convert(); err != nil {
			return fail(err)
		}
	} else if _, _, err := d.spreadCT(d.objs.FnCt, func(*datapathCtKey) bool { return true }, true); err != nil {
		// Established connections a version without per-endpoint tables tracked.
		return fail(fmt.Errorf("moving established connections into their endpoints' tables: %w", err))
	}
	if err := d.finishUpgrade(); err != nil {
		return fail(err)
	}
	return d, nil
}

// EnsureBPFFS mounts a bpffs on dir unless one is there. For pins to outlive the agent
// the mount must be the node's: give the agent the host's /sys/fs/bpf (hostPath, with
// Bidirectional mount propagation if the agent is the one mounting it).
func EnsureBPFFS(dir string) error {
	if checkBPFFS(dir) == nil {
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("creating %s for bpffs: %w", dir, err)
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mounting bpffs on %s: %w", dir, err)
	}
	return nil
}

func checkBPFFS(dir string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("checking bpffs at %s: %w", dir, err)
	}
	if st.Type != unix.BPF_FS_MAGIC {
		return fmt.Errorf("%s is not a bpffs mount: mount it with `mount -t bpf bpf %s`", dir, dir)
	}
	return nil
}

// Close releases this process's handles; pinned maps and links stay in the kernel,
// so endpoints keep their policy while no agent runs.
func (d *Datapath) Close() error {
	return d.objs.Close()
}

// PinDir is where the datapath is pinned.
func (d *Datapath) PinDir() string { return d.pinDir }

func (d *Datapath) linkPin(ifindex int, dir int) string {
	name := "ingress"
	if dir == dirEgress {
		name = "egress"
	}
	return filepath.Join(d.pinDir, "links", fmt.Sprintf("%d-%s", ifindex, name))
}

// resumeLinks points every pinned link at the programs just loaded. A link whose
// interface is gone (pod deleted while no agent ran) is unpinned.
func (d *Datapath) resumeLinks(ctx context.Context) error {
	entries, err := os.ReadDir(filepath.Join(d.pinDir, "links"))
	if err != nil {
		return fmt.Errorf("listing pinned links: %w", err)
	}
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return err
		}
		path := filepath.Join(d.pinDir, "links", e.Name())
		if e.Name() == filepath.Base(d.servicePin()) {
			continue // AttachServiceHook replaces it
		}
		ifs, side, ok := strings.Cut(e.Name(), "-")
		ifindex, convErr := strconv.Atoi(ifs)
		if !ok || convErr != nil || (side != "ingress" && side != "egress") {
			continue
		}
		l, err := link.LoadPinnedLink(path, nil)
		if err != nil {
			return fmt.Errorf("opening pinned link %s: %w", path, err)
		}
		info, err := l.Info()
		if err != nil || info.TCX() == nil || info.TCX().Ifindex != uint32(ifindex) {
			// Detached: its interface went away while no agent ran.
			_ = l.Unpin()
			l.Close()
			if side == "ingress" {
				if err := d.forget(ifindex); err != nil {
					return fmt.Errorf("forgetting the endpoint of vanished interface %d: %w", ifindex, err)
				}
			}
			continue
		}
		if d.up != nil && d.up.runsPrevious(l) {
			// An upgrade: the previous programs keep this endpoint until
			// AttachEndpoint has written it into the new maps.
			d.up.pending[ifindex] = true
			l.Close()
			continue
		}
		prog := d.objs.ToPod
		if side == "egress" {
			prog = d.objs.FromPod
		}
		err = l.Update(prog)
		l.Close()
		if err != nil {
			return fmt.Errorf("moving pinned link %s to the new program: %w", path, err)
		}
	}
	return nil
}

// AttachEndpoint makes an endpoint enforce pol: its identity and policy are written
// first, then the programs are attached to its host veth in both directions, so the
// first packet the pod sends is already under policy. Calling it again for an
// attached endpoint updates it in place.
func (d *Datapath) AttachEndpoint(ctx context.Context, ep Endpoint, pol *compile.EndpointPolicy) error {
	if ep.IfIndex <= 0 || !ep.IP.Is4() {
		return fmt.Errorf("attaching endpoint: need an interface index and an IPv4 address, got %d and %v", ep.IfIndex, ep.IP)
	}
	if pol == nil {
		return fmt.Errorf("attaching endpoint %d: a policy is required (an empty one allows everything)", ep.IfIndex)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.syncPolicy(ep.IfIndex, pol); err != nil {
		return err
	}
	if err := d.ensureEstTable(ep.IfIndex); err != nil {
		return err
	}
	info := datapathEndpointInfo{Addr: addrBE(ep.IP), Identity: uint32(ep.Identity)}
	if err := d.objs.FnEndpoints.Put(uint32(ep.IfIndex), &info); err != nil {
		return fmt.Errorf("writing endpoint %d: %w", ep.IfIndex, err)
	}
	for _, dir := range []int{dirIngress, dirEgress} {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := d.attach(ep.IfIndex, dir); err != nil {
			return err
		}
	}
	if err := d.movedEndpoint(ep.IfIndex, addrBE(ep.IP)); err != nil {
		return err
	}
	// Last: other pods' traffic is delivered here directly from now on, and only
	// an endpoint whose programs judge it may receive it that way (to_pod runs on
	// the veth the packets are handed to).
	if err := d.objs.FnLocalIps.Put(addrBE(ep.IP), localEndpoint(ep)); err != nil {
		return fmt.Errorf("writing local address of endpoint %d: %w", ep.IfIndex, err)
	}
	return nil
}

// localEndpoint is ep's entry for direct delivery. The MACs are left zero (delivery
// through the host veth) unless both are known: the pod's, and its host veth's,
// read from the interface in the current netns (the node's).
func localEndpoint(ep Endpoint) *datapathLocalEp {
	le := &datapathLocalEp{Ifindex: uint32(ep.IfIndex)}
	if len(ep.MAC) != 6 {
		return le
	}
	l, err := netlink.LinkByIndex(ep.IfIndex)
	if err != nil || len(l.Attrs().HardwareAddr) != 6 {
		return le
	}
	copy(le.PodMac[:], ep.MAC)
	copy(le.HostMac[:], l.Attrs().HardwareAddr)
	return le
}

func (d *Datapath) attach(ifindex, dir int) error {
	prog, at := d.objs.ToPod, ebpf.AttachTCXEgress
	if dir == dirEgress {
		prog, at = d.objs.FromPod, ebpf.AttachTCXIngress
	}
	pin := d.linkPin(ifindex, dir)
	if l, err := link.LoadPinnedLink(pin, nil); err == nil {
		info, ierr := l.Info()
		if ierr == nil && info.TCX() != nil && info.TCX().Ifindex == uint32(ifindex) {
			err = l.Update(prog)
			l.Close()
			if err != nil {
				return fmt.Errorf("updating link %s: %w", pin, err)
			}
			return nil
		}
		// A stale pin of an interface that went away and whose index was reused.
		_ = l.Unpin()
		l.Close()
	}
	l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: prog, Attach: at})
	if err != nil {
		return fmt.Errorf("attaching %s to interface %d: %w", prog, ifindex, err)
	}
	defer l.Close()
	if err := l.Pin(pin); err != nil {
		return fmt.Errorf("pinning link of interface %d: %w", ifindex, err)
	}
	return nil
}

// DetachEndpoint removes the programs from an endpoint's veth and forgets it; an
// unknown endpoint is not an error.
func (d *Datapath) DetachEndpoint(ctx context.Context, ifindex int) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	for _, dir := range []int{dirIngress, dirEgress} {
		pin := d.linkPin(ifindex, dir)
		l, err := link.LoadPinnedLink(pin, nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("opening link %s: %w", pin, err))
			continue
		}
		if err := l.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("unpinning %s: %w", pin, err))
		}
		l.Close() // the last reference: the kernel detaches the program
	}
	if err := d.forget(ifindex); err != nil {
		errs = append(errs, err)
	}
	if d.up != nil {
		delete(d.up.pending, ifindex)
		if err := d.finishUpgrade(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// forget removes everything the maps hold for an interface index.
func (d *Datapath) forget(ifindex int) error {
	var errs []error
	key := uint32(ifindex)
	// First: no more traffic delivered directly to an interface being forgotten.
	var info datapathEndpointInfo
	if err := d.objs.FnEndpoints.Lookup(key, &info); err == nil {
		var owner datapathLocalEp
		if err := d.objs.FnLocalIps.Lookup(info.Addr, &owner); err == nil && owner.Ifindex == key {
			if err := d.objs.FnLocalIps.Delete(info.Addr); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				errs = append(errs, fmt.Errorf("deleting local address of endpoint %d: %w", ifindex, err))
			}
		}
	}
	if err := d.objs.FnEndpoints.Delete(key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		errs = append(errs, fmt.Errorf("deleting endpoint %d: %w", ifindex, err))
	}
	if err := d.objs.FnPolicy.Delete(key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		errs = append(errs, fmt.Errorf("deleting policy of endpoint %d: %w", ifindex, err))
	}
	// Counters and tracked connections of the interface index must not carry over to
	// the next pod that gets it.
	if err := deleteWhere(d.objs.FnCounters, func(k *datapathCounterKey) bool { return k.Ifindex == key }); err != nil {
		errs = append(errs, fmt.Errorf("deleting counters of endpoint %d: %w", ifindex, err))
	}
	if err := d.objs.FnCtEst.Delete(key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		errs = append(errs, fmt.Errorf("deleting the connection table of endpoint %d: %w", ifindex, err))
	}
	if err := deleteWhere(d.objs.FnCt, func(k *datapathCtKey) bool { return k.Ifindex == key }); err != nil {
		errs = append(errs, fmt.Errorf("deleting connections of endpoint %d: %w", ifindex, err))
	}
	return errors.Join(errs...)
}

// deleteWhere deletes the keys of m that match.
func deleteWhere[K any](m *ebpf.Map, match func(*K) bool) error {
	var victims []K
	var cur, next K
	var prev any // nil: start from the first key
	for {
		err := m.NextKey(prev, &next)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			break
		}
		if err != nil {
			return err
		}
		if match(&next) {
			victims = append(victims, next)
		}
		cur = next
		prev = &cur
	}
	for i := range victims {
		if err := m.Delete(&victims[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return err
		}
	}
	return nil
}

// SyncEndpointPolicy replaces an endpoint's policy atomically: a fresh map is filled
// and then swapped in, so no packet sees a mix of old and new entries.
func (d *Datapath) SyncEndpointPolicy(ctx context.Context, ifindex int, pol *compile.EndpointPolicy) error {
	if pol == nil {
		return fmt.Errorf("syncing policy of endpoint %d: nil policy", ifindex)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.syncPolicy(ifindex, pol)
}

func (d *Datapath) syncPolicy(ifindex int, pol *compile.EndpointPolicy) error {
	keys, vals := policyEntries(pol)
	if len(keys) > int(d.inner.MaxEntries) {
		return fmt.Errorf("endpoint %d: %w: %d entries, the map holds %d", ifindex, ErrPolicyTooLarge, len(keys), d.inner.MaxEntries)
	}
	// Size the map to the policy: the kernel allocates and zeroes a bucket per
	// possible entry, and at POLICY_MAX that alone took 10 ms per endpoint here,
	// paid on every policy change. Inner hash maps may differ in max_entries.
	spec := d.inner.Copy()
	spec.MaxEntries = innerMapSize(len(keys), d.inner.MaxEntries)
	m, err := ebpf.NewMap(spec)
	if err != nil {
		return fmt.Errorf("creating policy map of endpoint %d: %w", ifindex, err)
	}
	defer m.Close()
	if len(keys) > 0 {
		if _, err := m.BatchUpdate(keys, vals, nil); err != nil {
			// Fall back to one by one where batch updates are not supported.
			for i := range keys {
				if err := m.Put(&keys[i], &vals[i]); err != nil {
					return fmt.Errorf("filling policy map of endpoint %d: %w", ifindex, err)
				}
			}
		}
	}
	if err := d.objs.FnPolicy.Put(uint32(ifindex), m); err != nil {
		return fmt.Errorf("installing policy map of endpoint %d: %w", ifindex, err)
	}
	return nil
}

// innerMapSize is the capacity of a policy map for n entries: the next power of two
// of 2n (hash maps keep a bucket per entry; a half-full table keeps chains short),
// at least 64, at most limit.
func innerMapSize(n int, limit uint32) uint32 {
	size := uint32(64)
	for size < uint32(2*n) && size < limit {
		size <<= 1
	}
	return min(size, limit)
}

// policyMetaIdentity keys the per-direction meta entry (POLICY_META_IDENTITY).
const policyMetaIdentity = 0xffffffff

// policyEntries lays a compiled policy out as hash entries plus, per direction, a
// meta entry with the port prefix lengths to probe, whether the direction is
// enforced (not enforced: what no entry matches is allowed) and whether world remotes
// use the world-only CIDR key space.
func policyEntries(pol *compile.EndpointPolicy) ([]datapathPolicyKey, []datapathPolicyVal) {
	keys := make([]datapathPolicyKey, 0, len(pol.Entries)+2)
	vals := make([]datapathPolicyVal, 0, len(pol.Entries)+2)
	var lens [2]uint32
	var worldCIDR [2]bool
	for k, v := range pol.Entries {
		pk := policyKey(k)
		if pk.Proto != 0 {
			lens[pk.Dir] |= 1 << pk.Plen
		}
		if compile.IsWorldCIDR(k.Identity) {
			worldCIDR[pk.Dir] = true
		}
		keys = append(keys, pk)
		pv := datapathPolicyVal{RuleId: uint32(v.RuleID)}
		if v.Deny {
			pv.Deny = 1
		}
		vals = append(vals, pv)
	}
	for dir, enforced := range pol.Enforce {
		meta := datapathPolicyVal{Lens: lens[dir]}
		if !enforced {
			meta.DefaultAllow = 1
		}
		if worldCIDR[dir] {
			meta.WorldCidr = 1
		}
		keys = append(keys, datapathPolicyKey{Dir: uint8(dir), Identity: policyMetaIdentity})
		vals = append(vals, meta)
	}
	return keys, vals
}

func policyKey(k compile.Key) datapathPolicyKey {
	pk := datapathPolicyKey{Dir: dirIngress, Identity: uint32(k.Identity)}
	if k.Direction == policy.Egress {
		pk.Dir = dirEgress
	}
	if k.Protocol != policy.ProtoAny {
		pk.Proto = uint8(k.Protocol)
		pk.Plen = k.PortPrefixLen
		pk.Dport = htons(k.Port)
	}
	return pk
}

// ApplyError lists what Apply could not write; everything else was written. A
// failure is contained to what caused it: one endpoint's policy, one prefix.
type ApplyError struct {
	// Endpoints maps "namespace/name" to why its policy is not in its map. Each
	// such endpoint fails closed: its map was replaced by a deny-all one (both
	// directions enforced, no entries) or, if even that failed, Isolated is false
	// for it and its previous map stays.
	Endpoints map[string]*EndpointWriteError
	// CIDRs are CIDR-rule prefixes not written (or not deleted).
	CIDRs map[ipv4.Prefix]error
	// Other are identity and IP cache writes that failed.
	Other []error
}

// EndpointWriteError is why one endpoint's policy could not be written.
type EndpointWriteError struct {
	Err      error
	Isolated bool // the deny-all map is in place
}

func (e *EndpointWriteError) Error() string { return e.Err.Error() }
func (e *EndpointWriteError) Unwrap() error { return e.Err }

func (e *ApplyError) Error() string {
	var parts []string
	for _, k := range sortedKeys(e.Endpoints) {
		parts = append(parts, fmt.Sprintf("pod %s: %v", k, e.Endpoints[k].Err))
	}
	for p, err := range e.CIDRs {
		parts = append(parts, fmt.Sprintf("CIDR %s: %v", p, err))
	}
	for _, err := range e.Other {
		parts = append(parts, err.Error())
	}
	return "writing the datapath (everything else was written): " + strings.Join(parts, "; ")
}

func (e *ApplyError) empty() bool {
	return len(e.Endpoints) == 0 && len(e.CIDRs) == 0 && len(e.Other) == 0
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// ErrPolicyTooLarge: an endpoint's compiled policy has more entries than its map holds.
var ErrPolicyTooLarge = errors.New("policy too large for the endpoint's map")

// DenyAll is the policy an endpoint falls back to when its own cannot be written:
// both directions enforced, nothing allowed (the pod still reaches its own node).
func DenyAll() *compile.EndpointPolicy {
	return &compile.EndpointPolicy{Enforce: [2]bool{true, true}, Entries: map[compile.Key]compile.Verdict{}}
}

// Apply writes a compiler update in the order compile.Update prescribes. ifindexOf
// maps a local pod to its endpoint's interface; pods without one (not attached yet)
// are skipped: AttachEndpoint will carry their policy. A failed write never stops
// the others: Apply writes everything it can and returns an *ApplyError naming what
// failed (see there for the state a failed endpoint is left in).
func (d *Datapath) Apply(ctx context.Context, up compile.Update, ifindexOf func(namespace, name string) (int, bool)) error {
	fail := &ApplyError{Endpoints: map[string]*EndpointWriteError{}, CIDRs: map[ipv4.Prefix]error{}}
	for _, u := range up.Identities {
		var err error
		if u.Delete {
			err = d.DeleteIdentity(ctx, u.Sum)
		} else {
			err = d.SaveIdentity(ctx, u.Sum, u.ID)
		}
		if err != nil {
			fail.Other = append(fail.Other, err)
		}
	}
	for _, u := range up.IPCache {
		if u.Delete {
			if err := d.DeletePrefix(ctx, u.Prefix); err != nil {
				fail.Other = append(fail.Other, err)
			}
		}
	}
	for _, u := range up.CIDRs {
		if u.Delete {
			if err := d.DeleteCIDR(ctx, u.Prefix); err != nil {
				fail.CIDRs[u.Prefix] = err
			}
		}
	}
	for _, e := range up.Endpoints {
		if err := ctx.Err(); err != nil {
			return err
		}
		if e.Policy == nil {
			continue // the endpoint goes away with DetachEndpoint
		}
		ifindex, ok := ifindexOf(e.Namespace, e.Name)
		if !ok {
			continue
		}
		key := e.Namespace + "/" + e.Name
		if err := d.SyncEndpointPolicy(ctx, ifindex, e.Policy); err != nil {
			fail.Endpoints[key] = &EndpointWriteError{Err: err, Isolated: d.SyncEndpointPolicy(ctx, ifindex, DenyAll()) == nil}
		}
		if e.IP.Is4() {
			// The identity flows report as the endpoint's (its labels may have changed).
			info := datapathEndpointInfo{Addr: addrBE(e.IP), Identity: uint32(e.Identity)}
			if err := d.objs.FnEndpoints.Update(uint32(ifindex), &info, ebpf.UpdateExist); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				fail.Other = append(fail.Other, fmt.Errorf("pod %s: updating endpoint %d: %w", key, ifindex, err))
			}
		}
	}
	for _, u := range up.IPCache {
		if !u.Delete {
			if err := d.UpsertPrefix(ctx, u.Prefix, u.Identity, false); err != nil {
				fail.Other = append(fail.Other, err)
			}
		}
	}
	for _, u := range up.CIDRs {
		if !u.Delete {
			if err := d.UpsertCIDR(ctx, u.Prefix, u.Identity); err != nil {
				fail.CIDRs[u.Prefix] = err
			}
		}
	}
	if fail.empty() {
		return nil
	}
	return fail
}

// UpsertIPIdentity maps one address to an identity in the IP cache.
func (d *Datapath) UpsertIPIdentity(ctx context.Context, ip netip.Addr, id identity.ID) error {
	p, err := ipv4.HostPrefix(ip)
	if err != nil {
		return fmt.Errorf("writing ipcache %v -> %d: %w", ip, id, err)
	}
	return d.UpsertPrefix(ctx, p, id, false)
}

// DeleteIP removes one address from the IP cache (it becomes world).
func (d *Datapath) DeleteIP(ctx context.Context, ip netip.Addr) error {
	p, err := ipv4.HostPrefix(ip)
	if err != nil {
		return fmt.Errorf("deleting ipcache %v: %w", ip, err)
	}
	return d.DeletePrefix(ctx, p)
}

// UpsertPrefix maps a prefix to an identity in the IP cache. service instead marks
// a Service address (or range) whatever its identity (world when it has none): egress
// to it is judged after kube-proxy's DNAT, on the backend.
func (d *Datapath) UpsertPrefix(_ context.Context, p ipv4.Prefix, id identity.ID, service bool) error {
	d.ipMu.Lock()
	defer d.ipMu.Unlock()
	if service {
		d.services[p] = true
	} else {
		d.ipIDs[p] = id
	}
	return d.writeIPCache(p)
}

// UpsertService marks a Service address so that egress to it is judged on the
// backend kube-proxy picks.
func (d *Datapath) UpsertService(ctx context.Context, ip netip.Addr) error {
	p, err := ipv4.HostPrefix(ip)
	if err != nil {
		return fmt.Errorf("marking Service address %v: %w", ip, err)
	}
	return d.UpsertPrefix(ctx, p, identity.World, true)
}

// SetServices makes exactly these prefixes the Service addresses; an address that
// stops being one keeps the identity the compiler gave it (or leaves the cache).
func (d *Datapath) SetServices(_ context.Context, prefixes []ipv4.Prefix) error {
	want := make(map[ipv4.Prefix]bool, len(prefixes))
	for _, p := range prefixes {
		want[p] = true
	}
	d.ipMu.Lock()
	defer d.ipMu.Unlock()
	var errs []error
	for p := range d.services {
		if !want[p] {
			delete(d.services, p)
			if err := d.writeIPCache(p); err != nil {
				d.services[p] = true // the next call tries again
				errs = append(errs, err)
			}
		}
	}
	for p := range want {
		if !d.services[p] {
			d.services[p] = true
			if err := d.writeIPCache(p); err != nil {
				delete(d.services, p) // the next call tries again
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// DeletePrefix removes a prefix's identity from the IP cache; a Service address
// stays in it, as world.
func (d *Datapath) DeletePrefix(_ context.Context, p ipv4.Prefix) error {
	d.ipMu.Lock()
	defer d.ipMu.Unlock()
	delete(d.ipIDs, p)
	return d.writeIPCache(p)
}

// writeIPCache writes p's entry from both layers. Call with ipMu held.
func (d *Datapath) writeIPCache(p ipv4.Prefix) error {
	k := ipcacheKey(p)
	id, known := d.ipIDs[p]
	service := d.services[p]
	if !known && !service {
		if err := d.objs.FnIpcache.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("deleting ipcache %s: %w", p, err)
		}
		return nil
	}
	v := datapathIpcacheVal{Identity: uint32(identity.World)}
	if known {
		v.Identity = uint32(id)
	}
	if service {
		v.Flags = ipcacheFlagService
	}
	if err := d.objs.FnIpcache.Put(&k, &v); err != nil {
		return fmt.Errorf("writing ipcache %s -> %d (service %t): %w", p, v.Identity, service, err)
	}
	return nil
}

// ipcacheFlagService is IPCACHE_F_SERVICE.
const ipcacheFlagService = 1

// UpsertCIDR maps a CIDR-rule prefix to its local identity.
func (d *Datapath) UpsertCIDR(_ context.Context, p ipv4.Prefix, id identity.ID) error {
	k := ipcacheKey(p)
	v := datapathIpcacheVal{Identity: uint32(id)}
	if err := d.objs.FnCidrcache.Put(&k, &v); err != nil {
		return fmt.Errorf("writing CIDR %s -> %d: %w", p, id, err)
	}
	return nil
}

// DeleteCIDR removes a CIDR-rule prefix.
func (d *Datapath) DeleteCIDR(_ context.Context, p ipv4.Prefix) error {
	k := ipcacheKey(p)
	if err := d.objs.FnCidrcache.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("deleting CIDR %s: %w", p, err)
	}
	return nil
}

// ipcacheKey cannot fail: ipv4.Prefix is a masked IPv4 prefix by construction.
func ipcacheKey(p ipv4.Prefix) datapathIpcacheKey {
	return datapathIpcacheKey{Prefixlen: uint32(p.Bits()), Addr: addrBE(p.Addr())}
}

// addrBE returns the address as a uint32 whose in-memory bytes are in network order.
func addrBE(a netip.Addr) uint32 {
	b := a.As4()
	return binary.NativeEndian.Uint32(b[:])
}

func htons(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}

func ntohs(v uint16) uint16 { return htons(v) }

func addrFromBE(v uint32) netip.Addr {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

// SaveIdentity stores an identity allocation (see identity.Allocator.Remember).
func (d *Datapath) SaveIdentity(_ context.Context, s identity.Sum, id identity.ID) error {
	if err := d.objs.FnIdentities.Put(datapathIdentitySum{Sum: s}, uint32(id)); err != nil {
		return fmt.Errorf("saving identity %d: %w", id, err)
	}
	return nil
}

// DeleteIdentity forgets a stored identity allocation.
func (d *Datapath) DeleteIdentity(_ context.Context, s identity.Sum) error {
	if err := d.objs.FnIdentities.Delete(datapathIdentitySum{Sum: s}); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("deleting a stored identity: %w", err)
	}
	return nil
}

// Identities returns the stored identity allocations, for a restarted agent to hand
// to identity.Allocator.Remember before it compiles anything.
func (d *Datapath) Identities(_ context.Context) (map[identity.Sum]identity.ID, error) {
	out := map[identity.Sum]identity.ID{}
	var k datapathIdentitySum
	var v uint32
	it := d.objs.FnIdentities.Iterate()
	for it.Next(&k, &v) {
		out[k.Sum] = identity.ID(v)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("reading stored identities: %w", err)
	}
	return out, nil
}

// Endpoints returns the endpoints the datapath enforces (a restarted agent matches them
// to pods by IP), by host interface index.
func (d *Datapath) Endpoints(_ context.Context) (map[int]Endpoint, error) {
	out := map[int]Endpoint{}
	var k uint32
	var v datapathEndpointInfo
	it := d.objs.FnEndpoints.Iterate()
	for it.Next(&k, &v) {
		out[int(k)] = Endpoint{IfIndex: int(k), IP: addrFromBE(v.Addr), Identity: identity.ID(v.Identity)}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("reading endpoints: %w", err)
	}
	return out, nil
}

// PrefixEntry is one IP cache entry as stored.
type PrefixEntry struct {
	Identity identity.ID
	Service  bool
}

// IPCache returns the IP cache as stored (a restarted agent removes what it no longer
// wants).
func (d *Datapath) IPCache(_ context.Context) (map[ipv4.Prefix]PrefixEntry, error) {
	out := map[ipv4.Prefix]PrefixEntry{}
	var k datapathIpcacheKey
	var v datapathIpcacheVal
	it := d.objs.FnIpcache.Iterate()
	for it.Next(&k, &v) {
		p, err := ipv4.From4(addrFromBE(k.Addr).As4(), int(k.Prefixlen))
		if err != nil {
			return nil, fmt.Errorf("reading the IP cache: a key of %d bits: %w", k.Prefixlen, err)
		}
		out[p] = PrefixEntry{Identity: identity.ID(v.Identity), Service: v.Flags&ipcacheFlagService != 0}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("reading the IP cache: %w", err)
	}
	return out, nil
}

// CIDRs returns the CIDR-rule prefixes as stored.
func (d *Datapath) CIDRs(_ context.Context) (map[ipv4.Prefix]identity.ID, error) {
	out := map[ipv4.Prefix]identity.ID{}
	var k datapathIpcacheKey
	var v datapathIpcacheVal
	it := d.objs.FnCidrcache.Iterate()
	for it.Next(&k, &v) {
		p, err := ipv4.From4(addrFromBE(k.Addr).As4(), int(k.Prefixlen))
		if err != nil {
			return nil, fmt.Errorf("reading the CIDR prefixes: a key of %d bits: %w", k.Prefixlen, err)
		}
		out[p] = identity.ID(v.Identity)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("reading the CIDR prefixes: %w", err)
	}
	return out, nil
}

// MapFill is how full one datapath map is.
type MapFill struct {
	Map      string // the map's name without the fn_ prefix
	Entries  int
	Capacity int // max_entries
}

// MapFill counts the entries of the maps that grow with the cluster (policy: the
// endpoints that have a policy map; the entries of each are bounded by the compiler's
// check in syncPolicy; ct: the shared table of new and closing connections;
// ct_established: the established connections in all endpoints' tables, against
// their summed capacity; ct_established_endpoint_max: the fullest of those tables).
// Counting walks the keys, one syscall per entry: cheap for the sizes a node has,
// and under churn an approximation (a walk is capped at the map's capacity).
func (d *Datapath) MapFill(_ context.Context) ([]MapFill, error) {
	maps := []struct {
		name string
		m    *ebpf.Map
	}{
		{"endpoints", d.objs.FnEndpoints}, {"policy", d.objs.FnPolicy}, {"ipcache", d.objs.FnIpcache},
		{"cidrcache", d.objs.FnCidrcache}, {"identities", d.objs.FnIdentities}, {"ct", d.objs.FnCt},
		{"counters", d.objs.FnCounters}, {"local_ips", d.objs.FnLocalIps}, {"frags", d.objs.FnFrags},
	}
	out := make([]MapFill, 0, len(maps))
	for _, m := range maps {
		n, err := countKeys(m.m)
		if err != nil {
			return nil, fmt.Errorf("counting entries of fn_%s: %w", m.name, err)
		}
		out = append(out, MapFill{Map: m.name, Entries: n, Capacity: int(m.m.MaxEntries())})
	}
	ct, fullest := MapFill{Map: "ct_established"}, MapFill{Map: "ct_established_endpoint_max", Capacity: int(d.ctEst.MaxEntries)}
	var k uint32
	var id ebpf.MapID
	it := d.objs.FnCtEst.Iterate()
	for it.Next(&k, &id) {
		m, err := ebpf.NewMapFromID(id)
		if err != nil {
			continue // detached meanwhile
		}
		n, err := countKeys(m)
		ct.Capacity += int(m.MaxEntries())
		m.Close()
		if err != nil {
			return nil, fmt.Errorf("counting the connections of endpoint %d: %w", k, err)
		}
		ct.Entries += n
		if n > fullest.Entries {
			fullest.Entries, fullest.Capacity = n, int(m.MaxEntries())
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("listing connection tables: %w", err)
	}
	return append(out, ct, fullest), nil
}

func countKeys(m *ebpf.Map) (int, error) {
	key, next := make([]byte, m.KeySize()), make([]byte, m.KeySize())
	var prev any // nil: the first key
	n := 0
	for n < int(m.MaxEntries()) {
		if err := m.NextKey(prev, next); err != nil {
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				break
			}
			return 0, err
		}
		n++
		copy(key, next)
		prev = key
	}
	return n, nil
}

// PolicyLimit is how many entries an endpoint's policy map holds.
func (d *Datapath) PolicyLimit() int { return int(d.inner.MaxEntries) }
