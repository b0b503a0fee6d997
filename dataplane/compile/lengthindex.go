package compile

import (
	"encoding/binary"

	"github.com/flatnet/flatnet/dataplane/ipv4"
)

// lengthIndex maps prefixes to values, split by prefix length, so that the questions
// the prefixes ask of thousands of rule prefixes (which ones hold a prefix, which lie
// inside a block, which is the longest to hold an address) cost one map lookup per
// length, or a walk of just the prefixes of a length, never a walk of them all.
type lengthIndex[V any] [33]map[ipv4.Prefix]V

func (x *lengthIndex[V]) get(p ipv4.Prefix) (V, bool) {
	v, ok := x[p.Bits()][p]
	return v, ok
}

func (x *lengthIndex[V]) set(p ipv4.Prefix, v V) {
	if x[p.Bits()] == nil {
		x[p.Bits()] = map[ipv4.Prefix]V{}
	}
	x[p.Bits()][p] = v
}

func (x *lengthIndex[V]) del(p ipv4.Prefix) { delete(x[p.Bits()], p) }

// covering calls f for every indexed prefix that p lies within, p included.
func (x *lengthIndex[V]) covering(p ipv4.Prefix, f func(ipv4.Prefix, V)) {
	a := addrBits(p.Addr4())
	for bits := 0; bits <= p.Bits(); bits++ {
		if len(x[bits]) == 0 {
			continue
		}
		q := prefixOf(a, bits)
		if v, ok := x[bits][q]; ok {
			f(q, v)
		}
	}
}

// within calls f for every indexed prefix lying within block, block included. Per
// length it looks up the block's subnets of that length or walks the prefixes of
// that length, whichever are fewer.
func (x *lengthIndex[V]) within(block ipv4.Prefix, f func(ipv4.Prefix, V)) {
	base := addrBits(block.Addr4())
	for bits := block.Bits(); bits <= 32; bits++ {
		m := x[bits]
		if len(m) == 0 {
			continue
		}
		if subnets := uint64(1) << (bits - block.Bits()); subnets < uint64(len(m)) {
			for i := range subnets {
				q := prefixOf(base|uint32(i<<(32-bits)), bits)
				if v, ok := m[q]; ok {
					f(q, v)
				}
			}
			continue
		}
		for q, v := range m {
			if q.Within(block) {
				f(q, v)
			}
		}
	}
}

// longest returns the value of the longest indexed prefix holding a.
func (x *lengthIndex[V]) longest(a [4]byte) (v V, ok bool) {
	ab := addrBits(a)
	for bits := 32; bits >= 0; bits-- {
		if len(x[bits]) == 0 {
			continue
		}
		if v, ok := x[bits][prefixOf(ab, bits)]; ok {
			return v, true
		}
	}
	return v, false
}

func addrBits(a [4]byte) uint32 { return binary.BigEndian.Uint32(a[:]) }

// prefixOf is the prefix of length bits holding address a.
func prefixOf(a uint32, bits int) ipv4.Prefix {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], a)
	p, err := ipv4.From4(b, bits)
	if err != nil {
		panic(err) // 0 <= bits <= 32 and an IPv4 address by construction
	}
	return p
}
