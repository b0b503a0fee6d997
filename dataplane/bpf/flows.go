package bpf

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/cilium/ebpf/ringbuf"

	"github.com/flatnet/flatnet/dataplane/compile"
	"github.com/flatnet/flatnet/dataplane/identity"
	"github.com/flatnet/flatnet/dataplane/policy"
)

// Code is a verdict code of counters and flow events (datapath.h). Drop codes are
// Cilium's drop reasons where Cilium has one.
type Code uint8

const (
	ForwardPolicy      Code = 1
	ForwardEstablished Code = 2
	ForwardReply       Code = 3
	ForwardHost        Code = 4
	ForwardARP         Code = 5 // a valid ARP request or reply
	ForwardService     Code = 6
	ForwardBackend     Code = 7
	ForwardRelated     Code = 8 // an ICMP error about a tracked connection
	DropInvalidSrcMAC  Code = 130
	DropInvalidSource  Code = 132
	DropPolicy         Code = 133
	DropMalformed      Code = 134
	DropUnknownL3      Code = 139
	DropUnroutable     Code = 151
	DropUnsupportedL2  Code = 166
	DropFragNotFound   Code = 175
	DropPolicyDeny     Code = 181
	DropNoEndpoint     Code = 190
	DropNoPolicy       Code = 191
)

// Dropped reports whether the code is a drop.
func (c Code) Dropped() bool { return c >= 128 }

func (c Code) String() string {
	switch c {
	case ForwardPolicy:
		return "allowed by policy"
	case ForwardEstablished:
		return "established connection"
	case ForwardReply:
		return "reply"
	case ForwardHost:
		return "to/from own node"
	case ForwardARP:
		return "ARP"
	case ForwardService:
		return "to a Service (judged after DNAT)"
	case ForwardBackend:
		return "Service backend allowed by policy"
	case ForwardRelated:
		return "related to a tracked connection (ICMP error)"
	case DropInvalidSrcMAC:
		return "invalid source MAC"
	case DropInvalidSource:
		return "invalid source IP"
	case DropPolicy:
		return "policy denied (default deny)"
	case DropMalformed:
		return "invalid packet"
	case DropUnknownL3:
		return "unsupported L3 protocol"
	case DropUnsupportedL2:
		return "unsupported L2 protocol"
	case DropFragNotFound:
		return "first logical datagram fragment not found"
	case DropPolicyDeny:
		return "policy denied by deny rule"
	case DropUnroutable:
		return "unroutable destination (node loopback or 0/8)"
	case DropNoEndpoint:
		return "unknown endpoint"
	case DropNoPolicy:
		return "endpoint without policy"
	}
	return fmt.Sprintf("code %d", uint8(c))
}

// FlowEvent is one event of the ring buffer: a new connection allowed, or a drop.
type FlowEvent struct {
	Monotonic      time.Duration // CLOCK_MONOTONIC at the event
	IfIndex        int
	Src, Dst       netip.Addr
	SrcPort        uint16 // ICMP: the echo id of a request (of a reply: in DstPort)
	DstPort        uint16
	Protocol       uint8
	TCPFlags       uint8
	Direction      policy.Direction // relative to the pod
	Code           Code
	RuleID         compile.RuleID // the matched rule (0 for default deny); name it with compile.Compiler.Rule
	RemoteIdentity identity.ID
	LocalIdentity  identity.ID
	// LostBefore is the events CPU had lost (rate limit or full ring) when this one
	// was written, cumulative since the datapath was loaded: it grows by what CPU
	// lost between two of its events.
	LostBefore uint64
	CPU        uint32 // the CPU that wrote the event
}

// flowPoll bounds how late a flow event reaches the reader.
const flowPoll = 50 * time.Millisecond

// FlowReader reads flow events; one reader per process.
type FlowReader struct {
	rd *ringbuf.Reader
}

// NewFlowReader opens the flow event ring buffer.
func (d *Datapath) NewFlowReader() (*FlowReader, error) {
	rd, err := ringbuf.NewReader(d.objs.FnEvents)
	if err != nil {
		return nil, fmt.Errorf("opening flow ring buffer: %w", err)
	}
	return &FlowReader{rd: rd}, nil
}

// Read blocks for the next event until ctx is done.
func (r *FlowReader) Read(ctx context.Context) (FlowEvent, error) {
	for {
		if err := ctx.Err(); err != nil {
			return FlowEvent{}, err
		}
		// The datapath submits events without waking the reader (until the ring is
		// an eighth full), so the reader polls: at each deadline it takes what is
		// there. This also notices ctx, which the ring buffer's epoll does not.
		r.rd.SetDeadline(time.Now().Add(flowPoll))
		rec, err := r.rd.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			continue
		}
		if err != nil {
			return FlowEvent{}, fmt.Errorf("reading flow ring buffer: %w", err)
		}
		var raw datapathFlowEvent
		if err := binary.Read(bytes.NewReader(rec.RawSample), binary.NativeEndian, &raw); err != nil {
			return FlowEvent{}, fmt.Errorf("decoding flow event of %d bytes: %w", len(rec.RawSample), err)
		}
		return decodeFlow(raw), nil
	}
}

