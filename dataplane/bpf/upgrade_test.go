package bpf

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/flatnet/flatnet/dataplane/compile"
	"github.com/flatnet/flatnet/dataplane/identity"
	"github.com/flatnet/flatnet/dataplane/ipv4"
)

// previousObject is the datapath object of flatnet before per-endpoint connection
// tracking (the committed bpf2go output of commit e2a77f6): one LRU table for every
// connection, no fn_ct_est.
const previousObject = "testdata/datapath-e2a77f6.o"

// loadPrevious loads the previous version's programs and maps into pinDir as its
// agent did, and returns a Datapath holding that version's maps (their layouts are
// this version's for everything the tests write through it: endpoints, policy, IP
// cache, identities) and that version's AttachEndpoint.
func loadPrevious(pinDir string) (*Datapath, func(Endpoint, *compile.EndpointPolicy) error, error) {
	spec, err := ebpf.LoadCollectionSpec(previousObject)
	if err != nil {
		return nil, nil, err
	}
	if err := os.MkdirAll(filepath.Join(pinDir, "links"), 0o700); err != nil {
		return nil, nil, err
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: pinDir}})
	if err != nil {
		return nil, nil, fmt.Errorf("loading %s: %w", previousObject, err)
	}
	if err := coll.Maps["fn_calls"].Put(uint32(0), coll.Programs["deliver_to_pod"]); err != nil {
		return nil, nil, err
	}
	d := &Datapath{pinDir: pinDir, inner: spec.Maps["fn_policy_proto"].Copy(),
		ipIDs: map[ipv4.Prefix]identity.ID{}, services: map[ipv4.Prefix]bool{}}
	d.inner.Name = "fn_ep_policy"
	o := &d.objs
	o.FnEndpoints, o.FnPolicy, o.FnIpcache, o.FnCidrcache = coll.Maps["fn_endpoints"], coll.Maps["fn_policy"], coll.Maps["fn_ipcache"], coll.Maps["fn_cidrcache"]
	o.FnIdentities, o.FnLocalIps, o.FnCounters, o.FnCt = coll.Maps["fn_identities"], coll.Maps["fn_local_ips"], coll.Maps["fn_counters"], coll.Maps["fn_ct"]
	o.FnCalls, o.FnConfig, o.FnEvents, o.FnEventBudget = coll.Maps["fn_calls"], coll.Maps["fn_config"], coll.Maps["fn_events"], coll.Maps["fn_event_budget"]
	o.FromPod, o.ToPod, o.DeliverToPod, o.ServiceEgress = coll.Programs["from_pod"], coll.Programs["to_pod"], coll.Programs["deliver_to_pod"], coll.Programs["service_egress"]
	attach := func(ep Endpoint, pol *compile.EndpointPolicy) error {
		if err := d.syncPolicy(ep.IfIndex, pol); err != nil {
			return err
		}
		info := datapathEndpointInfo{Addr: addrBE(ep.IP), Identity: uint32(ep.Identity)}
		if err := d.objs.FnEndpoints.Put(uint32(ep.IfIndex), &info); err != nil {
			return err
		}
		for _, dir := range []int{dirIngress, dirEgress} {
			if _, err := d.attach(ep.IfIndex, dir); err != nil {
				return err
			}
		}
		return d.objs.FnLocalIps.Put(addrBE(ep.IP), localEndpoint(ep))
	}
	return d, attach, nil
}

