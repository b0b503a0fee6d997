package paths

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/flatnet/flatnet/fixtures/oracle"
	"github.com/flatnet/flatnet/suites/reachability"
)

// TestJudgeNeverCountsUndefinedCells: a wrong defined cell is a mismatch, an
// undefined one is listed with its reason whatever was observed, and a cell
// that was not probed is missing, so a run that probed nothing cannot pass.
func TestJudgeNeverCountsUndefinedCells(t *testing.T) {
	o, err := oracle.New(oracle.Cluster{
		Namespaces: []oracle.Namespace{{Name: "ns"}},
		Nodes:      []oracle.Node{{Name: "n1", IP: netip.MustParseAddr("10.224.0.2")}},
		Pods:       []oracle.Pod{{Namespace: "ns", Name: "c", Node: "n1", IP: netip.MustParseAddr("10.224.0.40")}},
	}, oracle.PolicySet{})
	if err != nil {
		t.Fatal(err)
	}
	open := func(o *oracle.Oracle, s oracle.Peer) (oracle.Verdict, error) {
		return o.Decide(s, oracle.WorldPeer(netip.MustParseAddr("10.224.255.10")), 80, oracle.TCP)
	}
	undefined := func(*oracle.Oracle, oracle.Peer) (oracle.Verdict, error) {
		return oracle.Verdict{}, fmt.Errorf("readings disagree: %w", oracle.ErrNotEnforceable)
	}
	port := reachability.PortProtocol{Port: 80, Protocol: oracle.TCP}
	g := Group{Title: "t", Port: port, From: []Source{{Label: "c", Peer: oracle.PodPeer("ns", "c")}},
		To: []Dest{{Label: "world", Decide: open}, {Label: "nodeport", Decide: undefined}, {Label: "world-2", Decide: open}}}
	e, err := g.expect(o)
	if err != nil {
		t.Fatal(err)
	}
	obs, err := reachability.NewTable("t", []string{"c"}, []string{"world", "nodeport", "world-2"}, []reachability.PortProtocol{port})
	if err != nil {
		t.Fatal(err)
	}
	key := func(to string) reachability.Key { return reachability.Key{From: "c", To: to, PortProtocol: port} }
	obs.Set(key("world"), reachability.Cell{Reachable: false, Detail: "timeout"})
	obs.Set(key("nodeport"), reachability.Cell{Reachable: true, Detail: "connected"})
	// world-2 not probed.
	res, err := e.judge("t", obs)
	if err != nil {
		t.Fatal(err)
	}
	if res.OK() || len(res.Comparison.Mismatches) != 1 || res.Comparison.Mismatches[0].To != "world" {
		t.Errorf("mismatches %+v: want world only", res.Comparison.Mismatches)
	}
	if len(res.Comparison.Missing) != 1 || res.Comparison.Missing[0].To != "world-2" {
		t.Errorf("missing %+v: want world-2", res.Comparison.Missing)
	}
	if len(res.NotEnforceable) != 1 || !strings.Contains(res.NotEnforceable[0], "observed reachable") || !strings.Contains(res.NotEnforceable[0], "readings disagree") {
		t.Errorf("not enforceable %q: want the nodeport cell, as observed, with its reason", res.NotEnforceable)
	}
}
