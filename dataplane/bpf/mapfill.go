package bpf

import (
	"context"
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// MapFill is how full one datapath map is.
type MapFill struct {
	Map      string // the map's name without the fn_ prefix
	Entries  int
	Capacity int // max_entries
}

// MapFill counts the entries of the maps that grow with the cluster (policy: the
// endpoints that have a policy map; the entries of each are bounded by the compiler's
// check in syncPolicy; ct: the shared table of new and closing connections, and
// the hidden copies established ones leave behind until the LRU evicts them;
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
