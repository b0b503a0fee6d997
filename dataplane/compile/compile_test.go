package compile

import (
	"fmt"
	"math/rand"
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flatnet/flatnet/dataplane/identity"
	"github.com/flatnet/flatnet/dataplane/ipv4"
	"github.com/flatnet/flatnet/dataplane/policy"
)

func TestPortPrefixesCoverExactlyTheRange(t *testing.T) {
	r := rand.New(rand.NewSource(1))
	cases := [][2]uint16{{1, 65535}, {80, 80}, {8000, 8100}, {0x8000, 0x8000}, {65535, 65535}, {1, 1}}
	for i := 0; i < 300; i++ {
		a, b := uint16(1+r.Intn(65535)), uint16(1+r.Intn(65535))
		if a > b {
			a, b = b, a
		}
		cases = append(cases, [2]uint16{a, b})
	}
	for _, c := range cases {
		pps := PortPrefixes(c[0], c[1])
		if len(pps) > 30 {
			t.Fatalf("%d-%d: %d prefixes", c[0], c[1], len(pps))
		}
		covered := map[int]int{}
		for _, pp := range pps {
			size := 1 << (16 - int(pp.Len))
			if int(pp.Port)%size != 0 {
				t.Fatalf("%d-%d: unaligned prefix %+v", c[0], c[1], pp)
			}
			for p := int(pp.Port); p < int(pp.Port)+size; p++ {
				covered[p]++
			}
		}
		for p := 0; p <= 65535; p++ {
			in := p >= int(c[0]) && p <= int(c[1])
			if (covered[p] == 1) != in || covered[p] > 1 {
				t.Fatalf("%d-%d: port %d covered %d times", c[0], c[1], p, covered[p])
			}
		}
	}
}

// lookup evaluates a policy for a remote carrying the given identities.
func lookup(p *EndpointPolicy, dir policy.Direction, ids []identity.ID, proto policy.Protocol, port uint16) (allow bool, rule RuleID) {
	var cidr identity.ID
	if len(ids) > 1 {
		cidr = ids[1]
	}
	d := p.Decide(dir, ids[0], cidr, proto, port)
	return d.Allowed, d.RuleID
}

