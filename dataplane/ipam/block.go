package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
)

// Block sizes a node may be given. Azure CNI node-subnet mode pre-assigns 30
// addresses per node by default and allows 10..250; flatnet keeps the same
// bounds because the kubelet's maxPods is set to the block size.
const (
	MinBlockSize     = 10
	MaxBlockSize     = 250
	DefaultBlockSize = 30
)

// Block is a run of Size consecutive addresses starting at First, owned by one node.
type Block struct {
	// Index numbers the block inside its Layout; -1 when unknown (a block
	// handed to the CNI plugin in its config carries no index).
	Index int
	First netip.Addr
	Size  int
}

// Last is the block's highest address.
func (b Block) Last() netip.Addr { return addN(b.First, b.Size-1) }

// Contains reports whether a lies inside the block.
func (b Block) Contains(a netip.Addr) bool {
	return a.Is4() && b.First.Is4() && !a.Less(b.First) && !b.Last().Less(a)
}

// Nth returns the block's i-th address (0-based); i must be in [0, Size).
func (b Block) Nth(i int) netip.Addr { return addN(b.First, i) }

// Offset returns a's position inside the block, or -1 when outside.
func (b Block) Offset(a netip.Addr) int {
	if !b.Contains(a) {
		return -1
	}
	return int(diff(b.First, a))
}

// Overlaps reports whether b and o share at least one address.
func (b Block) Overlaps(o Block) bool {
	return !b.Last().Less(o.First) && !o.Last().Less(b.First)
}

func (b Block) String() string {
	return fmt.Sprintf("%s-%s (%d addresses)", b.First, b.Last(), b.Size)
}

// Layout is the fixed carving of the node subnet into blocks. It is a pure
// value: the same inputs give the same block numbering on every node and in
// every agent restart, which is what lets block objects be named by index.
type Layout struct {
	// Subnet is the node subnet (the kind docker network), e.g. 10.224.0.0/16.
	Subnet netip.Prefix
	// Gateway is Docker's gateway address on that network, e.g. 10.224.0.1.
	Gateway netip.Addr
	// DockerRange is Docker's --ip-range, where Docker places the node
	// containers themselves, e.g. 10.224.0.0/27. May be invalid (unset).
	DockerRange netip.Prefix
	// Reserved are further ranges of the subnet never handed to a pod, e.g.
	// the test world's (TEST_WORLD_CIDR): a block overlapping one is skipped,
	// as one holding a node address is, so the block numbering stays the same.
	Reserved []netip.Prefix
	// BlockSize is the number of addresses per block (MinBlockSize..MaxBlockSize).
	BlockSize int
}

// ErrExhausted is wrapped by every "no free block" error.
var ErrExhausted = errors.New("node subnet has no free address block")

// Validate checks the layout and names the field at fault.
func (l Layout) Validate() error {
	if !l.Subnet.IsValid() || !l.Subnet.Addr().Is4() {
		return fmt.Errorf("subnet %q: must be an IPv4 CIDR such as 10.224.0.0/16", l.Subnet)
	}
	if l.Subnet != l.Subnet.Masked() {
		return fmt.Errorf("subnet %s: has host bits set; use %s", l.Subnet, l.Subnet.Masked())
	}
	if l.Subnet.Bits() > 30 {
		return fmt.Errorf("subnet %s: too small to hold pod blocks; use a /30 or larger (e.g. /16)", l.Subnet)
	}
	if l.BlockSize < MinBlockSize || l.BlockSize > MaxBlockSize {
		return fmt.Errorf("blockSize %d: must be between %d and %d (Azure's per-node range; it also becomes the kubelet's maxPods)", l.BlockSize, MinBlockSize, MaxBlockSize)
	}
	if l.Gateway.IsValid() && !l.Subnet.Contains(l.Gateway) {
		return fmt.Errorf("gateway %s: not inside subnet %s; use the docker network's gateway", l.Gateway, l.Subnet)
	}
	if l.DockerRange.IsValid() {
		if !l.DockerRange.Addr().Is4() || l.DockerRange.Bits() < l.Subnet.Bits() || !l.Subnet.Contains(l.DockerRange.Addr()) {
			return fmt.Errorf("dockerRange %s: must be a CIDR inside subnet %s (docker network create --ip-range)", l.DockerRange, l.Subnet)
		}
	}
	for _, r := range l.Reserved {
		if !r.IsValid() || !r.Addr().Is4() || r.Bits() < l.Subnet.Bits() || !l.Subnet.Contains(r.Addr()) {
			return fmt.Errorf("reserved range %s: must be an IPv4 CIDR inside subnet %s (e.g. TEST_WORLD_CIDR of kind-configs/network.env)", r, l.Subnet)
		}
	}
	if l.NumBlocks() == 0 {
		return fmt.Errorf("subnet %s: no room for a single block of %d addresses after the reserved ranges; use a larger subnet or a smaller blockSize", l.Subnet, l.BlockSize)
	}
	return nil
}

