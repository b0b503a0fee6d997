package identity

import "testing"

func TestAllocatorSharesAndReleases(t *testing.T) {
	a := NewAllocator()
	l1 := map[string]string{"app": "web", "io.kubernetes.pod.namespace": "default"}
	l1b := map[string]string{"io.kubernetes.pod.namespace": "default", "app": "web"}
	l2 := map[string]string{"app": "db", "io.kubernetes.pod.namespace": "default"}

	id1, created, err := a.Acquire(l1)
	if err != nil || !created || id1 < MinCluster || id1 >= MinLocal {
		t.Fatalf("first Acquire = %v, %v, %v; want a new cluster identity", id1, created, err)
	}
	again, created, _ := a.Acquire(l1b)
	if again != id1 || created {
		t.Fatalf("same label set in another order got %v (created %v), want %v shared", again, created, id1)
	}
	id2, _, _ := a.Acquire(l2)
	if id2 == id1 {
		t.Fatalf("different label sets share identity %v", id1)
	}
	if a.Release(id1) {
		t.Fatalf("identity freed while a reference remains")
	}
	if !a.Release(id1) {
		t.Fatalf("identity not freed after its last reference")
	}
	if a.Labels(id1) != nil {
		t.Fatalf("labels of a freed identity still known")
	}
	id3, created, _ := a.Acquire(l1)
	if !created || id3 == id1 || id3 == id2 {
		t.Fatalf("re-acquired set got %v (created %v); numbers must not be reused (had %v, %v)", id3, created, id1, id2)
	}
	loc, _, _ := a.AcquireLocal("cidr:10.0.0.0/8")
	if loc < MinLocal {
		t.Fatalf("local identity %v below MinLocal", loc)
	}
	if a.Len() != 3 {
		t.Fatalf("Len = %d, want 3", a.Len())
	}
}

func TestAllocatorRememberedAcrossRestart(t *testing.T) {
	old := NewAllocator()
	web := map[string]string{"app": "web"}
	db := map[string]string{"app": "db"}
	gone := map[string]string{"app": "gone"}
	idWeb, _, _ := old.Acquire(web)
	idGone, _, _ := old.Acquire(gone)
	idDB, _, _ := old.Acquire(db)
	cidr, _, _ := old.AcquireLocal("cidr:10.0.0.0/8")
	saved := map[Sum]ID{}
	for _, id := range []ID{idWeb, idGone, idDB, cidr} {
		s, ok := old.SumOf(id)
		if !ok {
			t.Fatalf("no sum for live identity %v", id)
		}
		saved[s] = id
	}

	// A new agent: label sets come back in another order, one never comes back.
	a := NewAllocator()
	for s, id := range saved {
		a.Remember(s, id)
	}
	gotDB, _, _ := a.Acquire(db)
	gotWeb, _, _ := a.Acquire(web)
	gotCIDR, _, _ := a.AcquireLocal("cidr:10.0.0.0/8")
	if gotDB != idDB || gotWeb != idWeb || gotCIDR != cidr {
		t.Fatalf("after restart web=%v db=%v cidr=%v, want %v %v %v", gotWeb, gotDB, gotCIDR, idWeb, idDB, cidr)
	}
	fresh, _, _ := a.Acquire(map[string]string{"app": "new"})
	if fresh == idGone || fresh <= idDB {
		t.Fatalf("fresh identity %v collides with or precedes remembered ones (max %v)", fresh, idDB)
	}
	unclaimed := a.ForgetUnclaimed()
	goneSum, _ := old.SumOf(idGone)
	if len(unclaimed) != 1 || unclaimed[0] != goneSum {
		t.Fatalf("unclaimed = %d sums, want only the gone label set's", len(unclaimed))
	}
}
