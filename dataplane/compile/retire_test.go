package compile

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/flatnet/flatnet/dataplane/identity"
	"github.com/flatnet/flatnet/dataplane/ipv4"
	"github.com/flatnet/flatnet/dataplane/policy"
)

// retireWorld: local server x/srv admits namespace z on 80/TCP and may reach
// z's pods on their named port "web"; z/cli is a remote pod with that port.
func retireWorld(t *testing.T) *Compiler {
	t.Helper()
	c := New(identity.NewAllocator())
	mustDo(t, c.UpsertNamespace(Namespace{Name: "x"}))
	mustDo(t, c.UpsertNamespace(Namespace{Name: "z"}))
	mustDo(t, c.UpsertPod(Pod{Namespace: "x", Name: "srv", Labels: map[string]string{"app": "srv"}, IP: netip.MustParseAddr("10.0.0.1"), Local: true}))
	mustDo(t, c.UpsertPod(Pod{Namespace: "z", Name: "cli", Labels: map[string]string{"app": "cli"}, IP: netip.MustParseAddr("10.0.0.9"),
		Ports: []NamedPort{{Name: "web", Protocol: policy.ProtoTCP, Port: 8080}}}))
	inZ := policy.Selector{}.And(policy.Eq(policy.NamespaceLabel, "z"))
	mustDo(t, c.UpsertPolicy("p", []*policy.Policy{{
		Ref: policy.Ref{Kind: policy.KindCNP, Namespace: "x", Name: "p"}, Subject: policy.Selector{}.And(policy.Eq("app", "srv")),
		DefaultDeny: [2]bool{true, true},
		Rules: []policy.Rule{
			{Direction: policy.Ingress, Name: "from-z", Peers: []policy.Peer{{Endpoints: &inZ}}, Ports: []policy.Port{{Protocol: policy.ProtoTCP, Port: 80, EndPort: 80}}},
			{Direction: policy.Egress, Name: "to-z-web", Peers: []policy.Peer{{Endpoints: &inZ}}, Ports: []policy.Port{{Protocol: policy.ProtoTCP, Name: "web"}}},
		},
	}}))
	if up := c.Flush(); len(up.Retiring) != 0 {
		t.Fatalf("nothing retires in the first flush, got %v", up.Retiring)
	}
	return c
}

// paths says whether srv admits id on 80/TCP and reaches it on 8080/TCP.
func paths(c *Compiler, id identity.ID) (in, out bool) {
	p := c.EndpointPolicy("x", "srv")
	in, _ = lookup(p, policy.Ingress, []identity.ID{id}, policy.ProtoTCP, 80)
	out, _ = lookup(p, policy.Egress, []identity.ID{id}, policy.ProtoTCP, 8080)
	return in, out
}

func ipcacheMove(up Update, ip string) (identity.ID, bool) {
	want := ipv4.MustParsePrefix(ip + "/32")
	for _, u := range up.IPCache {
		if u.Prefix == want && !u.Delete {
			return u.Identity, true
		}
	}
	return 0, false
}

