// Package ipv4 holds Prefix, the only prefix type the compiler and the datapath accept:
// an IPv4 block that is valid and masked by construction. flatnet's datapath is
// IPv4-only; an address family or prefix length it cannot key must be refused where
// the value enters (a policy field, a flag), never discovered when a map is written.
package ipv4

import (
	"cmp"
	"fmt"
	"net/netip"
)

// Prefix is an IPv4 prefix with its host bits cleared. The zero Prefix is 0.0.0.0/0.
type Prefix struct {
	addr [4]byte
	bits uint8 // 0..32
}

// PrefixFrom converts p, masking host bits. It refuses invalid prefixes and every
// non-IPv4 address, IPv4-mapped IPv6 (::ffff:a.b.c.d) included: such a block is
// written as IPv4 (see Unmapped).
func PrefixFrom(p netip.Prefix) (Prefix, error) {
	if !p.IsValid() {
		return Prefix{}, fmt.Errorf("%v is not a valid prefix", p)
	}
	if !p.Addr().Is4() {
		return Prefix{}, fmt.Errorf("%v is not an IPv4 prefix", p)
	}
	return Prefix{addr: p.Masked().Addr().As4(), bits: uint8(p.Bits())}, nil
}

// From4 is the prefix of addr/bits as a datapath key stores it.
func From4(addr [4]byte, bits int) (Prefix, error) {
	return PrefixFrom(netip.PrefixFrom(netip.AddrFrom4(addr), bits))
}

// HostPrefix is the /32 of an IPv4 address.
func HostPrefix(a netip.Addr) (Prefix, error) {
	return PrefixFrom(netip.PrefixFrom(a, 32))
}

// ParsePrefix parses "a.b.c.d/n".
func ParsePrefix(s string) (Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return Prefix{}, err
	}
	return PrefixFrom(p)
}

// MustParsePrefix is ParsePrefix for constants; it panics on error.
func MustParsePrefix(s string) Prefix {
	p, err := ParsePrefix(s)
	if err != nil {
		panic(err)
	}
	return p
}

// Unmapped is the IPv4 block an IPv4-mapped IPv6 prefix (::ffff:0:0/96 and inside
// it) stands for, e.g. ::ffff:10.0.0.0/104 -> 10.0.0.0/8; ok is false for any other
// prefix. Error messages use it to say what to write instead.
func Unmapped(p netip.Prefix) (Prefix, bool) {
	if !p.IsValid() || !p.Addr().Is4In6() || p.Bits() < 96 {
		return Prefix{}, false
	}
	q, err := PrefixFrom(netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96))
	return q, err == nil
}

// Addr is the block's first address.
func (p Prefix) Addr() netip.Addr { return netip.AddrFrom4(p.addr) }

// Addr4 is the first address as 4 bytes in network order.
func (p Prefix) Addr4() [4]byte { return p.addr }

// Bits is the prefix length, 0..32.
func (p Prefix) Bits() int { return int(p.bits) }

// Netip is p as a netip.Prefix.
func (p Prefix) Netip() netip.Prefix { return netip.PrefixFrom(p.Addr(), p.Bits()) }

func (p Prefix) String() string { return p.Netip().String() }

// Contains reports whether a lies in the block (false for any non-IPv4 address).
func (p Prefix) Contains(a netip.Addr) bool { return p.Netip().Contains(a) }

// Within reports whether p lies inside outer (equal included).
func (p Prefix) Within(outer Prefix) bool {
	return outer.bits <= p.bits && outer.Contains(p.Addr())
}

// Compare orders by address, then by length.
func (p Prefix) Compare(q Prefix) int {
	if c := p.Addr().Compare(q.Addr()); c != 0 {
		return c
	}
	return cmp.Compare(p.bits, q.bits)
}