// Close releases the reader.
func (r *FlowReader) Close() error { return r.rd.Close() }

func decodeFlow(raw datapathFlowEvent) FlowEvent {
	dir := policy.Ingress
	if raw.Dir == dirEgress {
		dir = policy.Egress
	}
	return FlowEvent{
		Monotonic:      time.Duration(raw.TsNs),
		IfIndex:        int(raw.Ifindex),
		Src:            addrFromBE(raw.Saddr),
		Dst:            addrFromBE(raw.Daddr),
		SrcPort:        raw.Sport,
		DstPort:        raw.Dport,
		Protocol:       raw.Proto,
		TCPFlags:       raw.TcpFlags,
		Direction:      dir,
		Code:           Code(raw.Code),
		RuleID:         compile.RuleID(raw.RuleId),
		RemoteIdentity: identity.ID(raw.RemoteIdentity),
		LocalIdentity:  identity.ID(raw.LocalIdentity),
		LostBefore:     raw.LostBefore,
		CPU:            raw.Cpu,
	}
}

// SetEventRate sets how many flow events per second each CPU may emit (0 restores
// the default of 2000); the excess is counted in EventsLost.
func (d *Datapath) SetEventRate(_ context.Context, perCPU uint32) error {
	if err := d.updateConfig(func(c *datapathDpConfig) { c.EventsPerSec = perCPU }); err != nil {
		return fmt.Errorf("setting flow event rate: %w", err)
	}
	return nil
}

// SetFlowEvents turns flow events on (the default) or off. Off, the programs emit
// none and count none lost; benchmarks use it to measure what events cost.
func (d *Datapath) SetFlowEvents(_ context.Context, on bool) error {
	if err := d.setConfigFlag(dpFlagNoEvents, !on); err != nil {
		return fmt.Errorf("switching flow events: %w", err)
	}
	return nil
}

// SetHostRouting chooses how traffic between two pods of this node travels: on,
// through the host stack (IP forwarding, netfilter), as before direct delivery and as
// Cilium's legacy host routing; off (the default), handed by the sender's program
// straight to the receiver's veth, for connections no NAT applies to. Policy is the
// same either way.
func (d *Datapath) SetHostRouting(_ context.Context, on bool) error {
	if err := d.setConfigFlag(dpFlagHostRouting, on); err != nil {
		return fmt.Errorf("switching host routing: %w", err)
	}
	return nil
}

// DP_F_* flags of struct dp_config (datapath.h).
const (
	dpFlagNoEvents    = 1
	dpFlagHostRouting = 2
)

// setConfigFlag sets or clears one DP_F_* flag of the config entry.
func (d *Datapath) setConfigFlag(flag uint32, set bool) error {
	return d.updateConfig(func(c *datapathDpConfig) {
		c.Flags &^= flag
		if set {
			c.Flags |= flag
		}
	})
}

// updateConfig rewrites the datapath's config entry, keeping the fields fn leaves.
func (d *Datapath) updateConfig(fn func(*datapathDpConfig)) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var c datapathDpConfig
	if err := d.objs.FnConfig.Lookup(uint32(0), &c); err != nil {
		return err
	}
	fn(&c)
	return d.objs.FnConfig.Put(uint32(0), &c)
}

// EventsLost is the number of flow events dropped by the rate limit or a full ring.
func (d *Datapath) EventsLost(_ context.Context) (uint64, error) {
	var per []datapathEventBudget
	if err := d.objs.FnEventBudget.Lookup(uint32(0), &per); err != nil {
		return 0, fmt.Errorf("reading flow event budget: %w", err)
	}
	var n uint64
	for _, b := range per {
		n += b.Lost
	}
	return n, nil
}

// RetiredIfIndex is the interface index (none is 0) under which the counters of
// removed endpoints are kept, so that the node's sums never go back.
const RetiredIfIndex = 0

// Counter is the packets and bytes of one verdict code on one endpoint direction
// (IfIndex RetiredIfIndex: of the endpoints removed so far).
type Counter struct {
	IfIndex   int
	Direction policy.Direction
	Code      Code
	Packets   uint64
	Bytes     uint64
}

// Counters returns every verdict counter, summed over CPUs.
func (d *Datapath) Counters(_ context.Context) ([]Counter, error) {
	var out []Counter
	var k datapathCounterKey
	var per []datapathCounterVal
	it := d.objs.FnCounters.Iterate()
	for it.Next(&k, &per) {
		c := Counter{IfIndex: int(k.Ifindex), Code: Code(k.Code)}
		if k.Dir == dirEgress {
			c.Direction = policy.Egress
		}
		for _, v := range per {
			c.Packets += v.Packets
			c.Bytes += v.Bytes
		}
		out = append(out, c)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("reading counters: %w", err)
	}
	return out, nil
}