// A relabelled peer's address moves to its new identity only after the
// endpoints' policies are written (Update's order), so the policies written
// with the move must still admit the old identity: else every packet in
// between is dropped (seen in the e2e as UDP probes from a pod whose namespace
// was relabelled timing out on paths open before and after). The old identity
// goes in the write after, once Written says the move is in the datapath.
func TestRelabelledPeerKeepsOldIdentityUntilRetired(t *testing.T) {
	c := retireWorld(t)
	old, _ := c.IdentityOf("z", "cli")
	if in, out := paths(c, old); !in || !out {
		t.Fatalf("before the relabel: from z in=%v, to z:web out=%v; want both open", in, out)
	}

	mustDo(t, c.UpsertNamespace(Namespace{Name: "z", Labels: map[string]string{"team": "b"}}))
	now, _ := c.IdentityOf("z", "cli")
	if now == old {
		t.Fatalf("relabelling the namespace kept identity %d", old)
	}
	up := c.Flush()
	if id, ok := ipcacheMove(up, "10.0.0.9"); !ok || id != now {
		t.Fatalf("the flush after the relabel must move 10.0.0.9 to %d, IP cache updates %+v", now, up.IPCache)
	}
	if !slices.Equal(up.Retiring, []identity.ID{old}) {
		t.Fatalf("Retiring = %v, want [%d]", up.Retiring, old)
	}
	for _, id := range []identity.ID{old, now} {
		if in, out := paths(c, id); !in || !out {
			t.Fatalf("written with the move, identity %d: in=%v out=%v; the old and the new one must both be open", id, in, out)
		}
	}

	c.Written(up)
	up = c.Flush()
	if len(up.Retiring) != 0 {
		t.Fatalf("after Written, Retiring = %v", up.Retiring)
	}
	if len(up.Endpoints) != 1 {
		t.Fatalf("retiring a selected identity must rewrite srv, got %d endpoint updates", len(up.Endpoints))
	}
	if in, out := paths(c, old); in || out {
		t.Fatalf("retired identity %d still open: in=%v out=%v", old, in, out)
	}
	if in, out := paths(c, now); !in || !out {
		t.Fatalf("identity %d closed by the retirement: in=%v out=%v", now, in, out)
	}
	deleted := false
	for _, u := range up.Identities {
		deleted = deleted || (u.ID == old && u.Delete)
	}
	if !deleted {
		t.Fatalf("the retired identity's record must be deleted, identity updates %+v", up.Identities)
	}
}

// A label set taken again before its identity retired keeps its number, and
// Written with the stale list forgets nothing.
func TestRetiringIdentityHeldAgain(t *testing.T) {
	c := retireWorld(t)
	old, _ := c.IdentityOf("z", "cli")
	mustDo(t, c.UpsertNamespace(Namespace{Name: "z", Labels: map[string]string{"team": "b"}}))
	now, _ := c.IdentityOf("z", "cli")
	up := c.Flush()
	mustDo(t, c.UpsertNamespace(Namespace{Name: "z"}))
	if back, _ := c.IdentityOf("z", "cli"); back != old {
		t.Fatalf("the old label set came back as %d, want its retiring identity %d", back, old)
	}
	c.Written(up)
	up = c.Flush()
	if !slices.Equal(up.Retiring, []identity.ID{now}) {
		t.Fatalf("Retiring = %v, want [%d] (the label set left since); %d is held again", up.Retiring, now, old)
	}
	c.Written(up)
	c.Flush()
	if in, out := paths(c, old); !in || !out {
		t.Fatalf("identity %d held again: in=%v out=%v, want both open", old, in, out)
	}
	if id, ok := c.IdentityOf("z", "cli"); !ok || id != old {
		t.Fatalf("z/cli has identity %d (%v), want %d", id, ok, old)
	}
}

// A deleted pod's identity retires too: the IP cache deletes its address
// before the policies are written, so nothing carries it meanwhile, and the
// next write takes it out.
func TestDeletedPodIdentityRetires(t *testing.T) {
	c := retireWorld(t)
	old, _ := c.IdentityOf("z", "cli")
	c.DeletePod("z", "cli")
	up := c.Flush()
	if !slices.Equal(up.Retiring, []identity.ID{old}) {
		t.Fatalf("Retiring = %v, want [%d]", up.Retiring, old)
	}
	c.Written(up)
	c.Flush()
	if in, out := paths(c, old); in || out {
		t.Fatalf("identity %d of the deleted pod still open: in=%v out=%v", old, in, out)
	}
}