func mustDo(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestDenyFoldingAndNamedPorts(t *testing.T) {
	c := New(identity.NewAllocator())
	mustDo(t, c.UpsertNamespace(Namespace{Name: "ns"}))
	mustDo(t, c.UpsertPod(Pod{Namespace: "ns", Name: "srv", Labels: map[string]string{"app": "srv"}, IP: netip.MustParseAddr("10.0.0.1"), Local: true,
		Ports: []NamedPort{{Name: "web", Protocol: policy.ProtoTCP, Port: 8080}}}))
	mustDo(t, c.UpsertPod(Pod{Namespace: "ns", Name: "db", Labels: map[string]string{"app": "db"}, IP: netip.MustParseAddr("10.0.0.2"),
		Ports: []NamedPort{{Name: "sql", Protocol: policy.ProtoTCP, Port: 5432}}}))
	sel := func(k, v string) *policy.Selector {
		s := policy.Selector{}.And(policy.Eq(k, v), policy.Eq(policy.NamespaceLabel, "ns"))
		return &s
	}
	srv := policy.Selector{}.And(policy.Eq("app", "srv"))
	mustDo(t, c.UpsertPolicy("p", []*policy.Policy{{
		Ref: policy.Ref{Kind: policy.KindCNP, Namespace: "ns", Name: "p"}, Subject: srv, DefaultDeny: [2]bool{true, true},
		Rules: []policy.Rule{
			{Direction: policy.Ingress, Name: "allow-range", AnyPeer: true, Ports: []policy.Port{{Protocol: policy.ProtoTCP, Port: 8000, EndPort: 8999}}},
			{Direction: policy.Ingress, Name: "deny-db-all", Deny: true, Peers: []policy.Peer{{Endpoints: sel("app", "db")}}},
			{Direction: policy.Ingress, Name: "allow-db-8080", Peers: []policy.Peer{{Endpoints: sel("app", "db")}}, Ports: []policy.Port{{Protocol: policy.ProtoTCP, Port: 8080, EndPort: 8080}}},
			{Direction: policy.Ingress, Name: "named-in", AnyPeer: true, Ports: []policy.Port{{Protocol: policy.ProtoTCP, Name: "web"}}},
			{Direction: policy.Egress, Name: "named-out", Peers: []policy.Peer{{Endpoints: sel("app", "db")}}, Ports: []policy.Port{{Protocol: policy.ProtoTCP, Name: "sql"}}},
		},
	}}))
	c.Flush()
	p := c.EndpointPolicy("ns", "srv")
	db, _ := c.IdentityOf("ns", "db")
	other := identity.ID(99999)
	name := func(id RuleID) string { r, _ := c.Rule(id); return r.Rule }
	if ok, r := lookup(p, policy.Ingress, []identity.ID{db}, policy.ProtoTCP, 8080); ok || name(r) != "deny-db-all" {
		t.Fatalf("db -> 8080: allowed=%v by %q; the deny of everything from db must win over the more specific allow", ok, name(r))
	}
	if ok, _ := lookup(p, policy.Ingress, []identity.ID{other}, policy.ProtoTCP, 8500); !ok {
		t.Fatalf("other -> 8500 must be allowed by the range")
	}
	if ok, _ := lookup(p, policy.Ingress, []identity.ID{other}, policy.ProtoTCP, 9000); ok {
		t.Fatalf("other -> 9000 is outside the range")
	}
	if ok, _ := lookup(p, policy.Egress, []identity.ID{db}, policy.ProtoTCP, 5432); !ok {
		t.Fatalf("egress to db's named port sql (5432) must be allowed")
	}
	if ok, _ := lookup(p, policy.Egress, []identity.ID{db}, policy.ProtoTCP, 5433); ok {
		t.Fatalf("egress to db:5433 must be denied")
	}
	// The peer renumbers its named port: the policy follows.
	mustDo(t, c.UpsertPod(Pod{Namespace: "ns", Name: "db", Labels: map[string]string{"app": "db"}, IP: netip.MustParseAddr("10.0.0.2"),
		Ports: []NamedPort{{Name: "sql", Protocol: policy.ProtoTCP, Port: 6432}}}))
	up := c.Flush()
	if len(up.Endpoints) != 1 {
		t.Fatalf("renumbering a peer's named port must recompile the endpoint, got %d updates", len(up.Endpoints))
	}
	p = c.EndpointPolicy("ns", "srv")
	if ok, _ := lookup(p, policy.Egress, []identity.ID{db}, policy.ProtoTCP, 6432); !ok {
		t.Fatalf("egress to the renumbered sql port 6432 must be allowed")
	}
	if ok, _ := lookup(p, policy.Egress, []identity.ID{db}, policy.ProtoTCP, 5432); ok {
		t.Fatalf("the old sql port 5432 must no longer be allowed")
	}
}

// world is a random cluster the incremental and the from-scratch compilers both see.
type world struct {
	r        *rand.Rand
	ns       map[string]map[string]string
	pods     map[string]Pod
	policies map[string][]*policy.Policy
}

func (w *world) randomPolicy(name string) []*policy.Policy {
	ns := fmt.Sprintf("ns%d", w.r.Intn(4))
	app := func() string { return fmt.Sprintf("app%d", w.r.Intn(4)) }
	var rules []policy.Rule
	for i := 0; i < 1+w.r.Intn(3); i++ {
		r := policy.Rule{Direction: policy.Direction(w.r.Intn(2)), Deny: w.r.Intn(4) == 0, Name: fmt.Sprintf("r%d", i)}
		switch w.r.Intn(5) {
		case 0:
			r.AnyPeer = true
		case 1:
			s := policy.Selector{}.And(policy.Eq("app", app()), policy.Eq(policy.NamespaceLabel, ns))
			r.Peers = append(r.Peers, policy.Peer{Endpoints: &s})
		case 2:
			s := policy.Selector{}.And(policy.Eq(policy.NamespaceLabelPrefix+"env", []string{"prod", "dev"}[w.r.Intn(2)]))
			r.Peers = append(r.Peers, policy.Peer{Endpoints: &s})
		case 3:
			pfx := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, byte(w.r.Intn(4)), 0}), 16+8*w.r.Intn(2)).Masked()
			cidr := &policy.CIDR{Prefix: v4(pfx)}
			if pfx.Bits() == 16 && w.r.Intn(2) == 0 {
				cidr.Except = []ipv4.Prefix{v4(netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, byte(w.r.Intn(4)), 0}), 24))}
			}
			r.Peers = append(r.Peers, policy.Peer{CIDR: cidr})
		case 4:
			r.Peers = append(r.Peers, policy.Peer{Entity: []policy.Entity{policy.EntityWorld, policy.EntityCluster, policy.EntityHost}[w.r.Intn(3)]})
		}
		switch w.r.Intn(4) {
		case 1:
			lo := uint16(1 + w.r.Intn(100))
			r.Ports = []policy.Port{{Protocol: policy.ProtoTCP, Port: lo, EndPort: lo + uint16(w.r.Intn(20))}}
		case 2:
			r.Ports = []policy.Port{{Protocol: policy.ProtoUDP, Name: "dns"}}
		case 3:
			r.Ports = []policy.Port{{Protocol: policy.ProtoAny, Port: 53, EndPort: 53}}
		}
		rules = append(rules, r)
	}
	subj := policy.Selector{}.And(policy.Eq(policy.NamespaceLabel, ns))
	if w.r.Intn(2) == 0 {
		subj = subj.And(policy.Eq("app", app()))
	}
	return []*policy.Policy{{Ref: policy.Ref{Kind: policy.KindCNP, Namespace: ns, Name: name}, Subject: subj,
		DefaultDeny: [2]bool{w.r.Intn(2) == 0, w.r.Intn(2) == 0}, Rules: rules}}
}

