package flows

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// maxPolicyLabels bounds the policies PolicyDrops names; drops decided by any
// further policy are counted under policy="other".
const maxPolicyLabels = 200

// PolicyDrops counts dropped flow events by the policy that decided them. It sees
// the flow events, not every packet: events are rate limited per CPU
// (flatnet_flow_events_lost_total counts the ones that were not emitted), so it
// tells which policies drop, and in what proportion, rather than exact packet counts.
type PolicyDrops struct {
	vec   *prometheus.CounterVec
	mu    sync.Mutex
	known map[string]bool
}

// NewPolicyDrops makes the counter; register it with Collector().
func NewPolicyDrops() *PolicyDrops {
	return &PolicyDrops{known: map[string]bool{}, vec: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flatnet_policy_drop_events_total",
		Help: "Dropped flow events by deciding policy (kind, namespace, name; \"none\" when no policy is known), from the rate-limited flow events.",
	}, []string{"direction", "kind", "namespace", "policy"})}
}

// Collector is the counter to register.
func (p *PolicyDrops) Collector() prometheus.Collector { return p.vec }

// Observe counts r's flow if it was dropped: once per deciding policy.
func (p *PolicyDrops) Observe(r *Response) {
	p.observe(r.Flow)
}

func (p *PolicyDrops) observe(f *Flow) {
	if f.Verdict != VerdictDropped {
		return
	}
	pols := f.IngressDeniedBy
	if f.TrafficDirection == Egress {
		pols = f.EgressDeniedBy
	}
	if len(pols) == 0 {
		p.vec.WithLabelValues(f.TrafficDirection, "none", "", "none").Inc()
		return
	}
	for _, pol := range pols {
		kind, ns, name := pol.Kind, pol.Namespace, pol.Name
		key := kind + "/" + ns + "/" + name
		p.mu.Lock()
		if !p.known[key] {
			if len(p.known) >= maxPolicyLabels {
				kind, ns, name = "other", "", "other"
			} else {
				p.known[key] = true
			}
		}
		p.mu.Unlock()
		p.vec.WithLabelValues(f.TrafficDirection, kind, ns, name).Inc()
	}
}
