package compile

import (
	"fmt"
	"math/rand"
	"net/netip"
	"reflect"
	"sync"
	"testing"

	"github.com/flatnet/flatnet/dataplane/identity"
	"github.com/flatnet/flatnet/dataplane/policy"
)

// snapshotAnswers is everything a snapshot answers for the probes of a world.
type snapshotAnswers struct {
	peers       map[netip.Addr]any
	rules       map[RuleID]any
	defaultDeny map[string]any
	explain     map[string]any
}

// probeAddrs are the addresses a snapshot is asked about: every pod's, the node's,
// one outside the cluster and some inside the random policies' CIDRs.
func probeAddrs(w *world) []netip.Addr {
	out := []netip.Addr{netip.MustParseAddr("10.0.9.1"), netip.MustParseAddr("192.0.2.1"),
		netip.MustParseAddr("10.0.1.77"), netip.MustParseAddr("10.0.3.200")}
	for _, p := range w.pods {
		out = append(out, p.IP)
	}
	return out
}

// answers asks the getters of one side (the live compiler or a snapshot) everything.
func answers(w *world, maxRule RuleID, peerOf func(netip.Addr) (Peer, bool), rule func(RuleID) (RuleInfo, bool),
	denyBy func(ns, name string, d policy.Direction) []policy.Ref,
	explain func(ns, name string, d policy.Direction, remote netip.Addr, proto policy.Protocol, port uint16) (Decision, error)) snapshotAnswers {
	a := snapshotAnswers{peers: map[netip.Addr]any{}, rules: map[RuleID]any{}, defaultDeny: map[string]any{}, explain: map[string]any{}}
	addrs := probeAddrs(w)
	for _, ip := range addrs {
		p, ok := peerOf(ip)
		a.peers[ip] = fmt.Sprint(p, ok)
	}
	for id := RuleID(0); id <= maxRule; id++ {
		ri, ok := rule(id)
		a.rules[id] = fmt.Sprint(ri, ok)
	}
	for _, p := range w.pods {
		if !p.Local {
			continue
		}
		for _, d := range []policy.Direction{policy.Ingress, policy.Egress} {
			key := fmt.Sprintf("%s/%s %d", p.Namespace, p.Name, d)
			a.defaultDeny[key] = fmt.Sprint(denyBy(p.Namespace, p.Name, d))
			for _, remote := range addrs {
				for _, port := range []uint16{53, 54, 80} {
					dec, err := explain(p.Namespace, p.Name, d, remote, policy.ProtoUDP, port)
					a.explain[fmt.Sprintf("%s %v:%d", key, remote, port)] = fmt.Sprint(dec, err)
				}
			}
		}
	}
	return a
}

func liveAnswers(w *world, c *Compiler) snapshotAnswers {
	return answers(w, c.repo.nextRule+1, c.PeerOf, c.Rule, c.DefaultDenyBy, c.Explain)
}

func snapAnswers(w *world, maxRule RuleID, s *Snapshot) snapshotAnswers {
	return answers(w, maxRule, s.PeerOf, s.RuleName, s.DefaultDenyBy, s.Explain)
}

// snapshotCheck compares, after each Flush of a test driving a compiler through
// random changes, the published snapshot with the compiler's own answers, and
// the snapshot before it with what it answered then: a snapshot never changes.
type snapshotCheck struct {
	prev        *Snapshot
	prevWant    snapshotAnswers
	prevW       *world
	prevMaxRule RuleID
}

func (sc *snapshotCheck) check(t *testing.T, where string, w *world, c *Compiler) {
	t.Helper()
	if sc.prev != nil {
		if got := snapAnswers(sc.prevW, sc.prevMaxRule, sc.prev); !reflect.DeepEqual(got, sc.prevWant) {
			t.Fatalf("%s: the previous snapshot changed with this Flush:\n%s", where, diffAnswers(got, sc.prevWant))
		}
	}
	s, maxRule := c.Snapshot(), c.repo.nextRule+1
	want := liveAnswers(w, c)
	if got := snapAnswers(w, maxRule, s); !reflect.DeepEqual(got, want) {
		t.Fatalf("%s: the snapshot answers differently from the compiler:\n%s", where, diffAnswers(got, want))
	}
	frozen := &world{pods: map[string]Pod{}}
	for k, p := range w.pods {
		frozen.pods[k] = p
	}
	sc.prev, sc.prevWant, sc.prevW, sc.prevMaxRule = s, want, frozen, maxRule
}