func (w *world) randomPod(name string) Pod {
	ns := fmt.Sprintf("ns%d", w.r.Intn(4))
	p := Pod{Namespace: ns, Name: name, Labels: map[string]string{"app": fmt.Sprintf("app%d", w.r.Intn(4))},
		IP: netip.AddrFrom4([4]byte{10, 0, byte(w.r.Intn(4)), byte(1 + w.r.Intn(250))}), Local: w.r.Intn(2) == 0}
	if w.r.Intn(2) == 0 {
		p.Ports = []NamedPort{{Name: "dns", Protocol: policy.ProtoUDP, Port: uint16(53 + w.r.Intn(3))}}
	}
	if k := w.r.Intn(3); k > 0 { // the snapshot must follow a pod's workload too
		p.Workloads = []Workload{{Name: fmt.Sprintf("app%d", k), Kind: []string{"", "Deployment", "StatefulSet"}[k]}}
	}
	return p
}

func (w *world) build(t *testing.T) *Compiler {
	c := New(identity.NewAllocator())
	for name, l := range w.ns {
		mustDo(t, c.UpsertNamespace(Namespace{Name: name, Labels: l}))
	}
	for _, p := range w.pods {
		mustDo(t, c.UpsertPod(p))
	}
	for k, p := range w.policies {
		mustDo(t, c.UpsertPolicy(k, p))
	}
	c.UpsertNode("self", []netip.Addr{netip.MustParseAddr("10.0.9.1")}, true)
	flushHeld(c)
	return c
}

// flushHeld flushes c as the enforcer writes: each update written before the
// next, until the policy changes held for their prefixes apply; returns every
// update (what retires is left to ride along with the next).
func flushHeld(c *Compiler) []Update {
	ups := []Update{c.Flush()}
	for ups[len(ups)-1].Held > 0 {
		c.Written(ups[len(ups)-1])
		ups = append(ups, c.Flush())
	}
	return ups
}

