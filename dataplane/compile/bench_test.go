package compile

import (
	"fmt"
	"math/rand"
	"net/netip"
	"runtime"
	"sort"
	"testing"
	"time"

	"github.com/flatnet/flatnet/dataplane/identity"
	"github.com/flatnet/flatnet/dataplane/ipv4"
	"github.com/flatnet/flatnet/dataplane/policy"
)

// The simulated cluster of the issue: 50,000 pods in 2,000 namespaces, 5,000 policies.
const (
	simNamespaces = 2000
	simPods       = 50000
	simPolicies   = 5000
	simApps       = 5 // distinct app labels per namespace: 10,000 identities
)

func simPod(r *rand.Rand, i int, localEvery int) Pod {
	ns := i % simNamespaces
	return Pod{
		Namespace: fmt.Sprintf("ns%d", ns), Name: fmt.Sprintf("pod%d", i),
		Labels: map[string]string{"app": fmt.Sprintf("app%d", (i/simNamespaces)%simApps), "tier": []string{"web", "db"}[i%2]},
		IP:     netip.AddrFrom4([4]byte{10, byte(64 + i>>16), byte(i >> 8), byte(i)}),
		Local:  localEvery > 0 && i%localEvery == 0,
		Ports:  []NamedPort{{Name: "http", Protocol: policy.ProtoTCP, Port: 8080}},
		// Every simulated pod has a controller, as most real ones do.
		Workloads: simWorkloads[(i/simNamespaces)%simApps%len(simWorkloads)],
	}
}

var simWorkloads = [][]Workload{{{Name: "web", Kind: "Deployment"}}, {{Name: "db", Kind: "StatefulSet"}}}

func simPolicy(r *rand.Rand, i int) []*policy.Policy {
	ns := fmt.Sprintf("ns%d", i%simNamespaces)
	inNS := policy.Eq(policy.NamespaceLabel, ns)
	app := func() policy.Requirement { return policy.Eq("app", fmt.Sprintf("app%d", r.Intn(simApps))) }
	peerApp := policy.Selector{}.And(app(), inNS)
	peerTeam := policy.Selector{}.And(policy.Eq(policy.NamespaceLabelPrefix+"team", fmt.Sprintf("team%d", r.Intn(50))))
	rules := []policy.Rule{
		{Direction: policy.Ingress, Name: "spec.ingress[0]", Peers: []policy.Peer{{Endpoints: &peerApp}, {Endpoints: &peerTeam}},
			Ports: []policy.Port{{Protocol: policy.ProtoTCP, Port: 80, EndPort: 80}, {Protocol: policy.ProtoTCP, Name: "http"}}},
		{Direction: policy.Egress, Name: "spec.egress[0]", Peers: []policy.Peer{{Endpoints: &peerApp}}},
		{Direction: policy.Egress, Name: "spec.egress[1]", Peers: []policy.Peer{{CIDR: &policy.CIDR{
			Prefix: v4(netip.PrefixFrom(netip.AddrFrom4([4]byte{172, byte(16 + r.Intn(16)), 0, 0}), 16)),
			Except: []ipv4.Prefix{v4(netip.PrefixFrom(netip.AddrFrom4([4]byte{172, byte(16 + r.Intn(16)), 1, 0}), 24))}}}},
			Ports: []policy.Port{{Protocol: policy.ProtoTCP, Port: 443, EndPort: 443}}},
	}
	if i%10 == 0 {
		rules = append(rules, policy.Rule{Direction: policy.Ingress, Deny: true, Name: "spec.ingressDeny[0]",
			Peers: []policy.Peer{{Entity: policy.EntityWorld}}})
	}
	// Filter the except that is not inside the prefix (random choice above).
	c := rules[2].Peers[0].CIDR
	if !c.Except[0].Within(c.Prefix) {
		c.Except = nil
	}
	return []*policy.Policy{{Ref: policy.Ref{Kind: policy.KindNetworkPolicy, Namespace: ns, Name: fmt.Sprintf("pol%d", i)},
		Subject: policy.Selector{}.And(app(), inNS), DefaultDeny: [2]bool{true, true}, Rules: rules}}
}

