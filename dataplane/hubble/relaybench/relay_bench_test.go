package relaybench

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	observerpb "github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/flatnet/flatnet/dataplane/flows"
)

// flow is flow i of an agent, at time at, between two pods of Deployments;
// port tells measured flows from filler (see follow).
func flow(node string, i int, at time.Time, port uint16) *flows.Response {
	f := &flows.Flow{
		Time: at, UUID: fmt.Sprintf("%s-%d", node, i), Verdict: flows.VerdictForwarded,
		IP: &flows.IP{Source: netip.AddrFrom4([4]byte{10, 244, byte(i >> 8), byte(i)}).String(), Destination: "10.244.9.9", IPVersion: "IPv4"},
		L4: &flows.Layer4{TCP: &flows.TCP{SourcePort: uint16(10000 + i%50000), DestinationPort: port, Flags: &flows.TCPFlags{SYN: true}}},
		Source: &flows.Endpoint{Identity: 30001, ClusterName: "default", Namespace: "shop", PodName: fmt.Sprintf("client-7d4b9-%d", i%100),
			Labels: []string{"k8s:app=client"}, Workloads: []flows.Workload{{Name: "client", Kind: "Deployment"}}},
		Destination: &flows.Endpoint{Identity: 30002, ClusterName: "default", Namespace: "shop", PodName: "server-0",
			Labels: []string{"k8s:app=server"}, Workloads: []flows.Workload{{Name: "server", Kind: "StatefulSet"}}},
		Type: "L3_L4", NodeName: node, EventType: flows.EventType{Type: 4}, TrafficDirection: flows.Ingress,
		TraceObservationPoint: "TO_ENDPOINT", Summary: "TCP Flags: SYN",
	}
	return &flows.Response{Flow: f, NodeName: node, Time: at}
}

// BenchmarkRelay reads flows through the upstream hubble-relay merging 3 agents
// and straight from one of them, interleaved in the same run, and reports both
// and the ratio (the relay's merge cost). Nothing is asserted.
//
//   - history: each op is one request for the newest 10,000 flows (as `hubble
//     observe --last 10000`) of full stores (10,000 flows per agent), to one
//     agent directly and to the relay, which asks every agent for that many
//     and merges them by time: 30,000 flows. Metrics: flows/s of each, their
//     ratio, and the relay process's CPU per flow it passed.
//   - follow: each op adds one flow to every agent (paced, 1 ms apart) while a
//     client follows one agent directly and another follows the relay; latency
//     is a flow's time from Add to the client. The relay holds flows in its
//     sort buffer (len 100, drain timeout 1 s, as deployed) until 100 are
//     waiting: at 3,000 flows/s that is about 33 ms.
func BenchmarkRelay(b *testing.B) {
	c := startCluster(b, relayBinary(b))
	b.Run("history", func(b *testing.B) { history(b, c) })
	b.Run("follow", func(b *testing.B) { follow(b, c) })
}