// A retiring identity keeps its last pod's named ports; a pod without them
// taking the label set again drops them, and the policies resolving names
// there follow.
func TestRetiringIdentityHeldByAPodWithoutNamedPorts(t *testing.T) {
	c := retireWorld(t)
	old, _ := c.IdentityOf("z", "cli")
	// cli moves to another label set; old retires with cli's "web".
	mustDo(t, c.UpsertPod(Pod{Namespace: "z", Name: "cli", Labels: map[string]string{"app": "other"}, IP: netip.MustParseAddr("10.0.0.9"),
		Ports: []NamedPort{{Name: "web", Protocol: policy.ProtoTCP, Port: 8080}}}))
	up := c.Flush()
	if _, out := paths(c, old); !out {
		t.Fatalf("retiring identity %d lost its named port web while retiring", old)
	}
	// A new pod without ports takes cli's old label set.
	mustDo(t, c.UpsertPod(Pod{Namespace: "z", Name: "bare", Labels: map[string]string{"app": "cli"}, IP: netip.MustParseAddr("10.0.0.10")}))
	if id, _ := c.IdentityOf("z", "bare"); id != old {
		t.Fatalf("z/bare got identity %d, want the retiring %d", id, old)
	}
	c.Written(up)
	c.Flush()
	if _, out := paths(c, old); out {
		t.Fatalf("identity %d is held by a pod without named ports, yet srv still reaches it on web (8080)", old)
	}
	if now, _ := c.IdentityOf("z", "cli"); now == old {
		t.Fatalf("z/cli kept identity %d", old)
	} else if _, out := paths(c, now); !out {
		t.Fatalf("z/cli's identity %d (it names web) is not reachable on 8080", now)
	}
}

// cidrWorld is a compiler with one local pod x/srv, and helpers: egressTo(blocks)
// is a policy letting srv reach only the blocks; allowed(id) says whether srv may
// reach an address of CIDR identity id on 80/TCP.
func cidrWorld(t *testing.T) (c *Compiler, egressTo func(blocks ...string) []*policy.Policy, allowed func(identity.ID) bool) {
	c = New(identity.NewAllocator())
	mustDo(t, c.UpsertNamespace(Namespace{Name: "x"}))
	mustDo(t, c.UpsertPod(Pod{Namespace: "x", Name: "srv", Labels: map[string]string{"app": "srv"}, IP: netip.MustParseAddr("10.224.0.10"), Local: true}))
	egressTo = func(blocks ...string) []*policy.Policy {
		var peers []policy.Peer
		for _, b := range blocks {
			peers = append(peers, policy.Peer{CIDR: &policy.CIDR{Prefix: ipv4.MustParsePrefix(b)}})
		}
		return []*policy.Policy{{
			Ref: policy.Ref{Kind: policy.KindNetworkPolicy, Namespace: "x", Name: "p"}, Subject: policy.Selector{}.And(policy.Eq("app", "srv")),
			DefaultDeny: [2]bool{false, true},
			Rules:       []policy.Rule{{Direction: policy.Egress, Name: "out", Peers: peers}},
		}}
	}
	allowed = func(cidrID identity.ID) bool {
		ok, _ := lookup(c.EndpointPolicy("x", "srv"), policy.Egress, []identity.ID{identity.World, cidrID}, policy.ProtoTCP, 80)
		return ok
	}
	return c, egressTo, allowed
}

// deletes lists the prefixes an update deletes.
func deletes(up Update) []ipv4.Prefix {
	var out []ipv4.Prefix
	for _, u := range up.CIDRs {
		if u.Delete {
			out = append(out, u.Prefix)
		}
	}
	return out
}