func diffAnswers(got, want snapshotAnswers) string {
	out := ""
	add := func(what string, g, w map[string]any) {
		for k, v := range w {
			if g[k] != v {
				out += fmt.Sprintf("  %s %s: got %v, want %v\n", what, k, g[k], v)
			}
		}
	}
	str := func(m any) map[string]any {
		out := map[string]any{}
		v := reflect.ValueOf(m)
		for _, k := range v.MapKeys() {
			out[fmt.Sprint(k.Interface())] = v.MapIndex(k).Interface()
		}
		return out
	}
	add("peer", str(got.peers), str(want.peers))
	add("rule", str(got.rules), str(want.rules))
	add("default deny", got.defaultDeny, want.defaultDeny)
	add("explain", got.explain, want.explain)
	return out
}

// TestSnapshotBeforeFlush: nothing is published before the first Flush, and a
// reader then gets an empty snapshot rather than a nil one.
func TestSnapshotBeforeFlush(t *testing.T) {
	c := New(identity.NewAllocator())
	mustDo(t, c.UpsertPod(Pod{Namespace: "ns", Name: "p", IP: netip.MustParseAddr("10.0.0.1"), Local: true}))
	s := c.Snapshot()
	if _, ok := s.PeerOf(netip.MustParseAddr("10.0.0.1")); ok {
		t.Error("a peer is named before the first Flush published it")
	}
	if _, err := s.Explain("ns", "p", policy.Ingress, netip.MustParseAddr("10.0.0.2"), policy.ProtoTCP, 80); err == nil {
		t.Error("explain answered before the first Flush")
	}
	c.Flush()
	if p, ok := c.Snapshot().PeerOf(netip.MustParseAddr("10.0.0.1")); !ok || p.Name != "p" {
		t.Errorf("after Flush: PeerOf = %+v, %v; want pod p", p, ok)
	}
}

// TestSnapshotPublishRace reads snapshots on other goroutines while the compiler
// changes and flushes (go test -race proves the readers take no part of the
// compiler's own state).
func TestSnapshotPublishRace(t *testing.T) {
	w := &world{r: rand.New(rand.NewSource(9)), ns: map[string]map[string]string{}, pods: map[string]Pod{}, policies: map[string][]*policy.Policy{}}
	c := New(identity.NewAllocator())
	c.UpsertNode("self", []netip.Addr{netip.MustParseAddr("10.0.9.1")}, true)
	c.Flush()
	done := make(chan struct{})
	var wg sync.WaitGroup
	for r := 0; r < 2; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; ; n++ {
				select {
				case <-done:
					return
				default:
				}
				s := c.Snapshot()
				ip := netip.AddrFrom4([4]byte{10, 0, byte(n % 4), byte(1 + n%250)})
				if p, ok := s.PeerOf(ip); ok && p.Name != "" {
					s.DefaultDenyBy(p.Namespace, p.Name, policy.Ingress)
					d, _ := s.Explain(p.Namespace, p.Name, policy.Egress, ip, policy.ProtoUDP, 53)
					s.RuleName(d.RuleID)
				}
				s.RuleName(RuleID(n % 64))
			}
		}()
	}
	for step := 0; step < 300; step++ {
		name, key := fmt.Sprintf("pod%d", step%12), fmt.Sprintf("pol%d", step%8)
		mustDo(t, c.UpsertPod(w.randomPod(name)))
		mustDo(t, c.UpsertPolicy(key, w.randomPolicy(key)))
		c.Flush()
	}
	close(done)
	wg.Wait()
}

// TestSnapshotFollowsNodeOwners: node addresses, the API server's and a pod
// sharing a node's address resolve in the snapshot as in the compiler, through
// every change of owner.
func TestSnapshotFollowsNodeOwners(t *testing.T) {
	c := New(identity.NewAllocator())
	n1, n2 := netip.MustParseAddr("10.224.0.2"), netip.MustParseAddr("10.224.0.3")
	same := func(what string) {
		t.Helper()
		c.Flush()
		for _, ip := range []netip.Addr{n1, n2} {
			want, wok := c.PeerOf(ip)
			got, gok := c.Snapshot().PeerOf(ip)
			if fmt.Sprint(got, gok) != fmt.Sprint(want, wok) {
				t.Errorf("%s: snapshot PeerOf(%v) = %+v, %v; the compiler says %+v, %v", what, ip, got, gok, want, wok)
			}
		}
	}
	c.UpsertNode("n1", []netip.Addr{n1}, true)
	c.UpsertNode("n2", []netip.Addr{n2}, false)
	same("two nodes")
	c.SetAPIServer([]netip.Addr{n2})
	same("the API server on n2")
	mustDo(t, c.UpsertPod(Pod{Namespace: "ns", Name: "hostnet", IP: n1, HostNetwork: true, Local: true}))
	mustDo(t, c.UpsertPod(Pod{Namespace: "ns", Name: "stale", IP: n2}))
	same("pods on the nodes' addresses")
	c.DeleteNode("n2")
	same("n2 gone")
	c.SetAPIServer(nil)
	same("no API server")
	c.DeletePod("ns", "stale")
	same("the stale pod gone")
}
