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
	return answers(w, c.nextRule+1, c.PeerOf, c.Rule, c.DefaultDenyBy, c.Explain)
}

func snapAnswers(w *world, maxRule RuleID, s *Snapshot) snapshotAnswers {
	return answers(w, maxRule, s.PeerOf, s.RuleName, s.DefaultDenyBy, s.Explain)
}

// randomStep applies one random change to w and c, as TestIncrementalMatchesFullCompile does.
func randomStep(t *testing.T, w *world, c *Compiler) {
	t.Helper()
	switch op := w.r.Intn(10); {
	case op < 3:
		name := fmt.Sprintf("pod%d", w.r.Intn(12))
		if old, ok := w.pods[name]; ok {
			c.DeletePod(old.Namespace, old.Name)
			delete(w.pods, name)
			if w.r.Intn(3) == 0 {
				return
			}
		}
		p := w.randomPod(name)
		w.pods[name] = p
		mustDo(t, c.UpsertPod(p))
	case op < 5:
		name := fmt.Sprintf("ns%d", w.r.Intn(4))
		l := map[string]string{"env": []string{"prod", "dev"}[w.r.Intn(2)]}
		w.ns[name] = l
		mustDo(t, c.UpsertNamespace(Namespace{Name: name, Labels: l}))
	case op < 9:
		key := fmt.Sprintf("pol%d", w.r.Intn(8))
		if _, ok := w.policies[key]; ok && w.r.Intn(3) == 0 {
			c.DeletePolicy(key)
			delete(w.policies, key)
			return
		}
		w.policies[key] = w.randomPolicy(key)
		mustDo(t, c.UpsertPolicy(key, w.policies[key]))
	default:
		c.UpsertNode("peer", []netip.Addr{netip.AddrFrom4([4]byte{10, 0, byte(w.r.Intn(4)), byte(1 + w.r.Intn(250))})}, false)
	}
}

// TestSnapshotMatchesCompiler: after every Flush the published snapshot answers
// exactly as the compiler itself does (peers, rule names, default-deny owners of
// local endpoints, explain), and a snapshot once taken never changes afterwards.
func TestSnapshotMatchesCompiler(t *testing.T) {
	for seed := int64(1); seed <= 6; seed++ {
		w := &world{r: rand.New(rand.NewSource(seed)), ns: map[string]map[string]string{}, pods: map[string]Pod{}, policies: map[string][]*policy.Policy{}}
		c := New(identity.NewAllocator())
		c.UpsertNode("self", []netip.Addr{netip.MustParseAddr("10.0.9.1")}, true)
		type taken struct {
			s       *Snapshot
			want    snapshotAnswers
			w       *world
			maxRule RuleID
		}
		var kept []taken
		for step := 0; step < 120; step++ {
			randomStep(t, w, c)
			if w.r.Intn(3) != 0 {
				continue // let changes pile up between flushes too
			}
			c.Flush()
			s := c.Snapshot()
			want := liveAnswers(w, c)
			if got := snapAnswers(w, c.nextRule+1, s); !reflect.DeepEqual(got, want) {
				t.Fatalf("seed %d step %d: the snapshot answers differently from the compiler:\n%s", seed, step, diffAnswers(got, want))
			}
			if step%20 == 0 {
				frozen := &world{pods: map[string]Pod{}}
				for k, p := range w.pods {
					frozen.pods[k] = p
				}
				kept = append(kept, taken{s: s, want: want, w: frozen, maxRule: c.nextRule + 1})
			}
		}
		for i, k := range kept {
			if got := snapAnswers(k.w, k.maxRule, k.s); !reflect.DeepEqual(got, k.want) {
				t.Fatalf("seed %d: snapshot %d changed after later flushes:\n%s", seed, i, diffAnswers(got, k.want))
			}
		}
	}
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
		randomStep(t, w, c)
		c.Flush()
	}
	close(done)
	wg.Wait()
}
