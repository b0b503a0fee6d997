package ipam

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func kindLayout(size int) Layout {
	return Layout{
		Subnet:      netip.MustParsePrefix("10.224.0.0/16"),
		Gateway:     netip.MustParseAddr("10.224.0.1"),
		DockerRange: netip.MustParsePrefix("10.224.0.0/27"),
		BlockSize:   size,
	}
}

func TestLayoutKindSubnet(t *testing.T) {
	l := kindLayout(30)
	if err := l.Validate(); err != nil {
		t.Fatal(err)
	}
	if got, want := l.Origin(), netip.MustParseAddr("10.224.0.32"); got != want {
		t.Fatalf("origin = %s, want %s (first address after Docker's 10.224.0.0/27)", got, want)
	}
	// 65536 addresses - 32 reserved at the start - 1 broadcast = 65503; /30 = 2183 whole blocks.
	if got := l.NumBlocks(); got != 2183 {
		t.Fatalf("NumBlocks = %d, want 2183", got)
	}
	b1, err := l.Block(1)
	if err != nil {
		t.Fatal(err)
	}
	if b1.First != netip.MustParseAddr("10.224.0.62") || b1.Last() != netip.MustParseAddr("10.224.0.91") {
		t.Fatalf("block 1 = %s, want 10.224.0.62-10.224.0.91", b1)
	}
	last, _ := l.Block(l.NumBlocks() - 1)
	if !last.Last().Less(netip.MustParseAddr("10.224.255.255")) {
		t.Fatalf("last block %s reaches the broadcast address", last)
	}
	if _, err := l.Block(l.NumBlocks()); err == nil {
		t.Fatal("Block(NumBlocks) should fail")
	}
}

func TestLowestFreeBlock(t *testing.T) {
	l := kindLayout(30)
	b0, _ := l.Block(0)
	b1, _ := l.Block(1)
	b2, _ := l.Block(2)

	got, err := l.LowestFreeBlock(nil, nil)
	if err != nil || got != b0 {
		t.Fatalf("empty cluster: got %v, %v; want %v", got, err, b0)
	}
	// A hole left by a released block is reused before growing.
	got, _ = l.LowestFreeBlock([]Block{b1}, nil)
	if got != b0 {
		t.Fatalf("with block 1 taken: got %v, want %v", got, b0)
	}
	got, _ = l.LowestFreeBlock([]Block{b0, b1}, nil)
	if got != b2 {
		t.Fatalf("with 0,1 taken: got %v, want %v", got, b2)
	}
	// A node IP outside Docker's range makes the block holding it unusable.
	got, _ = l.LowestFreeBlock([]Block{b1}, []netip.Addr{netip.MustParseAddr("10.224.0.40")})
	if got != b2 {
		t.Fatalf("node IP in block 0: got %v, want %v", got, b2)
	}
	// An existing block of another size overlapping block 0 and 1 is respected.
	odd := Block{Index: -1, First: netip.MustParseAddr("10.224.0.50"), Size: 20}
	got, _ = l.LowestFreeBlock([]Block{odd}, nil)
	if got != b2 {
		t.Fatalf("with an overlapping 20-address block: got %v, want %v", got, b2)
	}
}

// smallLayout is a /26 of five 10-address blocks.
func smallLayout() Layout {
	return Layout{
		Subnet:      netip.MustParsePrefix("10.250.0.0/26"),
		Gateway:     netip.MustParseAddr("10.250.0.1"),
		DockerRange: netip.MustParsePrefix("10.250.0.0/29"),
		BlockSize:   10,
	}
}

func TestLowestFreeBlockExhausted(t *testing.T) {
	l := smallLayout()
	// 64 - 8 reserved - broadcast = 55 usable -> 5 blocks.
	if l.NumBlocks() != 5 {
		t.Fatalf("NumBlocks = %d, want 5", l.NumBlocks())
	}
	var taken []Block
	for range 5 {
		b, err := l.LowestFreeBlock(taken, nil)
		if err != nil {
			t.Fatalf("claim %d: %v", len(taken), err)
		}
		taken = append(taken, b)
	}
	_, err := l.LowestFreeBlock(taken, nil)
	if !errors.Is(err, ErrExhausted) {
		t.Fatalf("6th claim: err = %v, want ErrExhausted", err)
	}
	for _, want := range []string{"10.250.0.0/26", "blockSize 10", "holds 5 blocks"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("exhaustion error %q does not name %q", err, want)
		}
	}
}

