package bpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/cilium/ebpf"
)

// Upgrades: what Load does when a map pinned by a previous agent has another layout
// (type, key or value size, max_entries, flags) than this version's.
//
// Load then enters an upgrade: every pinned map of another layout, and every map the
// agent rebuilds (policyRebuild) even of the same layout, is renamed to
// "<name>:pending" and stays with the previous version's programs, which keep
// enforcing with it; this version's programs get new maps. Pinned links are not moved
// at Load: each endpoint's links move to the new programs in AttachEndpoint, once its
// policy, identity and connection table are in the new maps (the agent's first full
// sync has written the IP cache before it re-attaches endpoints), so no packet meets
// an empty map. The Service hook of the previous version stays attached beside the
// new one meanwhile. When the last endpoint has moved (or been detached), the
// ":pending" maps are unpinned. An agent that dies midway finds the ":pending" pins
// and carries on.

type upgradePolicy int

const (
	// policyRebuild: the agent writes the whole content again from the cluster
	// (identities of pods, policies, addresses, endpoints); nothing is copied.
	policyRebuild upgradePolicy = iota
	// policyConvert: the entries cannot be derived again and are copied into the
	// new layout where the key and value layouts allow; otherwise they are dropped
	// and Upgrade says how many.
	policyConvert
	// policyReset: starts empty in the new layout, and what is lost is only
	// observability (counts, events) or settings the agent writes at start.
	policyReset
)

// mapUpgrades names every pinned map's upgrade policy (TestEveryPinnedMapHasAnUpgradePolicy).
var mapUpgrades = map[string]struct {
	policy upgradePolicy
	why    string
}{
	datapathMapFnEndpoints:   {policyRebuild, "AttachEndpoint writes every endpoint again when the agent re-attaches it"},
	datapathMapFnLocalIps:    {policyRebuild, "AttachEndpoint writes it last, after the endpoint's programs are the new ones"},
	datapathMapFnCalls:       {policyRebuild, "Load puts this version's deliver_to_pod there; the previous programs keep theirs"},
	datapathMapFnPolicy:      {policyRebuild, "compiled from the cluster and written per endpoint"},
	datapathMapFnIpcache:     {policyRebuild, "compiled from the cluster, written whole by the first full sync"},
	datapathMapFnCidrcache:   {policyRebuild, "compiled from the cluster, written whole by the first full sync"},
	datapathMapFnIdentities:  {policyConvert, "the numbers the running policy uses; if dropped, the agent numbers identities afresh (every policy map is rebuilt in an upgrade)"},
	datapathMapFnCt:          {policyConvert, "connections cannot be derived again: dropping one cuts it where its replies need the entry (a deny in the reply direction)"},
	datapathMapFnCtEst:       {policyConvert, "established connections, per endpoint: copied table by table"},
	datapathMapFnFrags:       {policyReset, "first fragments' ports of datagrams in flight: their later fragments, met by the new programs, are judged as the first was not seen (a datagram lost, retried by its sender)"},
	datapathMapFnCounters:    {policyReset, "packet counts restart from zero (Prometheus sees a counter reset)"},
	datapathMapFnEvents:      {policyReset, "events the previous programs write into their ring until their endpoint moves are not read"},
	datapathMapFnEventBudget: {policyReset, "the flow-event token buckets refill within a second"},
	datapathMapFnConfig:      {policyReset, "the agent writes its settings at start (SetHostRouting; flow events default on)"},
	datapathMapFnPolicyRev:   {policyReset, "connections of the previous layout hold no revision (0): each is judged by policy again once"},
}

const pendingSuffix = ":pending"

// Upgrade reports an upgrade of pinned maps of another layout (see Load).
type Upgrade struct {
	Retired   []string       // maps left to the previous version's programs until every endpoint moved
	Converted map[string]int // entries copied into the new layout, by map
	Dropped   map[string]int // entries that could not be copied (layout or size), by map
	Pending   int            // endpoints still running the previous version's programs
}

// upgrade is the state of an upgrade in progress (nil: none).
type upgrade struct {
	retired   map[string]*ebpf.Map // by map name, pinned at name+pendingSuffix
	ids       map[ebpf.MapID]bool  // their IDs, to tell the previous programs by the maps they use
	pending   map[int]bool         // ifindexes whose links still run the previous programs
	converted map[string]int
	dropped   map[string]int
}