// TestIncrementalMatchesFullCompile drives one compiler through random changes and,
// after each Flush, compares every local endpoint's policy (as verdicts for probe
// packets, since identity numbers differ between compilers) with a compiler built
// from scratch on the same state.
func TestIncrementalMatchesFullCompile(t *testing.T) {
	for seed := int64(1); seed <= 6; seed++ {
		w := &world{r: rand.New(rand.NewSource(seed)), ns: map[string]map[string]string{}, pods: map[string]Pod{}, policies: map[string][]*policy.Policy{}}
		inc := New(identity.NewAllocator())
		inc.UpsertNode("self", []netip.Addr{netip.MustParseAddr("10.0.9.1")}, true)
		ipcache := map[ipv4.Prefix]identity.ID{}
		stored := map[identity.Sum]identity.ID{} // what the agent would persist
		snapshots := &snapshotCheck{}
		for step := 0; step < 120; step++ {
			switch op := w.r.Intn(10); {
			case op < 3:
				name := fmt.Sprintf("pod%d", w.r.Intn(12))
				if old, ok := w.pods[name]; ok && w.r.Intn(3) == 0 {
					inc.DeletePod(old.Namespace, old.Name)
					delete(w.pods, name)
					break
				}
				if old, ok := w.pods[name]; ok {
					inc.DeletePod(old.Namespace, old.Name) // the pod may move namespace
				}
				p := w.randomPod(name)
				w.pods[name] = p
				mustDo(t, inc.UpsertPod(p))
			case op < 5:
				name := fmt.Sprintf("ns%d", w.r.Intn(4))
				l := map[string]string{"env": []string{"prod", "dev"}[w.r.Intn(2)]}
				w.ns[name] = l
				mustDo(t, inc.UpsertNamespace(Namespace{Name: name, Labels: l}))
			case op < 8:
				key := fmt.Sprintf("pol%d", w.r.Intn(8))
				if _, ok := w.policies[key]; ok && w.r.Intn(3) == 0 {
					inc.DeletePolicy(key)
					delete(w.policies, key)
					break
				}
				w.policies[key] = w.randomPolicy(key)
				mustDo(t, inc.UpsertPolicy(key, w.policies[key]))
			default:
				continue
			}
			if w.r.Intn(3) != 0 {
				continue // let changes pile up between flushes too
			}
			ups := flushHeld(inc)
			for _, up := range ups {
				for _, u := range up.Identities {
					if u.Delete {
						delete(stored, u.Sum)
					} else {
						stored[u.Sum] = u.ID
					}
				}
				for _, u := range up.IPCache {
					if u.Delete {
						delete(ipcache, u.Prefix)
					} else {
						ipcache[u.Prefix] = u.Identity
					}
				}
			}
			up := ups[len(ups)-1]
			checkStoredIdentities(t, fmt.Sprintf("seed %d step %d", seed, step), inc, stored)
			full := w.build(t)
			comparePolicies(t, fmt.Sprintf("seed %d step %d", seed, step), w, inc, full, ipcache)
			snapshots.check(t, fmt.Sprintf("seed %d step %d", seed, step), w, inc)
			// As the enforcer does once the update is written: what retires
			// goes in the next Flush, with whatever piles up meanwhile.
			inc.Written(up)
		}
	}
}

