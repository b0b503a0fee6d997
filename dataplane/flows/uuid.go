package flows

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"sync/atomic"

	"github.com/google/uuid"
)

// flowIDs names flows with UUIDs in RFC 4122 version 4 form (what Hubble's flow.uuid
// holds and its uuid filter matches) without reading crypto/rand per flow, which
// cost microseconds per flow under load: 60 random bits drawn once per enricher
// (one per agent run), then a 62-bit counter. IDs are unique within an agent run by
// the counter, and across agents and restarts by the random prefix (that some two
// of a million runs share one has probability ~2^-21). They are sequential, hence
// guessable: they identify flows, they are no secret.
type flowIDs struct {
	prefix uint64 // bytes 0-7 of every ID, version nibble set
	n      atomic.Uint64
}

func newFlowIDs() (*flowIDs, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, fmt.Errorf("drawing the random prefix of flow UUIDs: %w", err)
	}
	b[6] = b[6]&0x0f | 0x40 // version 4
	return &flowIDs{prefix: binary.BigEndian.Uint64(b[:])}, nil
}

// next returns a new ID; safe from any goroutine.
func (g *flowIDs) next() string {
	var u uuid.UUID
	binary.BigEndian.PutUint64(u[:8], g.prefix)
	// The counter's top two bits give way to the RFC 4122 variant (10): 2^62
	// flows are out of any run's reach.
	binary.BigEndian.PutUint64(u[8:], g.n.Add(1)&(1<<62-1)|1<<63)
	return u.String()
}