// An ipBlock broadened from 10.1.0.0/16 to 10.0.0.0/8: the datapath writes the
// new prefix after the endpoints' policies and deleted ones before, so were
// 10.1/16 deleted with the change, 10.1.2.3 would be "world" (no prefix) until
// 10/8 is in, and dropped by the old and the new policy alike. It retires
// instead: the new 10/8 peer selects it too, and it goes a write later.
func TestBroadenedCIDRKeepsTheNarrowPrefixUntilRetired(t *testing.T) {
	c, egressTo, allowed := cidrWorld(t)
	a := netip.MustParseAddr("10.1.2.3")
	mustDo(t, c.UpsertPolicy("np/x/p", egressTo("10.1.0.0/16")))
	flushHeld(c)
	narrow := c.pfx.identityOf(a)
	if narrow == 0 || !allowed(narrow) {
		t.Fatalf("10.1.2.3 (prefix identity %d) not allowed by the 10.1.0.0/16 rule", narrow)
	}

	mustDo(t, c.UpsertPolicy("np/x/p", egressTo("10.0.0.0/8")))
	up := c.Flush() // stages 10/8 under the old rule
	if up.Held != 1 || len(deletes(up)) != 0 || !allowed(narrow) {
		t.Fatalf("the staging write: held %d, deletes %v, 10.1/16 allowed %v; want the change held, nothing deleted, 10.1/16 allowed", up.Held, deletes(up), allowed(narrow))
	}
	c.Written(up)
	up = c.Flush() // the rule changes
	if d := deletes(up); len(d) != 0 {
		t.Fatalf("the broadening's write deletes %v: 10.1.2.3 would be world until 10.0.0.0/8 is in", d)
	}
	if !slices.Contains(up.Retiring, narrow) {
		t.Fatalf("Retiring = %v, want 10.1.0.0/16's identity %d", up.Retiring, narrow)
	}
	if !allowed(narrow) {
		t.Fatalf("the 10.0.0.0/8 rule does not admit the retiring 10.1.0.0/16 (identity %d), which 10.1.2.3 still carries", narrow)
	}

	c.Written(up)
	up = c.Flush()
	if d := deletes(up); !slices.Equal(d, []ipv4.Prefix{ipv4.MustParsePrefix("10.1.0.0/16")}) {
		t.Fatalf("after the retirement the next write must delete 10.1.0.0/16, deletes %v", d)
	}
	wide := c.pfx.identityOf(a)
	if wide == narrow || !allowed(wide) {
		t.Fatalf("after the retirement 10.1.2.3 carries %d (was %d), allowed=%v", wide, narrow, allowed(wide))
	}
	if allowed(narrow) {
		t.Fatalf("retired prefix identity %d still in the policy", narrow)
	}
}