func comparePolicies(t *testing.T, where string, w *world, inc, full *Compiler, ipcache map[ipv4.Prefix]identity.ID) {
	t.Helper()
	// Probe peers: every pod, the node, a world address, and addresses in the CIDRs.
	type probe struct {
		what   string
		incIDs []identity.ID
		fulIDs []identity.ID
	}
	var probes []probe
	addrProbe := func(what string, a netip.Addr) {
		ids := func(c *Compiler) []identity.ID {
			var out []identity.ID
			id, ok := c.ipc.resolve(a)
			if !ok {
				id = identity.World
			}
			out = append(out, id)
			if cid := c.pfx.identityOf(a); cid != 0 {
				out = append(out, cid)
			}
			return out
		}
		probes = append(probes, probe{what, ids(inc), ids(full)})
	}
	for name, p := range w.pods {
		addrProbe("pod "+name, p.IP)
	}
	addrProbe("node", netip.MustParseAddr("10.0.9.1"))
	addrProbe("world", netip.MustParseAddr("192.0.2.1"))
	for i := 0; i < 4; i++ {
		addrProbe("cidr", netip.AddrFrom4([4]byte{10, 0, byte(i), 251}))
	}
	// The incremental ipcache must equal the incremental compiler's own view.
	for name, p := range w.pods {
		want, _ := inc.IdentityOf(p.Namespace, p.Name)
		got := ipcache[v4(netip.PrefixFrom(p.IP, 32))]
		if owner, _ := inc.ipc.resolve(p.IP); owner != want {
			continue // two pods share the address; resolveIP picked the other
		}
		if got != want {
			t.Fatalf("%s: ipcache of %s (%s) = %v, want %v", where, name, p.IP, got, want)
		}
	}
	for name, p := range w.pods {
		if !p.Local {
			continue
		}
		a, b := inc.EndpointPolicy(p.Namespace, p.Name), full.EndpointPolicy(p.Namespace, p.Name)
		if a == nil || b == nil {
			t.Fatalf("%s: %s has policy inc=%v full=%v", where, name, a != nil, b != nil)
		}
		if a.Enforce != b.Enforce {
			t.Fatalf("%s: %s enforcement inc=%v full=%v", where, name, a.Enforce, b.Enforce)
		}
		for _, pr := range probes {
			for dir := policy.Ingress; dir <= policy.Egress; dir++ {
				for _, pp := range []struct {
					proto policy.Protocol
					port  uint16
				}{{policy.ProtoTCP, 1}, {policy.ProtoTCP, 50}, {policy.ProtoTCP, 110}, {policy.ProtoUDP, 53}, {policy.ProtoUDP, 54}, {policy.ProtoUDP, 55}, {policy.ProtoSCTP, 53}} {
					// Verdicts must agree; which of several matching rules is named
					// depends on rule numbering, which differs between the compilers.
					okA, rA := lookup(a, dir, pr.incIDs, pp.proto, pp.port)
					okB, rB := lookup(b, dir, pr.fulIDs, pp.proto, pp.port)
					ra, _ := inc.Rule(rA)
					rb, _ := full.Rule(rB)
					if okA != okB {
						t.Fatalf("%s: %s %v from/to %s %v/%d: incremental allow=%v (%+v), from scratch allow=%v (%+v)",
							where, name, dir, pr.what, pp.proto, pp.port, okA, ra, okB, rb)
					}
				}
			}
		}
	}
}

// checkStoredIdentities: the identities persisted from updates are exactly the live ones.
func checkStoredIdentities(t *testing.T, where string, c *Compiler, stored map[identity.Sum]identity.ID) {
	t.Helper()
	live := 0
	for id := range c.ids.byID {
		s, ok := c.ids.alloc.SumOf(id)
		if !ok || stored[s] != id {
			t.Fatalf("%s: live identity %v not persisted", where, id)
		}
		live++
	}
	for _, st := range c.pfx.byPrefix {
		s, ok := c.ids.alloc.SumOf(st.id)
		if !ok || stored[s] != st.id {
			t.Fatalf("%s: CIDR identity %v not persisted", where, st.id)
		}
		live++
	}
	if len(stored) != live {
		t.Fatalf("%s: %d identities persisted, %d live", where, len(stored), live)
	}
}

func TestPodFromCore(t *testing.T) {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web", Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{ServiceAccountName: "sa", Containers: []corev1.Container{{Ports: []corev1.ContainerPort{
			{Name: "http", ContainerPort: 8080}, {Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP}, {ContainerPort: 9090}}}}},
		Status: corev1.PodStatus{PodIPs: []corev1.PodIP{{IP: "fd00::1"}, {IP: "10.224.1.5"}}},
	}
	got := PodFromCore(p, true)
	want := []NamedPort{{Name: "http", Protocol: policy.ProtoTCP, Port: 8080}, {Name: "dns", Protocol: policy.ProtoUDP, Port: 53}}
	if got.IP != netip.MustParseAddr("10.224.1.5") || !got.Local || got.ServiceAccount != "sa" || len(got.Ports) != 2 ||
		got.Ports[0] != want[0] || got.Ports[1] != want[1] {
		t.Fatalf("PodFromCore = %+v", got)
	}
}