// Upgrade says what Load did with pinned maps of another layout, and how far the
// move of endpoints to the new programs is (zero value: nothing to upgrade; Retired
// empty: finished).
func (d *Datapath) Upgrade() Upgrade {
	d.mu.Lock()
	defer d.mu.Unlock()
	u := d.up
	if u == nil {
		return d.upgraded
	}
	out := Upgrade{Converted: u.converted, Dropped: u.dropped, Pending: len(u.pending)}
	for name := range u.retired {
		out.Retired = append(out.Retired, name)
	}
	sort.Strings(out.Retired)
	return out
}

// prepareUpgrade retires the pinned maps an upgrade needs retired (see above) and
// returns the upgrade, or nil when every pinned map has this version's layout and no
// earlier upgrade is unfinished.
func prepareUpgrade(spec *ebpf.CollectionSpec, pinDir string) (*upgrade, error) {
	u := &upgrade{retired: map[string]*ebpf.Map{}, ids: map[ebpf.MapID]bool{}, pending: map[int]bool{},
		converted: map[string]int{}, dropped: map[string]int{}}
	closeAll := func() {
		for _, m := range u.retired {
			m.Close()
		}
	}
	incompatible := map[string]bool{}
	for name := range mapUpgrades {
		path := filepath.Join(pinDir, name)
		if m, err := ebpf.LoadPinnedMap(path+pendingSuffix, nil); err == nil {
			u.retired[name] = m // an earlier upgrade, unfinished
		}
		m, err := ebpf.LoadPinnedMap(path, nil)
		if err != nil {
			continue // not pinned yet
		}
		if spec.Maps[name].Compatible(m) != nil {
			incompatible[name] = true
		}
		m.Close()
	}
	if len(incompatible) == 0 && len(u.retired) == 0 {
		return nil, nil
	}
	for name, mu := range mapUpgrades {
		path := filepath.Join(pinDir, name)
		if _, ok := u.retired[name]; ok {
			// The previous programs use the ":pending" one; the one pinned under the
			// name is an unfinished new generation: kept if it fits this version.
			if incompatible[name] {
				if err := os.Remove(path); err != nil {
					closeAll()
					return nil, fmt.Errorf("replacing %s of an unfinished upgrade: %w", path, err)
				}
			}
			continue
		}
		if !incompatible[name] && mu.policy != policyRebuild {
			continue // shared by both versions
		}
		m, err := ebpf.LoadPinnedMap(path, nil)
		if err != nil {
			continue
		}
		if err := os.Rename(path, path+pendingSuffix); err != nil {
			m.Close()
			closeAll()
			return nil, fmt.Errorf("setting %s aside for the previous version's programs: %w", path, err)
		}
		u.retired[name] = m
	}
	for _, m := range u.retired {
		if info, err := m.Info(); err == nil {
			if id, ok := info.ID(); ok {
				u.ids[id] = true
			}
		}
	}
	return u, nil
}

// convert copies what an upgrade keeps from the retired maps into this version's.
func (d *Datapath) convert() error {
	u := d.up
	if m := u.retired[datapathMapFnIdentities]; m != nil && sameEntryLayout(m, d.objs.FnIdentities) {
		var k datapathIdentitySum
		var v uint32
		it := m.Iterate()
		for it.Next(&k, &v) {
			if err := d.objs.FnIdentities.Put(&k, &v); err != nil {
				u.dropped[datapathMapFnIdentities]++
				continue
			}
			u.converted[datapathMapFnIdentities]++
		}
		if err := it.Err(); err != nil {
			return fmt.Errorf("copying stored identities: %w", err)
		}
	} else if m != nil {
		n, _ := countKeys(m)
		u.dropped[datapathMapFnIdentities] += n
	}
	if err := d.convertCT(func(*datapathCtKey) bool { return true }); err != nil {
		return err
	}
	if m := u.retired[datapathMapFnCtEst]; m != nil {
		var ifindex uint32
		var id ebpf.MapID
		it := m.Iterate()
		for it.Next(&ifindex, &id) {
			old, err := ebpf.NewMapFromID(id)
			if err != nil {
				continue
			}
			err = d.convertTable(int(ifindex), old)
			old.Close()
			if err != nil {
				return err
			}
		}
		if err := it.Err(); err != nil {
			return fmt.Errorf("listing the previous connection tables: %w", err)
		}
	}
	return nil
}