func TestLayoutValidate(t *testing.T) {
	for name, tc := range map[string]struct {
		l     Layout
		field string
	}{
		"size too small":   {kindLayout(9), "blockSize 9"},
		"size too large":   {kindLayout(251), "blockSize 251"},
		"host bits":        {Layout{Subnet: netip.MustParsePrefix("10.224.0.5/16"), BlockSize: 30}, "host bits"},
		"ipv6":             {Layout{Subnet: netip.MustParsePrefix("fd00::/64"), BlockSize: 30}, "IPv4"},
		"gateway outside":  {Layout{Subnet: netip.MustParsePrefix("10.224.0.0/16"), Gateway: netip.MustParseAddr("10.1.0.1"), BlockSize: 30}, "gateway"},
		"range outside":    {Layout{Subnet: netip.MustParsePrefix("10.224.0.0/16"), DockerRange: netip.MustParsePrefix("10.1.0.0/27"), BlockSize: 30}, "dockerRange"},
		"reserved outside": {Layout{Subnet: netip.MustParsePrefix("10.224.0.0/16"), Reserved: []netip.Prefix{netip.MustParsePrefix("10.225.255.0/24")}, BlockSize: 30}, "reserved range 10.225.255.0/24"},
		"reserved ipv6":    {Layout{Subnet: netip.MustParsePrefix("10.224.0.0/16"), Reserved: []netip.Prefix{netip.MustParsePrefix("fd00::/120")}, BlockSize: 30}, "reserved range"},
		"no room for one":  {Layout{Subnet: netip.MustParsePrefix("10.224.0.0/28"), BlockSize: 30}, "no room"},
	} {
		t.Run(name, func(t *testing.T) {
			err := tc.l.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("Validate() = %v, want an error naming %q", err, tc.field)
			}
		})
	}
}

func TestBlockContainsAndOffset(t *testing.T) {
	b := Block{First: netip.MustParseAddr("10.224.0.32"), Size: 30}
	if b.Offset(netip.MustParseAddr("10.224.0.32")) != 0 || b.Offset(netip.MustParseAddr("10.224.0.61")) != 29 {
		t.Fatal("offsets at the block edges are wrong")
	}
	if b.Contains(netip.MustParseAddr("10.224.0.62")) || b.Contains(netip.MustParseAddr("10.224.0.31")) {
		t.Fatal("addresses just outside the block are reported inside")
	}
	if b.Nth(29) != netip.MustParseAddr("10.224.0.61") {
		t.Fatalf("Nth(29) = %s", b.Nth(29))
	}
}

// TestLowestFreeBlockNeverHandsOutReserved: claiming every block of a small
// subnet never yields one overlapping a reserved range (the test world), and
// the numbering of the blocks around it does not move.
func TestLowestFreeBlockNeverHandsOutReserved(t *testing.T) {
	plain := smallLayout()
	world := netip.MustParsePrefix("10.250.0.28/30") // inside block 2, 10.250.0.28-37
	l := plain
	l.Reserved = []netip.Prefix{world}
	if err := l.Validate(); err != nil {
		t.Fatal(err)
	}
	var taken []Block
	for {
		b, err := l.LowestFreeBlock(taken, nil)
		if errors.Is(err, ErrExhausted) {
			if !strings.Contains(err.Error(), "1 overlap reserved addresses") {
				t.Errorf("exhaustion error %q does not count the reserved block", err)
			}
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		for a := b.First; b.Contains(a); a = a.Next() {
			if world.Contains(a) {
				t.Fatalf("block %s holds %s of the reserved range %s", b, a, world)
			}
		}
		if pb, _ := plain.Block(b.Index); pb != b {
			t.Fatalf("block %d is %s with the reservation, %s without: numbering moved", b.Index, b, pb)
		}
		taken = append(taken, b)
	}
	if len(taken) != plain.NumBlocks()-1 {
		t.Fatalf("claimed %d blocks, want all %d but the reserved one", len(taken), plain.NumBlocks())
	}
}