// broadcast is the subnet's last address.
func (l Layout) broadcast() netip.Addr {
	return addN(l.Subnet.Addr(), int(uint64(1)<<(32-l.Subnet.Bits()))-1)
}

// Origin is the first address of block 0: the first address after the run of
// reserved addresses at the start of the subnet (network address, Docker's
// gateway, Docker's --ip-range). With 10.224.0.0/16, gateway .1 and range
// 10.224.0.0/27 it is 10.224.0.32.
func (l Layout) Origin() netip.Addr {
	a := l.Subnet.Addr().Next()
	for l.Subnet.Contains(a) {
		switch {
		case l.DockerRange.IsValid() && l.DockerRange.Contains(a):
			a = lastOf(l.DockerRange).Next()
		case a == l.Gateway:
			a = a.Next()
		default:
			return a
		}
	}
	return a
}

// NumBlocks is how many whole blocks fit between Origin and the broadcast address.
func (l Layout) NumBlocks() int {
	o := l.Origin()
	if !l.Subnet.Contains(o) || l.BlockSize <= 0 {
		return 0
	}
	usable := diff(o, l.broadcast()) // addresses from origin up to, not including, broadcast
	return int(usable / uint64(l.BlockSize))
}

// Block returns block i of the layout.
func (l Layout) Block(i int) (Block, error) {
	if i < 0 || i >= l.NumBlocks() {
		return Block{}, fmt.Errorf("block index %d: outside 0..%d for subnet %s with blockSize %d", i, l.NumBlocks()-1, l.Subnet, l.BlockSize)
	}
	return Block{Index: i, First: addN(l.Origin(), i*l.BlockSize), Size: l.BlockSize}, nil
}

// reserved reports whether a block contains an address nobody may hand to a pod.
func (l Layout) reserved(b Block, nodeIPs []netip.Addr) bool {
	if b.Contains(l.Subnet.Addr()) || b.Contains(l.broadcast()) || (l.Gateway.IsValid() && b.Contains(l.Gateway)) {
		return true
	}
	if l.DockerRange.IsValid() {
		r := Block{First: l.DockerRange.Addr(), Size: int(diff(l.DockerRange.Addr(), lastOf(l.DockerRange))) + 1}
		if b.Overlaps(r) {
			return true
		}
	}
	for _, r := range l.Reserved {
		if b.Overlaps(Block{First: r.Masked().Addr(), Size: int(diff(r.Masked().Addr(), lastOf(r))) + 1}) {
			return true
		}
	}
	return slices.ContainsFunc(nodeIPs, b.Contains)
}

// LowestFreeBlock picks the lowest-index block that overlaps no existing
// block (whatever its size) and holds no reserved address (network,
// broadcast, gateway, Docker's range, a reserved range, any node IP). It is pure: the cluster
// record decides who actually gets it (see the cluster package).
func (l Layout) LowestFreeBlock(existing []Block, nodeIPs []netip.Addr) (Block, error) {
	if err := l.Validate(); err != nil {
		return Block{}, err
	}
	n, reserved := l.NumBlocks(), 0
	for i := range n {
		b, _ := l.Block(i)
		if l.reserved(b, nodeIPs) {
			reserved++
			continue
		}
		if slices.ContainsFunc(existing, b.Overlaps) {
			continue
		}
		return b, nil
	}
	return Block{}, fmt.Errorf("%w: subnet %s with blockSize %d holds %d blocks (%d overlap reserved addresses, %d existing blocks claimed); use a larger node subnet, a smaller blockSize, or release the blocks of deleted nodes",
		ErrExhausted, l.Subnet, l.BlockSize, n, reserved, len(existing))
}

func lastOf(p netip.Prefix) netip.Addr {
	return addN(p.Masked().Addr(), int(uint64(1)<<(32-p.Bits()))-1)
}

// addN adds n to an IPv4 address, saturating at 255.255.255.255.
func addN(a netip.Addr, n int) netip.Addr {
	v := uint64(be32(a.As4())) + uint64(n)
	if v > 0xffffffff {
		v = 0xffffffff
	}
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// diff returns b - a for IPv4 addresses with a <= b.
func diff(a, b netip.Addr) uint64 {
	x, y := a.As4(), b.As4()
	return uint64(be32(y)) - uint64(be32(x))
}

func be32(b [4]byte) uint32 {
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}
