package enforce

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flatnet/flatnet/dataplane/compile"
	"github.com/flatnet/flatnet/dataplane/identity"
	"github.com/flatnet/flatnet/dataplane/ipv4"
	"github.com/flatnet/flatnet/dataplane/policy"
)

const fromNamespaceZ = `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: from-z, namespace: x}
spec:
  endpointSelector: {matchLabels: {app: srv}}
  ingress:
  - fromEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: z}}]
`

// A remote client's namespace is relabelled: its address moves to a new identity.
// Bpf.Apply writes the policies before the IP cache, so the policy map written
// with the move must still admit the old identity (the address carries it until
// the IP cache write), and the write after it, with no further event, takes the
// old identity out. Read from the real maps at each write.
func TestRelabelledPeerIsAdmittedThroughTheMove(t *testing.T) {
	ctx := context.Background()
	c := newContainEnv(t)
	c.pod("x", "srv", "10.224.1.10")
	must(t, c.e.UpsertNamespace(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "z"}}))
	must(t, c.e.UpsertPod(ctx, pod("z", "cli", "10.224.2.20", "n2", map[string]string{"app": "cli"})))
	must(t, c.e.UpsertCiliumPolicy(ctx, cnp(t, fromNamespaceZ)))
	must(t, c.node.Do(func(ns.NetNS) error { return c.e.Synced(ctx) }))
	must(t, c.attach("x", "srv", "10.224.1.10"))
	if !c.mapAllows("x", "srv", "10.224.2.20", 80) {
		t.Fatal("z/cli -> x/srv denied before the relabel")
	}
	old, _ := c.e.c.IdentityOf("z", "cli")
	ifindex := c.e.ifindexesPublished()["x/srv"]
	cli := ipv4.MustParsePrefix("10.224.2.20/32")

	// At each write: does the server's map admit the old identity, and where
	// does the IP cache put the client?
	type seen struct {
		moved, admitsOld bool
		retiring         []identity.ID
	}
	var writes []seen
	c.e.wrote = func(up compile.Update) {
		pol, err := c.e.d.EndpointPolicy(ctx, ifindex)
		must(t, err)
		ipc, err := c.e.d.IPCache(ctx)
		must(t, err)
		writes = append(writes, seen{
			moved:     ipc[cli].Identity != old,
			admitsOld: pol.Decide(policy.Ingress, old, 0, policy.ProtoTCP, 80).Allowed,
			retiring:  up.Retiring,
		})
	}
	must(t, c.e.UpsertNamespace(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "z", Labels: map[string]string{"team": "b"}}}))
	c.e.wrote = nil

	if len(writes) != 2 {
		t.Fatalf("the relabel made %d writes (%+v), want 2: the move, then the old identity out", len(writes), writes)
	}
	if w := writes[0]; !w.moved || !w.admitsOld || len(w.retiring) != 1 || w.retiring[0] != old {
		t.Fatalf("first write: %+v; want the client moved, the old identity %d still admitted and retiring", w, old)
	}
	if w := writes[1]; w.admitsOld || len(w.retiring) != 0 {
		t.Fatalf("second write: %+v; want the old identity %d out of the map", w, old)
	}
	if !c.mapAllows("x", "srv", "10.224.2.20", 80) {
		t.Fatal("z/cli -> x/srv denied after the relabel")
	}
}

const fromCIDR = `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: from-cidr, namespace: x}
spec:
  endpointSelector: {matchLabels: {app: srv}}
  ingress:
  - fromCIDR: [%s]
`

// A CIDR rule changes while 10.1.2.3, admitted before and after, sends to x/srv.
// Bpf.Apply deletes prefixes, then writes the policies, then upserts prefixes: at
// every one of those moments of every write the change makes, the server's policy
// map must admit the identity 10.1.2.3 has in the CIDR map then. Read from the
// real maps at each write.
func TestChangedCIDRRuleAdmitsItsAddressAtEveryMoment(t *testing.T) {
	for _, tc := range []struct{ name, before, after string }{
		{"narrowed", "10.0.0.0/8", "10.1.0.0/16"},
		{"broadened", "10.1.0.0/16", "10.0.0.0/8"},
		{"first policy", "", "10.1.0.0/16"}, // isolates srv
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			c := newContainEnv(t)
			c.pod("x", "srv", "10.224.1.10")
			if tc.before != "" {
				must(t, c.e.UpsertCiliumPolicy(ctx, cnp(t, fmt.Sprintf(fromCIDR, tc.before))))
			}
			must(t, c.node.Do(func(ns.NetNS) error { return c.e.Synced(ctx) }))
			must(t, c.attach("x", "srv", "10.224.1.10"))
			if !c.mapAllows("x", "srv", "10.1.2.3", 80) {
				t.Fatal("10.1.2.3 -> x/srv denied before the change")
			}
			ifindex := c.e.ifindexesPublished()["x/srv"]
			a := netip.MustParseAddr("10.1.2.3")
			read := func() (*compile.EndpointPolicy, map[ipv4.Prefix]identity.ID) {
				pol, err := c.e.d.EndpointPolicy(ctx, ifindex)
				must(t, err)
				cidrs, err := c.e.d.CIDRs(ctx)
				must(t, err)
				return pol, cidrs
			}
			// The identity the CIDR map gives a (world when no prefix holds it).
			identityIn := func(cidrs map[ipv4.Prefix]identity.ID) identity.ID {
				best, id := -1, identity.World
				for p, pid := range cidrs {
					if p.Contains(a) && p.Bits() > best {
						best, id = p.Bits(), pid
					}
				}
				return id
			}
			pol, cidrs := read()
			var moments []string
			check := func(what string, pol *compile.EndpointPolicy, cidrs map[ipv4.Prefix]identity.ID) {
				id := identityIn(cidrs)
				if !pol.Decide(policy.Ingress, identity.World, id, policy.ProtoTCP, 80).Allowed {
					moments = append(moments, fmt.Sprintf("%s: 10.1.2.3 carries %d, not admitted", what, id))
				}
			}
			writes := 0
			c.e.wrote = func(up compile.Update) {
				writes++
				// The moment between this write's prefix deletes and its policies.
				between := maps.Clone(cidrs)
				for _, u := range up.CIDRs {
					if u.Delete {
						delete(between, u.Prefix)
					}
				}
				check(fmt.Sprintf("write %d, prefixes deleted, old policy", writes), pol, between)
				pol, cidrs = read()
				check(fmt.Sprintf("write %d, policy written, prefixes not upserted", writes), pol, between)
				check(fmt.Sprintf("write %d, done", writes), pol, cidrs)
			}
			must(t, c.e.UpsertCiliumPolicy(ctx, cnp(t, fmt.Sprintf(fromCIDR, tc.after))))
			c.e.wrote = nil
			if len(moments) > 0 {
				t.Fatalf("%s -> %s over %d write(s):\n%s", tc.before, tc.after, writes, strings.Join(moments, "\n"))
			}
			if !c.mapAllows("x", "srv", "10.1.2.3", 80) {
				t.Fatal("10.1.2.3 -> x/srv denied after the change")
			}
			t.Logf("%s -> %s: %d writes, every moment admits 10.1.2.3", tc.before, tc.after, writes)
		})
	}
}
