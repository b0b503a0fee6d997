// Package metrics holds the agent's Prometheus collectors of the policy
// datapath: its counters, map fill and identities, read from the maps at each
// scrape. Labels spell directions, verdicts and drop reasons as flows do
// (Cilium's names).
package metrics

import (
	"context"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flatnet/flatnet/dataplane/bpf"
	"github.com/flatnet/flatnet/dataplane/flows"
	"github.com/flatnet/flatnet/dataplane/identity"
)

// CounterSource is what the datapath counts (bpf.Datapath).
type CounterSource interface {
	Counters(ctx context.Context) ([]bpf.Counter, error)
	EventsLost(ctx context.Context) (uint64, error)
	Identities(ctx context.Context) (map[identity.Sum]identity.ID, error)
}

// MapFiller is what a datapath that reports its maps' fill implements (bpf.Datapath).
type MapFiller interface {
	MapFill(ctx context.Context) ([]bpf.MapFill, error)
}

// PodNamer names the local pod behind an endpoint's host interface
// (enforce.Enforcer): "namespace/name" by ifindex.
type PodNamer interface {
	LocalPods() map[int]string
}

// Collector exports the datapath's counters, read from its maps at each scrape.
// Labels are bounded: direction (2) x verdict (2) x reason (the fixed code list),
// summed over endpoints, those removed included (the datapath keeps their counts
// under bpf.RetiredIfIndex): a pod's deletion never takes a node's counter back.
// Per pod (WithPods) the reason is left out: namespace/pod (at most the node's
// block of addresses) x direction x verdict; a pod's series ends with the pod.
type Collector struct {
	src                  CounterSource
	pods                 PodNamer
	packets, bytes, lost *prometheus.Desc
	podPackets, podBytes *prometheus.Desc
	mapEntries, mapCap   *prometheus.Desc
	identities, errs     *prometheus.Desc
}

// NewCollector reads src on every scrape.
func NewCollector(src CounterSource) *Collector {
	l := []string{"direction", "verdict", "reason"}
	return &Collector{
		src: src,
		packets: prometheus.NewDesc("flatnet_datapath_packets_total",
			"Packets judged by the policy datapath on this node's pod interfaces, by verdict and reason.", l, nil),
		bytes: prometheus.NewDesc("flatnet_datapath_bytes_total",
			"Bytes judged by the policy datapath on this node's pod interfaces, by verdict and reason.", l, nil),
		lost: prometheus.NewDesc("flatnet_flow_events_lost_total",
			"Flow events the datapath could not emit (per-CPU rate limit or full ring buffer).", nil, nil),
		identities: prometheus.NewDesc("flatnet_identities",
			"Security identities stored in this node's datapath.", nil, nil),
		podPackets: prometheus.NewDesc("flatnet_endpoint_packets_total",
			"Packets judged by the policy datapath per local pod, by direction and verdict.", []string{"namespace", "pod", "direction", "verdict"}, nil),
		podBytes: prometheus.NewDesc("flatnet_endpoint_bytes_total",
			"Bytes judged by the policy datapath per local pod, by direction and verdict.", []string{"namespace", "pod", "direction", "verdict"}, nil),
		mapEntries: prometheus.NewDesc("flatnet_bpf_map_entries",
			"Entries in a datapath map (policy: endpoints with a policy map).", []string{"map"}, nil),
		mapCap: prometheus.NewDesc("flatnet_bpf_map_capacity",
			"max_entries of a datapath map.", []string{"map"}, nil),
		errs: prometheus.NewDesc("flatnet_datapath_scrape_errors",
			"1 when the last scrape could not read a datapath map (the metrics above are then missing).", []string{"map"}, nil),
	}
}

