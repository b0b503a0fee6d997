package compile

import (
	"math/rand"
	"net/netip"
	"slices"
	"testing"

	"github.com/flatnet/flatnet/dataplane/ipv4"
)

// TestLengthIndexAgreesWithAWalk: covering, within and longest answer what a walk
// of every indexed prefix answers, over nested random prefixes (few and many per
// length, so that within both looks subnets up and walks the prefixes of a length).
func TestLengthIndexAgreesWithAWalk(t *testing.T) {
	r := rand.New(rand.NewSource(1))
	// Addresses under 10.0.0.0/22 so that random prefixes nest and collide.
	randPrefix := func() ipv4.Prefix {
		a := [4]byte{10, 0, byte(r.Intn(4)), byte(r.Intn(256))}
		bits := []int{0, 8, 16, 20, 22, 23, 24, 25, 28, 30, 31, 32}[r.Intn(12)]
		p, err := ipv4.From4(a, bits)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, size := range []int{5, 50, 2000} {
		var x lengthIndex[int]
		all := map[ipv4.Prefix]int{}
		for i := range size {
			p := randPrefix()
			x.set(p, i)
			all[p] = i
		}
		for p := range all { // some go again
			if r.Intn(4) == 0 {
				x.del(p)
				delete(all, p)
			}
		}
		collect := func(walk func(ipv4.Prefix, func(ipv4.Prefix, int))) func(ipv4.Prefix) []ipv4.Prefix {
			return func(q ipv4.Prefix) []ipv4.Prefix {
				var got []ipv4.Prefix
				walk(q, func(p ipv4.Prefix, v int) {
					if all[p] != v {
						t.Fatalf("%v: value %d, want %d", p, v, all[p])
					}
					got = append(got, p)
				})
				slices.SortFunc(got, ipv4.Prefix.Compare)
				return got
			}
		}
		covering, within := collect(x.covering), collect(x.within)
		for range 300 {
			q := randPrefix()
			var wantCovering, wantWithin []ipv4.Prefix
			for p := range all {
				if q.Within(p) {
					wantCovering = append(wantCovering, p)
				}
				if p.Within(q) {
					wantWithin = append(wantWithin, p)
				}
			}
			slices.SortFunc(wantCovering, ipv4.Prefix.Compare)
			slices.SortFunc(wantWithin, ipv4.Prefix.Compare)
			if got := covering(q); !slices.Equal(got, wantCovering) {
				t.Fatalf("size %d: covering(%v) = %v, want %v", size, q, got, wantCovering)
			}
			if got := within(q); !slices.Equal(got, wantWithin) {
				t.Fatalf("size %d: within(%v) = %v, want %v", size, q, got, wantWithin)
			}
			a := netip.AddrFrom4([4]byte{10, 0, byte(r.Intn(4)), byte(r.Intn(256))})
			want, wantOK, wantBits := 0, false, -1
			for p, v := range all {
				if p.Contains(a) && p.Bits() > wantBits {
					want, wantOK, wantBits = v, true, p.Bits()
				}
			}
			if got, ok := x.longest(a.As4()); ok != wantOK || got != want {
				t.Fatalf("size %d: longest(%v) = %d, %v; want %d, %v", size, a, got, ok, want, wantOK)
			}
		}
	}
}
