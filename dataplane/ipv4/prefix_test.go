package ipv4

import (
	"net/netip"
	"testing"
)

func TestPrefixFromRefusesWhatTheDatapathCannotKey(t *testing.T) {
	for _, s := range []string{"::ffff:10.0.0.0/104", "::ffff:0:0/96", "2001:db8::/32", "::/0"} {
		if p, err := PrefixFrom(netip.MustParsePrefix(s)); err == nil {
			t.Errorf("PrefixFrom(%s) = %v, want an error", s, p)
		}
	}
	if p, err := PrefixFrom(netip.Prefix{}); err == nil {
		t.Errorf("PrefixFrom(zero netip.Prefix) = %v, want an error", p)
	}
	if _, err := HostPrefix(netip.MustParseAddr("::ffff:10.1.2.3")); err == nil {
		t.Errorf("HostPrefix of a mapped address must fail")
	}
	p, err := PrefixFrom(netip.MustParsePrefix("10.1.2.3/8"))
	if err != nil || p.String() != "10.0.0.0/8" || p.Bits() != 8 {
		t.Fatalf("PrefixFrom(10.1.2.3/8) = %v, %v, want 10.0.0.0/8 (masked)", p, err)
	}
	if (Prefix{}).String() != "0.0.0.0/0" {
		t.Errorf("zero Prefix = %v, want 0.0.0.0/0", Prefix{})
	}
	if _, err := From4([4]byte{10}, 33); err == nil {
		t.Errorf("From4 with 33 bits must fail")
	}
}

func TestUnmapped(t *testing.T) {
	for in, want := range map[string]string{"::ffff:10.0.0.0/104": "10.0.0.0/8", "::ffff:10.1.2.3/128": "10.1.2.3/32", "::ffff:0:0/96": "0.0.0.0/0"} {
		got, ok := Unmapped(netip.MustParsePrefix(in))
		if !ok || got.String() != want {
			t.Errorf("Unmapped(%s) = %v, %v, want %s", in, got, ok, want)
		}
	}
	for _, in := range []string{"10.0.0.0/8", "::ffff:0:0/95", "2001:db8::/32"} {
		if _, ok := Unmapped(netip.MustParsePrefix(in)); ok {
			t.Errorf("Unmapped(%s) must be false", in)
		}
	}
}

func TestWithin(t *testing.T) {
	a, b := MustParsePrefix("10.0.0.0/8"), MustParsePrefix("10.1.0.0/16")
	if !b.Within(a) || a.Within(b) || !a.Within(a) || !a.Within(Prefix{}) {
		t.Fatal("Within is wrong")
	}
}