func TestKubeAPIServerEntity(t *testing.T) {
	c := New(identity.NewAllocator())
	mustDo(t, c.UpsertNamespace(Namespace{Name: "ns"}))
	mustDo(t, c.UpsertPod(Pod{Namespace: "ns", Name: "p", Labels: map[string]string{"app": "p"}, IP: netip.MustParseAddr("10.0.0.5"), Local: true}))
	cp, self, worker := netip.MustParseAddr("10.0.9.1"), netip.MustParseAddr("10.0.9.2"), netip.MustParseAddr("10.0.9.3")
	c.UpsertNode("cp", []netip.Addr{cp}, false)
	c.UpsertNode("self", []netip.Addr{self}, true)
	c.UpsertNode("worker", []netip.Addr{worker}, false)
	c.SetAPIServer([]netip.Addr{cp})
	subj := policy.Selector{}.And(policy.Eq(policy.NamespaceLabel, "ns"))
	mustDo(t, c.UpsertPolicy("api", []*policy.Policy{{Ref: policy.Ref{Kind: policy.KindCNP, Namespace: "ns", Name: "api"}, Subject: subj,
		DefaultDeny: [2]bool{false, true}, Rules: []policy.Rule{{Direction: policy.Egress, Name: "r", Peers: []policy.Peer{{Entity: policy.EntityKubeAPI}}}}}}))
	c.Flush()
	for _, tc := range []struct {
		to   netip.Addr
		want bool
	}{{cp, true}, {worker, false}, {self, true /* own node: always */}} {
		d, err := c.Explain("ns", "p", policy.Egress, tc.to, policy.ProtoTCP, 6443)
		mustDo(t, err)
		if d.Allowed != tc.want {
			t.Errorf("egress to %s under toEntities: [kube-apiserver]: allowed=%v, want %v", tc.to, d.Allowed, tc.want)
		}
	}
	// remote-node still covers the API server's node.
	mustDo(t, c.UpsertPolicy("api", []*policy.Policy{{Ref: policy.Ref{Kind: policy.KindCNP, Namespace: "ns", Name: "api"}, Subject: subj,
		DefaultDeny: [2]bool{false, true}, Rules: []policy.Rule{{Direction: policy.Egress, Name: "r", Peers: []policy.Peer{{Entity: policy.EntityRemoteNode}}}}}}))
	c.Flush()
	for _, to := range []netip.Addr{cp, worker} {
		if d, _ := c.Explain("ns", "p", policy.Egress, to, policy.ProtoTCP, 6443); !d.Allowed {
			t.Errorf("egress to node %s under toEntities: [remote-node] denied", to)
		}
	}
}

func TestInvalidateReemitsEverything(t *testing.T) {
	w := &world{r: rand.New(rand.NewSource(9)), ns: map[string]map[string]string{}, pods: map[string]Pod{}, policies: map[string][]*policy.Policy{}}
	for i := 0; i < 12; i++ {
		p := w.randomPod(fmt.Sprintf("pod%d", i))
		w.pods[p.Name] = p
	}
	for i := 0; i < 6; i++ {
		k := fmt.Sprintf("pol%d", i)
		w.policies[k] = w.randomPolicy(k)
	}
	c := w.build(t) // built and flushed once
	if up := c.Flush(); !up.Empty() {
		t.Fatalf("second Flush without changes is not empty: %+v", up)
	}
	c.Invalidate()
	up := c.Flush()
	locals, ips := 0, map[netip.Addr]bool{}
	for _, p := range w.pods {
		if p.Local {
			locals++
		}
		ips[p.IP] = true
	}
	ips[netip.MustParseAddr("10.0.9.1")] = true
	if len(up.Endpoints) != locals || len(up.IPCache) != len(ips) || len(up.CIDRs) != len(c.pfx.byPrefix) || len(up.Identities) != len(c.ids.byID)+len(c.pfx.byPrefix) {
		t.Fatalf("after Invalidate: %d endpoints (want %d), %d ipcache (want %d), %d CIDRs (want %d), %d identities (want %d)",
			len(up.Endpoints), locals, len(up.IPCache), len(ips), len(up.CIDRs), len(c.pfx.byPrefix), len(up.Identities), len(c.ids.byID)+len(c.pfx.byPrefix))
	}
}
