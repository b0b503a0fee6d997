package flows

import (
	"context"

	"github.com/flatnet/flatnet/dataplane/bpf"
)

// EventReader is the datapath's flow event reader (bpf.FlowReader).
type EventReader interface {
	Read(ctx context.Context) (bpf.FlowEvent, error)
}

// Run reads events into store, handing each flow to observe first (every flow, in
// order; an observer must not block), until ctx ends; it returns the reader's error
// otherwise.
func Run(ctx context.Context, rd EventReader, en *Enricher, store *Store, observe ...func(*Response)) error {
	for {
		ev, err := rd.Read(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil // shutting down: the reader may be closed under us
			}
			return err
		}
		f := en.Flow(ev)
		r := &Response{Flow: f, NodeName: f.NodeName, Time: f.Time}
		for _, o := range observe {
			o(r)
		}
		store.Add(r)
	}
}
