package bpf

import (
	"context"
	"fmt"
	"math/rand"
	"net/netip"
	"testing"

	"github.com/flatnet/flatnet/dataplane/compile"
	"github.com/flatnet/flatnet/dataplane/identity"
	"github.com/flatnet/flatnet/dataplane/ipv4"
	"github.com/flatnet/flatnet/dataplane/policy"
)

// TestDatapathAgreesWithCompiler compiles random policies, loads them, and sends new
// connections of every kind through the programs (BPF_PROG_TEST_RUN): each verdict
// must be the one compile.Compiler.Explain gives. This checks the C side of the lookup
// contract (probe order, deny precedence, CIDR and "any" lookups, default deny)
// against its Go statement on inputs no one hand-picked, and Datapath.Lookup (the
// maps read back for explain) against both.
func TestDatapathAgreesWithCompiler(t *testing.T) {
	d := loadTest(t)
	ctx := context.Background()
	for seed := int64(1); seed <= 8; seed++ {
		r := rand.New(rand.NewSource(seed))
		c := compile.New(identity.NewAllocator())
		for i := 0; i < 3; i++ {
			must(t, c.UpsertNamespace(compile.Namespace{Name: fmt.Sprintf("ns%d", i), Labels: map[string]string{"env": []string{"prod", "dev"}[i%2]}}))
		}
		local := compile.Pod{Namespace: "ns0", Name: "ep", Labels: map[string]string{"app": "app0"}, IP: netip.MustParseAddr("10.1.0.10"), Local: true,
			Ports: []compile.NamedPort{{Name: "web", Protocol: policy.ProtoTCP, Port: 8080}}}
		must(t, c.UpsertPod(local))
		var remotes []netip.Addr
		for i := 0; i < 8; i++ {
			p := compile.Pod{Namespace: fmt.Sprintf("ns%d", r.Intn(3)), Name: fmt.Sprintf("p%d", i),
				Labels: map[string]string{"app": fmt.Sprintf("app%d", r.Intn(3))},
				IP:     netip.AddrFrom4([4]byte{10, 1, byte(r.Intn(3)), byte(20 + i)}),
				Ports:  []compile.NamedPort{{Name: "dns", Protocol: policy.ProtoUDP, Port: uint16(53 + r.Intn(2))}}}
			must(t, c.UpsertPod(p))
			remotes = append(remotes, p.IP)
		}
		c.UpsertNode("self", []netip.Addr{netip.MustParseAddr("10.1.9.1")}, true)
		c.UpsertNode("other", []netip.Addr{netip.MustParseAddr("10.1.9.2")}, false)
		remotes = append(remotes, netip.MustParseAddr("10.1.9.1"), netip.MustParseAddr("10.1.9.2"),
			netip.MustParseAddr("192.0.2.7"), netip.MustParseAddr("172.16.1.1"), netip.MustParseAddr("172.16.2.9"),
			netip.MustParseAddr("10.1.1.200"), netip.MustParseAddr("10.1.2.77"))
		for i := 0; i < 6; i++ {
			must(t, c.UpsertPolicy(fmt.Sprintf("p%d", i), []*policy.Policy{randomPolicy(r, fmt.Sprintf("p%d", i))}))
		}
		up := c.Flush()
		clearMaps(t, d)
		id, _ := c.IdentityOf("ns0", "ep")
		setEndpoint(t, d, local.IP, uint32(id), c.EndpointPolicy("ns0", "ep"))
		must(t, d.Apply(ctx, up, func(string, string) (int, bool) { return 0, false }))

		next := uint16(20000)
		for _, remote := range remotes {
			for _, dir := range []policy.Direction{policy.Ingress, policy.Egress} {
				for _, proto := range []uint8{6, 17, 132, 1} {
					for _, port := range []uint16{1, 53, 54, 80, 90, 99, 443, 8080, 19999} {
						if proto == 1 && port != 1 {
							continue
						}
						next++
						p := pkt{src: remote, dst: local.IP, proto: proto, sport: next, dport: port, tcpFlags: tcpSYN}
						bdir := dirIngress
						if dir == policy.Egress {
							p = pkt{src: local.IP, dst: remote, proto: proto, sport: next, dport: port, tcpFlags: tcpSYN}
							bdir = dirEgress
						}
						wantPort := port
						if proto == 1 {
							wantPort = 0 // an echo request has no destination port
						}
						dec, err := c.Explain("ns0", "ep", dir, remote, policy.Protocol(proto), wantPort)
						must(t, err)
						want := uint32(tcxDrop)
						if dec.Allowed {
							want = tcxNext
						}
						if got := run(t, d, bdir, p); got != want {
							t.Fatalf("seed %d: %v %s proto %d port %d: datapath %d, compiler %+v", seed, dir, remote, proto, port, got, dec)
						}
						if proto == 1 {
							continue
						}
						// Reading the maps back (explain's datapath view) must agree with
						// the program, rule included.
						md, err := d.Lookup(ctx, testIfindex, dir, remote, policy.Protocol(proto), port)
						must(t, err)
						if md.Allowed != dec.Allowed || (md.RuleID != dec.RuleID && !md.Deferred && !md.Host) {
							t.Fatalf("seed %d: %v %s proto %d port %d: maps read back %+v, compiler %+v", seed, dir, remote, proto, port, md, dec)
						}
					}
				}
			}
		}
	}
}