// TestNetnsUpgradeFromPreviousLayout runs the previous version's programs (one shared
// connection table of 262,144 entries) with an established connection and traffic,
// then loads this version with a shared table of another size: a pinned map of
// another layout, holding connections no agent can derive again. Load must take the
// pinned state over: the previous programs keep enforcing until each endpoint is
// re-attached with its new maps full (not one allowed connection fails, not one
// denied one passes), the idle connection's tracking entries are converted (its
// server, under egress default deny, can still write on it), and nothing of the
// previous version is left pinned. Fails on main: Load refuses a pinned map of
// another layout.
func TestNetnsUpgradeFromPreviousLayout(t *testing.T) {
	var attachPrevious func(Endpoint, *compile.EndpointPolicy) error
	n := newTestNodeFrom(t, func(pinDir string) (*Datapath, error) {
		d, attach, err := loadPrevious(pinDir)
		attachPrevious = attach
		return d, err
	})
	n.attach = attachPrevious
	server, client, other := n.addServerClientOther()
	server.serveTCP(t, 80)
	const serverPolicy = `
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client, "k8s:io.kubernetes.pod.namespace": default}}]
  egress: [{}]
`
	n.cnp("server", serverPolicy)
	push := client.heldConn(t, server, 8080) // the idle connection
	wantWorks(t, "the server writes on the idle connection (previous version)", push("before"))
	wantBlocked(t, "the server opens a connection under egress default deny", server.tcpQuick(client.ip, 80))

	probes := startProbes(client, other, server, 80)
	time.Sleep(200 * time.Millisecond)

	// The new version's agent: a shared table of another size than the pinned one.
	d2, err := n.load(Options{CTEntries: 4096})
	if err != nil {
		probes.halt()
		t.Fatalf("loading over the previous version's pinned maps: %v", err)
	}
	defer d2.Close()
	up := d2.Upgrade()
	t.Logf("upgrade at load: %+v", up)
	for _, name := range []string{"fn_ct", "fn_policy", "fn_endpoints", "fn_ipcache", "fn_calls"} {
		if !slices.Contains(up.Retired, name) {
			t.Errorf("%s not left to the previous programs: %v", name, up.Retired)
		}
	}
	if up.Converted["fn_ct"] == 0 || up.Pending != 3 {
		t.Errorf("upgrade %+v: want tracked connections converted and 3 endpoints pending", up)
	}
	time.Sleep(300 * time.Millisecond) // the previous programs enforce alone meanwhile

	// As the agent does: identities restored, the cluster replayed and written, then
	// every endpoint re-attached.
	n.restartAgent(t, d2)
	n.cnp("server", serverPolicy)
	for _, p := range []*testPod{server, client, other} {
		n.reattach(t, p)
		time.Sleep(200 * time.Millisecond)
	}
	probes.haltAndCheck(t, "the upgrade", 5, 5)
	if up := d2.Upgrade(); up.Pending != 0 || len(up.Retired) != 0 {
		t.Errorf("after every endpoint was re-attached: %+v, want the upgrade finished", up)
	}
	for _, dir := range []string{n.pinDir, filepath.Join(n.pinDir, "links")} {
		entries, err := os.ReadDir(dir)
		must(t, err)
		for _, e := range entries {
			if strings.HasSuffix(e.Name(), pendingSuffix) {
				t.Errorf("%s of the previous version still pinned in %s", e.Name(), dir)
			}
		}
	}
	wantWorks(t, "the server writes on the idle connection (after the upgrade)", push("after"))
	wantBlocked(t, "other -> server after the upgrade", other.tcpQuick(server.ip, 80))
	n.c.DeletePolicy("cnp/default/server")
	n.flush()
	wantWorks(t, "the new version's writes reach the programs", other.tcpWorks(server.ip, 80))
}

// TestLoadDropsConnectionsOfUnknownLayout: a pinned shared connection table whose
// entries have another size cannot be read; Load takes it over anyway and says how
// many connections it dropped.
func TestLoadDropsConnectionsOfUnknownLayout(t *testing.T) {
	pinDir := pinForeignMap(t, &ebpf.MapSpec{Name: "fn_ct", Type: ebpf.LRUHash, KeySize: 24, ValueSize: 16, MaxEntries: 1024},
		func(old *ebpf.Map) {
			for i := 0; i < 10; i++ {
				var k [24]byte
				k[0] = byte(i)
				must(t, old.Put(k, [16]byte{}))
			}
		})
	d, err := Load(context.Background(), pinDir)
	if err != nil {
		t.Fatalf("loading over an fn_ct of another layout: %v", err)
	}
	defer d.Close()
	if got := d.objs.FnCt.KeySize(); got != 20 {
		t.Errorf("fn_ct key size %d, want this version's 20", got)
	}
	// No endpoint was attached: the upgrade finished at once.
	if up := d.Upgrade(); up.Dropped["fn_ct"] != 10 || len(up.Retired) != 0 {
		t.Errorf("upgrade %+v: want the 10 connections of the unknown layout dropped, and finished", up)
	}
	if _, err := os.Stat(filepath.Join(pinDir, "fn_ct"+pendingSuffix)); !os.IsNotExist(err) {
		t.Errorf("previous fn_ct still pinned: %v", err)
	}
}

// TestEveryPinnedMapHasAnUpgradePolicy: a map added to the datapath must say what an
// upgrade does with it.
func TestEveryPinnedMapHasAnUpgradePolicy(t *testing.T) {
	spec, err := loadDatapath()
	must(t, err)
	for name, m := range spec.Maps {
		if _, ok := mapUpgrades[name]; m.Pinning == ebpf.PinByName && !ok {
			t.Errorf("pinned map %s has no entry in mapUpgrades", name)
		}
	}
	for name := range mapUpgrades {
		if m, ok := spec.Maps[name]; !ok || m.Pinning != ebpf.PinByName {
			t.Errorf("mapUpgrades names %s, which is not a pinned map", name)
		}
	}
}
