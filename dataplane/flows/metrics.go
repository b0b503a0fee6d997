package flows

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flatnet/flatnet/dataplane/bpf"
	"github.com/flatnet/flatnet/dataplane/identity"
)

// CounterSource is what the datapath counts (bpf.Datapath).
type CounterSource interface {
	Counters(ctx context.Context) ([]bpf.Counter, error)
	EventsLost(ctx context.Context) (uint64, error)
	Identities(ctx context.Context) (map[identity.Sum]identity.ID, error)
}

// Collector exports the datapath's counters, read from its maps at each scrape.
// Labels are bounded: direction (2) x verdict (2) x reason (the fixed code list),
// summed over endpoints; an endpoint's counters leave the sums when it is removed,
// which Prometheus sees as a counter reset.
type Collector struct {
	src                  CounterSource
	packets, bytes, lost *prometheus.Desc
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
		errs: prometheus.NewDesc("flatnet_datapath_scrape_errors",
			"1 when the last scrape could not read a datapath map (the metrics above are then missing).", []string{"map"}, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.packets
	ch <- c.bytes
	ch <- c.lost
	ch <- c.identities
	ch <- c.errs
}

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
		for _, k := range counters {
			key := counterKey{dir: Ingress, verdict: VerdictForwarded, reason: reasonLabel(k.Code)}
			if k.Direction != 0 {
				key.dir = Egress
			}
			if k.Code.Dropped() {
				key.verdict = VerdictDropped
			}
			s := sums[key]
			s[0] += k.Packets
			s[1] += k.Bytes
			sums[key] = s
		}
		for k, s := range sums {
			ch <- prometheus.MustNewConstMetric(c.packets, prometheus.CounterValue, float64(s[0]), k.dir, k.verdict, k.reason)
			ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.CounterValue, float64(s[1]), k.dir, k.verdict, k.reason)
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
		if s, ok := dropReasons[code]; ok {
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
	case bpf.ForwardNotIPv4:
		return "NOT_IPV4"
	case bpf.ForwardService:
		return "SERVICE"
	case bpf.ForwardBackend:
		return "SERVICE_BACKEND"
	}
	return "other"
}