// convertTable copies an endpoint's established connections of the previous version.
func (d *Datapath) convertTable(ifindex int, old *ebpf.Map) error {
	if old.KeySize() != d.ctEst.KeySize || old.ValueSize() != d.ctEst.ValueSize {
		n, _ := countKeys(old)
		d.up.dropped[datapathMapFnCtEst] += n
		return nil
	}
	if err := d.ensureEstTable(ifindex); err != nil {
		return err
	}
	t, err := d.estTable(ifindex)
	if err != nil || t == nil {
		return err
	}
	defer t.Close()
	copied, dropped, err := copyCT(old, t, func(*datapathCtKey) bool { return true })
	if err != nil {
		return fmt.Errorf("copying established connections of endpoint %d: %w", ifindex, err)
	}
	d.up.converted[datapathMapFnCtEst] += copied
	d.up.dropped[datapathMapFnCtEst] += dropped
	return nil
}

// convertCT copies the previous version's shared table's connections that match into
// this version's tables (spreadCT), never over newer ones. A previous layout of other key or value sizes
// cannot be read: its connections are dropped and counted.
func (d *Datapath) convertCT(match func(*datapathCtKey) bool) error {
	m := d.up.retired[datapathMapFnCt]
	if m == nil {
		return nil
	}
	if !sameEntryLayout(m, d.objs.FnCt) {
		n, _ := countKeys(m)
		d.up.dropped[datapathMapFnCt] = n // the whole table, however often it is looked at
		return nil
	}
	copied, dropped, err := d.spreadCT(m, match, false)
	if err != nil {
		return fmt.Errorf("copying tracked connections of the previous version: %w", err)
	}
	d.up.converted[datapathMapFnCt] += copied
	d.up.dropped[datapathMapFnCt] += dropped
	return nil
}

func sameEntryLayout(a, b *ebpf.Map) bool {
	return a.KeySize() == b.KeySize() && a.ValueSize() == b.ValueSize()
}

// runsPrevious reports whether a program (an endpoint's, by ID) is one of the
// previous version's: one that uses a retired map.
func (u *upgrade) runsPrevious(id ebpf.ProgramID) bool {
	p, err := ebpf.NewProgramFromID(id)
	if err != nil {
		return false
	}
	defer p.Close()
	pi, err := p.Info()
	if err != nil {
		return false
	}
	ids, _ := pi.MapIDs()
	for _, id := range ids {
		if u.ids[id] {
			return true
		}
	}
	return false
}

// movedEndpoint is called (d.mu held) once an endpoint's links run the new programs
// and its maps are written: the previous programs stop handing it packets directly,
// the connections they tracked for it meanwhile are copied, and the upgrade finishes
// with the last endpoint.
func (d *Datapath) movedEndpoint(ifindex int, addr uint32) error {
	u := d.up
	if u == nil || !u.pending[ifindex] {
		return nil
	}
	delete(u.pending, ifindex)
	if m := u.retired[datapathMapFnLocalIps]; m != nil && m.KeySize() == 4 {
		_ = m.Delete(addr)
	}
	if err := d.convertCT(func(k *datapathCtKey) bool { return int(k.Ifindex) == ifindex }); err != nil {
		return err
	}
	return d.finishUpgrade()
}

// finishUpgrade unpins the retired maps once no endpoint runs the previous programs.
func (d *Datapath) finishUpgrade() error {
	u := d.up
	if u == nil || len(u.pending) > 0 {
		return nil
	}
	// Last copy: connections the previous programs tracked after an endpoint moved
	// (direct delivery from a pod that had not moved yet).
	if err := d.convertCT(func(*datapathCtKey) bool { return true }); err != nil {
		return err
	}
	var errs []error
	for name, m := range u.retired {
		if err := os.Remove(filepath.Join(d.pinDir, name+pendingSuffix)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("unpinning the previous version's %s: %w", name, err))
		}
		m.Close()
	}
	if err := os.Remove(d.servicePin() + pendingSuffix); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("detaching the previous version's Service hook: %w", err))
	}
	d.upgraded = Upgrade{Converted: u.converted, Dropped: u.dropped}
	d.up = nil
	return errors.Join(errs...)
}
