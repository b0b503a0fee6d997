package peer_test

import (
	"context"
	"fmt"
	"testing"

	peerpb "github.com/cilium/cilium/api/v1/peer"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/flatnet/flatnet/dataplane/hubble/peer"
)

// BenchmarkNotifySubscribe is what a relay (re)connecting costs: a Notify
// stream over real gRPC that receives PEER_ADDED for every node of the cluster.
func BenchmarkNotifySubscribe(b *testing.B) {
	for _, nodes := range []int{3, 1000} {
		b.Run(fmt.Sprintf("nodes=%d", nodes), func(b *testing.B) {
			objs := make([]runtime.Object, nodes)
			for i := range objs {
				objs[i] = node(fmt.Sprintf("node-%04d", i), internal(fmt.Sprintf("10.224.%d.%d", i/250, i%250+1)))
			}
			c := serve(b, fake.NewClientset(objs...), peer.Options{Port: 4244})
			b.ReportAllocs()
			for b.Loop() {
				ctx, cancel := context.WithCancel(context.Background())
				s, err := c.Notify(ctx, &peerpb.NotifyRequest{})
				if err != nil {
					b.Fatal(err)
				}
				recv(b, s, nodes)
				cancel() // the stream ends: the server drops its handler
			}
		})
	}
}
