package flows

import (
	"testing"
	"time"
)

// TestStoreSequenceReads: readers that keep their own position see every flow
// once, oldest first, and are told exactly how many the ring overwrote before
// they got to them.
func TestStoreSequenceReads(t *testing.T) {
	s := NewStore(4)
	t0 := time.Now()
	mk := func(i int) *Response {
		return resp(VerdictDropped, Ingress, "a", "p", "a", "q", nil, "TCP", uint16(1000+i), 80, t0.Add(time.Duration(i)*time.Second))
	}
	if oldest, next := s.Bounds(); oldest != 0 || next != 0 {
		t.Fatalf("empty store: Bounds() = %d, %d, want 0, 0", oldest, next)
	}
	wait := s.Wait(0)
	select {
	case <-wait:
		t.Fatal("Wait(0) is closed before any flow was added")
	default:
	}
	for i := range 6 {
		s.Add(mk(i))
	}
	select {
	case <-wait:
	default:
		t.Fatal("Wait(0) is still open after flows were added")
	}
	if n, capacity, seen := s.Stats(); n != 4 || capacity != 4 || seen != 6 {
		t.Fatalf("Stats() = %d, %d, %d, want 4 kept, capacity 4, 6 seen", n, capacity, seen)
	}
	if oldest, next := s.Bounds(); oldest != 2 || next != 6 {
		t.Fatalf("Bounds() = %d, %d, want 2 (flows 0 and 1 overwritten), 6", oldest, next)
	}
	ports := func(rs []*Response) (out []uint16) {
		for _, r := range rs {
			out = append(out, r.Flow.L4.TCP.SourcePort-1000)
		}
		return out
	}
	buf := make([]*Response, 3)
	n, lost := s.ReadFrom(0, buf)
	if got := ports(buf[:n]); lost != 2 || len(got) != 3 || got[0] != 2 || got[2] != 4 {
		t.Fatalf("ReadFrom(0) = flows %v, lost %d; want flows 2 3 4, lost 2", got, lost)
	}
	if n, lost := s.ReadFrom(5, buf); n != 1 || lost != 0 || ports(buf[:1])[0] != 5 {
		t.Fatalf("ReadFrom(5) = %d flows, lost %d; want flow 5 alone", n, lost)
	}
	if n, lost := s.ReadFrom(6, buf); n != 0 || lost != 0 {
		t.Fatalf("ReadFrom(6) = %d flows, lost %d; want nothing yet", n, lost)
	}
	n, first := s.ReadBefore(6, buf)
	if got := ports(buf[:n]); first != 3 || len(got) != 3 || got[0] != 3 || got[2] != 5 {
		t.Fatalf("ReadBefore(6) = flows %v from %d; want 3 4 5 from 3", got, first)
	}
	n, first = s.ReadBefore(3, buf)
	if got := ports(buf[:n]); first != 2 || len(got) != 1 || got[0] != 2 {
		t.Fatalf("ReadBefore(3) = flows %v from %d; want flow 2 alone (the oldest kept)", got, first)
	}
	if n, _ := s.ReadBefore(2, buf); n != 0 {
		t.Fatalf("ReadBefore(2) = %d flows; want none (flows 0 and 1 are gone)", n)
	}
	select {
	case <-s.Wait(5):
	default:
		t.Fatal("Wait(5) is open, yet flow 5 is in the store")
	}
	next := s.Wait(6)
	select {
	case <-next:
		t.Fatal("Wait(6) is closed before flow 6 was added")
	default:
	}
	s.Add(mk(6))
	select {
	case <-next:
	default:
		t.Fatal("Wait(6) is still open after flow 6 was added")
	}
}
