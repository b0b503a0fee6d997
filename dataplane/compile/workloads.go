package compile

import "slices"

// workloadTable shares one slice per distinct workload among the pods that have
// it (a Deployment's replicas, a DaemonSet's pods): the snapshot's peers and every
// flow naming those pods point to it, so a pod's workload costs no allocation of
// its own. A pod's slice is the table's and never changes; an upsert takes the new
// one before releasing the old.
//
// Invariant: refs counts, for each interned workload, the pods holding its slice.
type workloadTable struct {
	shared map[Workload]*sharedWorkloads
}

type sharedWorkloads struct {
	ws   []Workload
	refs int
}

func newWorkloadTable() *workloadTable {
	return &workloadTable{shared: map[Workload]*sharedWorkloads{}}
}

// acquire returns the table's slice for ws (Hubble reports one workload per pod;
// any other number is copied, not shared).
func (t *workloadTable) acquire(ws []Workload) []Workload {
	if len(ws) != 1 {
		return slices.Clip(slices.Clone(ws))
	}
	s := t.shared[ws[0]]
	if s == nil {
		s = &sharedWorkloads{ws: []Workload{ws[0]}}
		t.shared[ws[0]] = s
	}
	s.refs++
	return s.ws
}

// release gives back a slice acquire returned.
func (t *workloadTable) release(ws []Workload) {
	if len(ws) != 1 {
		return
	}
	if s := t.shared[ws[0]]; s != nil {
		if s.refs--; s.refs == 0 {
			delete(t.shared, ws[0])
		}
	}
}