func buildSim(b *testing.B, localEvery int) (*Compiler, Update) {
	r := rand.New(rand.NewSource(42))
	c := New(identity.NewAllocator())
	for n := 0; n < simNamespaces; n++ {
		must(b, c.UpsertNamespace(Namespace{Name: fmt.Sprintf("ns%d", n),
			Labels: map[string]string{"team": fmt.Sprintf("team%d", n%50), "env": []string{"prod", "dev"}[n%2]}}))
	}
	for i := 0; i < simPods; i++ {
		must(b, c.UpsertPod(simPod(r, i, localEvery)))
	}
	for i := 0; i < simPolicies; i++ {
		must(b, c.UpsertPolicy(fmt.Sprintf("np/%d", i), simPolicy(r, i)))
	}
	return c, c.Flush()
}

func must(b testing.TB, err error) {
	if err != nil {
		b.Fatal(err)
	}
}

// BenchmarkFullCompile builds the simulated cluster from nothing and compiles it, for
// a node with 110 local pods and for the worst case of every pod being local.
func BenchmarkFullCompile(b *testing.B) {
	for _, c := range []struct {
		name       string
		localEvery int
	}{{"node-110-pods", simPods / 110}, {"all-50000-local", 1}} {
		b.Run(c.name, func(b *testing.B) {
			var entries int
			for i := 0; i < b.N; i++ {
				runtime.GC()
				var before runtime.MemStats
				runtime.ReadMemStats(&before)
				comp, up := buildSim(b, c.localEvery)
				runtime.GC()
				var after runtime.MemStats
				runtime.ReadMemStats(&after)
				entries = 0
				for _, e := range up.Endpoints {
					entries += len(e.Policy.Entries)
				}
				b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/(1<<20), "MiB-retained")
				b.ReportMetric(float64(len(up.Endpoints)), "endpoints")
				b.ReportMetric(float64(entries), "entries")
				b.ReportMetric(float64(comp.ids.alloc.Len()), "identities")
				runtime.KeepAlive(comp)
			}
		})
	}
}

// BenchmarkIncremental measures one change plus Flush on the compiled simulated
// cluster (110 local pods) and reports the p50 and p99 of the change latency
// (with the retiring identities' second Flush, as the agent writes it).
func BenchmarkIncremental(b *testing.B) {
	c, _ := buildSim(b, simPods/110)
	r := rand.New(rand.NewSource(7))
	var lat []time.Duration
	perKind := make([][]time.Duration, 4)
	next := simPods
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		switch i % 4 {
		case 0: // a policy changes
			k := r.Intn(simPolicies)
			must(b, c.UpsertPolicy(fmt.Sprintf("np/%d", k), simPolicy(r, k)))
		case 1: // a pod starts
			must(b, c.UpsertPod(simPod(r, next, simPods/110)))
			next++
		case 2: // a pod goes
			p := simPod(r, r.Intn(simPods), 0)
			c.DeletePod(p.Namespace, p.Name)
		case 3: // a namespace is relabelled
			n := r.Intn(simNamespaces)
			must(b, c.UpsertNamespace(Namespace{Name: fmt.Sprintf("ns%d", n),
				Labels: map[string]string{"team": fmt.Sprintf("team%d", r.Intn(50)), "env": "prod"}}))
		}
		// As the enforcer writes: the identities the change left without pods
		// retire once the first write is in, in a second one; a policy naming a
		// new prefix applies a write after the prefix.
		c.FlushSettled()
		took := time.Since(start)
		lat = append(lat, took)
		perKind[i%4] = append(perKind[i%4], took)
	}
	b.StopTimer()
	b.ReportMetric(float64(quantile(lat, 0.5).Microseconds()), "p50-µs")
	b.ReportMetric(float64(quantile(lat, 0.99).Microseconds()), "p99-µs")
	for k, name := range []string{"policy", "pod-add", "pod-delete", "ns-relabel"} {
		if len(perKind[k]) > 0 {
			b.ReportMetric(float64(quantile(perKind[k], 0.99).Microseconds()), "p99-"+name+"-µs")
		}
	}
}

func quantile(d []time.Duration, q float64) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[int(float64(len(s)-1)*q)]
}

// v4 converts a test prefix that is IPv4 by construction.
func v4(p netip.Prefix) ipv4.Prefix {
	q, err := ipv4.PrefixFrom(p)
	if err != nil {
		panic(err)
	}
	return q
}