// An ipBlock narrowed from 10.0.0.0/8 to 10.1.0.0/16: in one write the new rule
// (written first) would not admit 10/8's identity, which 10.1.2.3 carries until
// 10.1/16 is upserted after it. Staged, 10.1/16 is written first under the old
// rule, which admits it (its block holds it); the rule changes a write later,
// when 10.1.2.3 carries it already.
func TestNarrowedCIDRStagesTheNarrowPrefixUnderTheOldRule(t *testing.T) {
	c, egressTo, allowed := cidrWorld(t)
	a, out := netip.MustParseAddr("10.1.2.3"), netip.MustParseAddr("10.2.0.1")
	mustDo(t, c.UpsertPolicy("np/x/p", egressTo("10.0.0.0/8")))
	flushHeld(c)
	wide := c.pfx.identityOf(a)
	if wide == 0 || !allowed(wide) {
		t.Fatalf("10.1.2.3 (prefix identity %d) not allowed by the 10.0.0.0/8 rule", wide)
	}

	mustDo(t, c.UpsertPolicy("np/x/p", egressTo("10.1.0.0/16")))
	up := c.Flush()
	narrow := c.pfx.identityOf(a)
	// Written in this order: the policies, then 10.1/16; 10.1.2.3 carries 10/8's
	// identity, then 10.1/16's: the policy must admit both.
	if !allowed(wide) || !allowed(narrow) {
		t.Fatalf("the write that upserts 10.1/16 must admit 10/8's identity %d (%v), which 10.1.2.3 carries until then, and 10.1/16's %d (%v)", wide, allowed(wide), narrow, allowed(narrow))
	}
	if up.Held != 1 || narrow == wide || len(deletes(up)) != 0 {
		t.Fatalf("the staging write: held %d, 10.1.2.3's identity %d (10/8's %d), deletes %v; want the change held and 10.1/16 staged", up.Held, narrow, wide, deletes(up))
	}
	if !slices.ContainsFunc(up.CIDRs, func(u PrefixUpdate) bool {
		return !u.Delete && u.Prefix == ipv4.MustParsePrefix("10.1.0.0/16") && u.Identity == narrow
	}) {
		t.Fatalf("the staging write does not upsert 10.1.0.0/16: %+v", up.CIDRs)
	}

	c.Written(up)
	up = c.Flush()
	if up.Held != 0 || !allowed(narrow) || allowed(wide) || !slices.Contains(up.Retiring, wide) || len(deletes(up)) != 0 {
		t.Fatalf("the rule's write: held %d, 10.1/16 allowed %v, 10/8 allowed %v, retiring %v, deletes %v; want only 10.1/16 admitted, 10/8 retiring and kept",
			up.Held, allowed(narrow), allowed(wide), up.Retiring, deletes(up))
	}
	if c.pfx.identityOf(out) != wide {
		t.Fatalf("10.2.0.1 carries %d, want the retiring 10/8's %d until it goes", c.pfx.identityOf(out), wide)
	}
	c.Written(up)
	if up = c.Flush(); !slices.Equal(deletes(up), []ipv4.Prefix{ipv4.MustParsePrefix("10.0.0.0/8")}) || up.Unsettled() {
		t.Fatalf("after the retirement: deletes %v, unsettled %v; want 10.0.0.0/8 deleted and nothing more", deletes(up), up.Unsettled())
	}
}

// A first policy isolating srv to 10.1.0.0/16 while no rule names a prefix holding
// 10.1.2.3: in one write srv would be isolated before 10.1.2.3 leaves world. The
// prefix is staged while srv is still open to all; then srv is isolated. A later
// change of the same key that names no new prefix (egress denied to all) waits
// behind the held one: applied at once, the held one would then undo it.
func TestNewCIDRPolicyIsHeldUntilItsPrefixIsWritten(t *testing.T) {
	c, egressTo, allowed := cidrWorld(t)
	flushHeld(c)
	mustDo(t, c.UpsertPolicy("np/x/p", egressTo("10.1.0.0/16")))
	up := c.Flush()
	narrow := c.pfx.identityOf(netip.MustParseAddr("10.1.2.3"))
	if !allowed(identity.World) {
		t.Fatalf("the write that upserts 10.1/16 isolates srv: 10.1.2.3 is world until then, and dropped")
	}
	if up.Held != 1 || narrow == 0 || !allowed(narrow) {
		t.Fatalf("the staging write: held %d, 10.1/16's identity %d: want the change held, srv still open to all", up.Held, narrow)
	}
	mustDo(t, c.UpsertPolicy("np/x/p", egressTo())) // before the staging write is in
	c.Written(up)
	up = c.Flush()
	if up.Held != 1 || allowed(identity.World) || !allowed(narrow) {
		t.Fatalf("after the staging write: held %d, world allowed %v, 10.1/16 %v: want 10.1/16 only, the deny-all held", up.Held, allowed(identity.World), allowed(narrow))
	}
	c.Written(up)
	up = c.Flush()
	if allowed(identity.World) || allowed(narrow) {
		t.Fatalf("the last change (egress denied to all) is not in force: world %v, 10.1/16 %v", allowed(identity.World), allowed(narrow))
	}
	c.Written(up)
	c.FlushSettled() // 10.1/16, named by no rule now, retires
	if up = c.Flush(); !up.Empty() || up.Unsettled() {
		t.Fatalf("a settled compiler flushed %+v", up)
	}
}