func history(b *testing.B, c *cluster) {
	t0 := time.Now().Add(-time.Hour)
	for n, a := range c.agents {
		for i := range flows.DefaultCapacity {
			// Interleaved in time across agents, so the relay's merge has work.
			a.store.Add(flow(a.name, i, t0.Add(time.Duration(i*nodes+n)*time.Millisecond), 80))
		}
	}
	req := &observerpb.GetFlowsRequest{Number: flows.DefaultCapacity}
	get := func(client observerpb.ObserverClient) (int, time.Duration) {
		start := time.Now()
		stream, err := client.GetFlows(context.Background(), req)
		if err != nil {
			b.Fatal(err)
		}
		var got int
		if err := read(stream, func(*observerpb.GetFlowsResponse) bool { got++; return true }); err != nil {
			b.Fatal(err)
		}
		return got, time.Since(start)
	}
	get(c.agents[0].client) // build and cache every flow's proto, as any first reader does
	get(c.relay)
	var direct, relay []float64
	var directFlows, relayFlows int
	var directTime, relayTime time.Duration
	ticks0, err := cpuTicks(c.pid)
	if err != nil {
		b.Fatal(err)
	}
	for i := 0; b.Loop(); i++ {
		// Alternate which goes first, so that drift hits both alike.
		order := []observerpb.ObserverClient{c.agents[0].client, c.relay}
		if i%2 == 1 {
			slices.Reverse(order)
		}
		for _, client := range order {
			n, d := get(client)
			if client == c.relay {
				relay, relayFlows, relayTime = append(relay, float64(n)/d.Seconds()), relayFlows+n, relayTime+d
			} else {
				direct, directFlows, directTime = append(direct, float64(n)/d.Seconds()), directFlows+n, directTime+d
			}
		}
	}
	ticks1, _ := cpuTicks(c.pid)
	d, r := median(direct), median(relay)
	b.ReportMetric(d, "direct-flows/s")
	b.ReportMetric(r, "relay-flows/s")
	b.ReportMetric(r/d, "relay/direct")
	b.ReportMetric(float64(directFlows)/float64(b.N), "direct-flows/op")
	b.ReportMetric(float64(relayFlows)/float64(b.N), "relay-flows/op")
	b.ReportMetric(float64(time.Duration(ticks1-ticks0)*10*time.Millisecond)/float64(relayFlows), "relay-cpu-ns/flow")
	b.ReportMetric(float64(directTime.Microseconds())/1e3/float64(b.N), "direct-ms/request")
	b.ReportMetric(float64(relayTime.Microseconds())/1e3/float64(b.N), "relay-ms/request")
}

func follow(b *testing.B, c *cluster) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	since := timestamppb.Now()
	// Each reader counts the measured flows (port 80) it should get: one agent's
	// directly, every agent's through the relay.
	type reader struct {
		name    string
		client  observerpb.ObserverClient
		want    int
		latency []time.Duration
	}
	readers := []*reader{{name: "direct", client: c.agents[0].client, want: b.N}, {name: "relay", client: c.relay, want: nodes * b.N}}
	var wg sync.WaitGroup
	done := make(chan struct{})
	for _, r := range readers {
		stream, err := r.client.GetFlows(ctx, &observerpb.GetFlowsRequest{Follow: true, Since: since})
		if err != nil {
			b.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := read(stream, func(resp *observerpb.GetFlowsResponse) bool {
				f := resp.GetFlow()
				if f.GetL4().GetTCP().GetDestinationPort() != 80 {
					return true
				}
				r.latency = append(r.latency, time.Since(f.GetTime().AsTime()))
				return len(r.latency) < r.want
			})
			if err != nil && ctx.Err() == nil {
				b.Errorf("%s: %v", r.name, err)
			}
		}()
	}
	go func() { wg.Wait(); close(done) }()
	time.Sleep(500 * time.Millisecond) // the relay opens its streams to the agents
	b.ResetTimer()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	// b.N measured flows per agent, then filler (port 81) until every reader
	// has its measured ones: the relay's sort buffer drains a partly full
	// buffer one flow per second, which is no steady state.
	for i := 0; ; i++ {
		port := uint16(80)
		if i >= b.N {
			port = 81
		}
		now := time.Now()
		for _, a := range c.agents {
			a.store.Add(flow(a.name, i, now, port))
		}
		select {
		case <-done:
			b.StopTimer()
			for _, r := range readers {
				b.ReportMetric(float64(quantile(r.latency, 0.5).Microseconds()), r.name+"-p50-µs")
				b.ReportMetric(float64(quantile(r.latency, 0.99).Microseconds()), r.name+"-p99-µs")
			}
			b.ReportMetric(float64(quantile(readers[1].latency, 0.5))/float64(quantile(readers[0].latency, 0.5)), "relay/direct-p50")
			return
		case <-tick.C:
		case <-time.After(2 * time.Minute):
			b.Fatalf("readers got %d and %d of %d and %d measured flows in 2 minutes", len(readers[0].latency), len(readers[1].latency), readers[0].want, readers[1].want)
		}
	}
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

func quantile(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[int(float64(len(s)-1)*q)]
}