// WithPods adds the per-pod counters, naming endpoints with p.
func (c *Collector) WithPods(p PodNamer) *Collector {
	c.pods = p
	return c
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.packets
	ch <- c.bytes
	ch <- c.lost
	ch <- c.identities
	ch <- c.errs
	// Described whether or not they are collected (no PodNamer, no MapFiller).
	ch <- c.podPackets
	ch <- c.podBytes
	ch <- c.mapEntries
	ch <- c.mapCap
}

type podKey struct{ pod, dir, verdict string }

type counterKey struct{ dir, verdict, reason string }

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	fail := func(m string, err error) {
		v := 0.0
		if err != nil {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(c.errs, prometheus.GaugeValue, v, m)
	}
	counters, err := c.src.Counters(ctx)
	fail("counters", err)
	if err == nil {
		sums := map[counterKey][2]uint64{}
		var names map[int]string
		podSums := map[podKey][2]uint64{}
		if c.pods != nil {
			names = c.pods.LocalPods()
		}
		for _, k := range counters {
			key := counterKey{dir: flows.Ingress, verdict: flows.VerdictForwarded, reason: reasonLabel(k.Code)}
			if k.Direction != 0 {
				key.dir = flows.Egress
			}
			if k.Code.Dropped() {
				key.verdict = flows.VerdictDropped
			}
			s := sums[key]
			s[0] += k.Packets
			s[1] += k.Bytes
			sums[key] = s
			if pod, ok := names[k.IfIndex]; ok {
				pk := podKey{pod: pod, dir: key.dir, verdict: key.verdict}
				s := podSums[pk]
				s[0] += k.Packets
				s[1] += k.Bytes
				podSums[pk] = s
			}
		}
		for k, s := range sums {
			ch <- prometheus.MustNewConstMetric(c.packets, prometheus.CounterValue, float64(s[0]), k.dir, k.verdict, k.reason)
			ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.CounterValue, float64(s[1]), k.dir, k.verdict, k.reason)
		}
		for k, s := range podSums {
			ns, name, _ := strings.Cut(k.pod, "/")
			ch <- prometheus.MustNewConstMetric(c.podPackets, prometheus.CounterValue, float64(s[0]), ns, name, k.dir, k.verdict)
			ch <- prometheus.MustNewConstMetric(c.podBytes, prometheus.CounterValue, float64(s[1]), ns, name, k.dir, k.verdict)
		}
	}
	if mf, ok := c.src.(MapFiller); ok {
		fill, err := mf.MapFill(ctx)
		fail("map_fill", err)
		for _, f := range fill {
			ch <- prometheus.MustNewConstMetric(c.mapEntries, prometheus.GaugeValue, float64(f.Entries), f.Map)
			ch <- prometheus.MustNewConstMetric(c.mapCap, prometheus.GaugeValue, float64(f.Capacity), f.Map)
		}
	}
	lost, err := c.src.EventsLost(ctx)
	fail("events_lost", err)
	if err == nil {
		ch <- prometheus.MustNewConstMetric(c.lost, prometheus.CounterValue, float64(lost))
	}
	ids, err := c.src.Identities(ctx)
	fail("identities", err)
	if err == nil {
		ch <- prometheus.MustNewConstMetric(c.identities, prometheus.GaugeValue, float64(len(ids)))
	}
}

// reasonLabel keeps the label set bounded: a code outside the known list is "other".
func reasonLabel(code bpf.Code) string {
	if code.Dropped() {
		if s, ok := flows.DropReason(code); ok {
			return s
		}
		return "other"
	}
	switch code {
	case bpf.ForwardPolicy:
		return "POLICY_ALLOWED"
	case bpf.ForwardEstablished:
		return "ESTABLISHED"
	case bpf.ForwardReply:
		return "REPLY"
	case bpf.ForwardHost:
		return "HOST"
	case bpf.ForwardARP:
		return "ARP"
	case bpf.ForwardRelated:
		return "RELATED"
	case bpf.ForwardService:
		return "SERVICE"
	case bpf.ForwardBackend:
		return "SERVICE_BACKEND"
	}
	return "other"
}
