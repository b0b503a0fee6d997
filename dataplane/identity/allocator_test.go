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
