package bpf

import (
	"testing"

	"github.com/flatnet/flatnet/dataplane/compile"
)

// connEntry is the tracked connection of key in the test endpoint's table of
// established ones.
func connEntry(t *testing.T, d *Datapath, key datapathCtKey) datapathCtVal {
	t.Helper()
	m, err := d.estTable(testIfindex)
	if err != nil || m == nil {
		t.Fatalf("no table of established connections: %v", err)
	}
	defer m.Close()
	var v datapathCtVal
	if err := m.Lookup(&key, &v); err != nil {
		t.Fatalf("connection %+v not tracked as established: %v", key, err)
	}
	return v
}

func inboundKey(p pkt) datapathCtKey {
	return datapathCtKey{Ifindex: testIfindex, PodAddr: addrBE(p.dst), PeerAddr: addrBE(p.src), PodPort: p.dport, PeerPort: p.sport, Proto: p.proto}
}

// An established connection's packets in its opening direction skip the policy
// lookup only under the revision policy last allowed them in: a change of the
// peer's identity (an IP cache write, no policy map touched) has them judged again.
func TestEstablishedJudgedAgainAfterAnyWrite(t *testing.T) {
	d := loadTest(t)
	cl := newCluster(t, d)
	cl.cnp("web", webPolicy)
	syn := tcp(clientIP, serverIP, 43000, 80, tcpSYN)
	ack := tcp(clientIP, serverIP, 43000, 80, tcpACK)
	expect(t, d, "client -> :80", dirIngress, syn, tcxNext)
	expect(t, d, "reply", dirEgress, syn.reply(tcpSYN|tcpACK), tcxNext)
	expect(t, d, "forward packet of the connection", dirIngress, ack, tcxNext)
	if v := connEntry(t, d, inboundKey(syn)); v.PolicyRev == 0 || v.PolicyRev != d.rev {
		t.Fatalf("connection holds policy revision %d, want the current one, %d", v.PolicyRev, d.rev)
	}
	expect(t, d, "forward packet under the same revision", dirIngress, ack, tcxNext)

	// The client's labels change: its address gets another identity, which the
	// policy does not allow. Only the IP cache is written for it.
	must(t, cl.c.UpsertPod(compile.Pod{Namespace: "default", Name: "client", Labels: map[string]string{"app": "intruder"}, IP: clientIP}))
	cl.flush()
	expect(t, d, "forward packet after the client's identity changed", dirIngress, ack, tcxDrop)
	expect(t, d, "reply still passes (conntrack)", dirEgress, syn.reply(tcpACK), tcxNext)
}

// Before the revision enters another quarter of its 16-bit range, connections
// holding a revision older than the previous quarter are cleared: none is trusted
// when its revision comes round again. The revision is never 0.
func TestRevisionWrapClearsOldConnections(t *testing.T) {
	d := loadTest(t)
	setEndpoint(t, d, serverIP, 300, &compile.EndpointPolicy{}) // nothing enforced: every packet allowed by policy
	var keys [3]datapathCtKey
	for i := range keys {
		syn := tcp(clientIP, serverIP, uint16(44000+i), 80, tcpSYN)
		expect(t, d, "connection", dirIngress, syn, tcxNext)
		expect(t, d, "reply", dirEgress, syn.reply(tcpSYN|tcpACK), tcxNext)
		keys[i] = inboundKey(syn)
	}
	m, err := d.estTable(testIfindex)
	must(t, err)
	defer m.Close()
	// Revisions as they would be after many bumps: one in the previous quarter
	// (kept), one two quarters back and one three (cleared).
	revs := [3]uint16{revQuarter - 10, 3*revQuarter + 5, 2*revQuarter + 5}
	for i, k := range keys {
		v := connEntry(t, d, k)
		v.PolicyRev = revs[i]
		must(t, m.Put(&k, &v))
	}
	d.rev = revQuarter - 1
	must(t, d.bumpRevision())
	if d.rev != revQuarter {
		t.Fatalf("revision %d after the bump, want %d", d.rev, revQuarter)
	}
	for i, want := range [3]uint16{revs[0], 0, 0} {
		if got := connEntry(t, d, keys[i]).PolicyRev; got != want {
			t.Errorf("connection with revision %d holds %d after entering quarter 1, want %d", revs[i], got, want)
		}
	}
	var r datapathPolicyRev
	must(t, d.objs.FnPolicyRev.Lookup(uint32(0), &r))
	if r.Rev != revQuarter {
		t.Errorf("the programs read revision %d, want %d", r.Rev, revQuarter)
	}
	if nextRevision(0xffff) != 1 {
		t.Errorf("the revision after 65535 is %d, want 1 (never 0)", nextRevision(0xffff))
	}
}