// clearMaps empties the maps a previous round filled.
func clearMaps(t *testing.T, d *Datapath) {
	t.Helper()
	must(t, deleteWhere(d.objs.FnIpcache, func(*datapathIpcacheKey) bool { return true }))
	must(t, deleteWhere(d.objs.FnCidrcache, func(*datapathIpcacheKey) bool { return true }))
	must(t, deleteWhere(d.objs.FnCt, func(*datapathCtKey) bool { return true }))
	if ct, err := d.estTable(testIfindex); err == nil && ct != nil {
		must(t, deleteWhere(ct, func(*datapathCtKey) bool { return true }))
		ct.Close()
	}
}

func randomPolicy(r *rand.Rand, name string) *policy.Policy {
	app := func() string { return fmt.Sprintf("app%d", r.Intn(3)) }
	ns := fmt.Sprintf("ns%d", r.Intn(3))
	var rules []policy.Rule
	for i := 0; i < 1+r.Intn(4); i++ {
		rule := policy.Rule{Direction: policy.Direction(r.Intn(2)), Deny: r.Intn(3) == 0, Name: fmt.Sprintf("r%d", i)}
		switch r.Intn(6) {
		case 0:
			rule.AnyPeer = true
		case 1:
			s := policy.Selector{}.And(policy.Eq("app", app()), policy.Eq(policy.NamespaceLabel, ns))
			rule.Peers = []policy.Peer{{Endpoints: &s}}
		case 2:
			s := policy.Selector{}.And(policy.Eq(policy.NamespaceLabelPrefix+"env", "prod"))
			rule.Peers = []policy.Peer{{Endpoints: &s}}
		case 3:
			pfx := []string{"10.1.0.0/16", "172.16.0.0/12", "10.1.1.0/24", "0.0.0.0/0"}[r.Intn(4)]
			c := &policy.CIDR{Prefix: ipv4.MustParsePrefix(pfx)}
			if pfx == "10.1.0.0/16" && r.Intn(2) == 0 {
				c.Except = []ipv4.Prefix{ipv4.MustParsePrefix("10.1.2.0/24")}
			}
			// As a CiliumNetworkPolicy CIDR rule (world only) or an ipBlock.
			c.WorldOnly = r.Intn(2) == 0
			rule.Peers = []policy.Peer{{CIDR: c}}
		case 4:
			rule.Peers = []policy.Peer{{Entity: []policy.Entity{policy.EntityWorld, policy.EntityCluster, policy.EntityRemoteNode, policy.EntityAll}[r.Intn(4)]}}
		case 5:
			// the empty rule: selects nothing
		}
		switch r.Intn(5) {
		case 1:
			rule.Ports = []policy.Port{{Protocol: policy.ProtoTCP, Port: 80, EndPort: uint16(80 + r.Intn(20))}}
		case 2:
			rule.Ports = []policy.Port{{Protocol: policy.ProtoAny, Port: 53, EndPort: 53}, {Protocol: policy.ProtoUDP, Name: "dns"}}
		case 3:
			rule.Ports = []policy.Port{{Protocol: policy.ProtoTCP, Name: "web"}, {Protocol: policy.ProtoSCTP}}
		case 4:
			rule.Ports = []policy.Port{{Protocol: policy.ProtoTCP, Port: 1, EndPort: 65535}}
		}
		rules = append(rules, rule)
	}
	subj := policy.Selector{}.And(policy.Eq(policy.NamespaceLabel, "ns0"))
	if r.Intn(3) == 0 {
		subj = subj.And(policy.Eq("app", app()))
	}
	return &policy.Policy{Ref: policy.Ref{Kind: policy.KindCNP, Namespace: "ns0", Name: name}, Subject: subj,
		DefaultDeny: [2]bool{r.Intn(2) == 0, r.Intn(2) == 0}, Rules: rules}
}
