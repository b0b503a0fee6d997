package bpf

import (
	"encoding/json"
	"net/netip"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"

	"github.com/flatnet/flatnet/dataplane/compile"
	"github.com/flatnet/flatnet/dataplane/identity"
	"github.com/flatnet/flatnet/dataplane/ipv4"
	"github.com/flatnet/flatnet/dataplane/policy"
)

// FuzzPolicyToMapKeys runs arbitrary NetworkPolicy or CNP/CCNP JSON the whole way an
// agent does short of the kernel: parse, compile for a few local pods, and lay out
// every map key and value Apply would write. Whatever the parser accepts must become
// keys the datapath can hold: no key building may fail, no prefix may be out of
// range, no port prefix longer than 16 bits (issue 13 item 1: an IPv4-mapped CIDR
// got through as an invalid prefix and failed every write of the node).
func FuzzPolicyToMapKeys(f *testing.F) {
	for _, s := range []string{
		`{"kind":"CiliumNetworkPolicy","metadata":{"name":"a","namespace":"ns"},"spec":{"endpointSelector":{},"egress":[{"toCIDR":["::ffff:10.0.0.0/104"]}]}}`,
		`{"kind":"CiliumNetworkPolicy","metadata":{"name":"a","namespace":"ns"},"spec":{"endpointSelector":{},"egress":[{"toCIDR":["::ffff:10.1.2.3"]}]}}`,
		`{"kind":"CiliumNetworkPolicy","metadata":{"name":"a","namespace":"ns"},"spec":{"endpointSelector":{},"egressDeny":[{"toCIDRSet":[{"cidr":"::ffff:0:0/96","except":["::ffff:10.0.0.0/104"]}]}]}}`,
		`{"kind":"CiliumNetworkPolicy","metadata":{"name":"a","namespace":"ns"},"spec":{"endpointSelector":{},"ingress":[{"fromCIDRSet":[{"cidr":"10.0.0.0/8","except":["10.1.0.0/16"]}],"toPorts":[{"ports":[{"port":"80","endPort":90}]}]}]}}`,
		`{"kind":"CiliumClusterwideNetworkPolicy","metadata":{"name":"a"},"specs":[{"endpointSelector":{},"egressDeny":[{"toEntities":["world"]}],"egress":[{"toCIDR":["0.0.0.0/0","2001:db8::/32"]}]}]}`,
		`{"metadata":{"name":"a","namespace":"ns"},"spec":{"podSelector":{},"ingress":[{"from":[{"ipBlock":{"cidr":"::ffff:192.168.0.0/120"}}]}]}}`,
		`{"metadata":{"name":"a","namespace":"ns"},"spec":{"podSelector":{},"policyTypes":["Egress"],"egress":[{"to":[{"ipBlock":{"cidr":"10.0.0.0/8","except":["10.1.0.0/16","::ffff:10.2.0.0/112"]}}],"ports":[{"port":1,"endPort":65535}]}]}}`,
		`{"metadata":{"name":"a","namespace":"ns"},"spec":{"podSelector":{},"egress":[{"to":[{"namespaceSelector":{}}],"ports":[{"port":"dns","protocol":"UDP"}]}]}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		pols, key := fuzzParse(data)
		if pols == nil {
			return
		}
		c := compile.New(identity.NewAllocator())
		for _, ns := range []string{"ns", "other"} {
			if err := c.UpsertNamespace(compile.Namespace{Name: ns, Labels: map[string]string{"team": ns}}); err != nil {
				t.Fatal(err)
			}
		}
		for i, p := range []compile.Pod{
			{Namespace: "ns", Name: "a", Labels: map[string]string{"app": "a"}, IP: netip.MustParseAddr("10.224.1.10"), Local: true,
				Ports: []compile.NamedPort{{Name: "dns", Protocol: policy.ProtoUDP, Port: 53}}},
			{Namespace: "other", Name: "b", Labels: map[string]string{"app": "b"}, IP: netip.MustParseAddr("10.224.1.11"), Local: true},
			{Namespace: "ns", Name: "c", Labels: map[string]string{"app": "c"}, IP: netip.MustParseAddr("10.224.2.20")},
		} {
			if err := c.UpsertPod(p); err != nil {
				t.Fatalf("pod %d: %v", i, err)
			}
		}
		c.UpsertNode("self", []netip.Addr{netip.MustParseAddr("10.224.0.2")}, true)
		if err := c.UpsertPolicy(key, pols); err != nil {
			t.Fatalf("compiling an accepted policy: %v", err)
		}
		up := c.Flush()
		for _, e := range up.Endpoints {
			if e.Policy == nil {
				continue
			}
			keys, vals := policyEntries(e.Policy)
			if len(keys) != len(vals) || len(keys) != len(e.Policy.Entries)+2 {
				t.Fatalf("%s/%s: %d keys, %d values for %d entries", e.Namespace, e.Name, len(keys), len(vals), len(e.Policy.Entries))
			}
			for _, k := range keys {
				if k.Dir > dirEgress || k.Plen > 16 || (k.Proto == 0 && (k.Plen != 0 || k.Dport != 0)) {
					t.Fatalf("%s/%s: key %+v out of range", e.Namespace, e.Name, k)
				}
			}
		}
		for _, u := range append(up.IPCache, up.CIDRs...) {
			k := ipcacheKey(u.Prefix)
			back, err := ipv4.From4(addrFromBE(k.Addr).As4(), int(k.Prefixlen))
			if err != nil || back != u.Prefix {
				t.Fatalf("prefix %v keyed as %+v reads back as %v, %v", u.Prefix, k, back, err)
			}
		}
	})
}

// fuzzParse decodes data as a CNP/CCNP or else as a NetworkPolicy; nil when neither
// accepts it.
func fuzzParse(data []byte) ([]*policy.Policy, string) {
	if c, err := policy.DecodeCilium(data); err == nil && (c.Kind == string(policy.KindCNP) || c.Kind == string(policy.KindCCNP)) {
		pols, err := policy.FromCilium(c)
		if err != nil {
			return nil, ""
		}
		return pols, "cnp/" + c.Namespace + "/" + c.Name
	}
	var np networkingv1.NetworkPolicy
	if err := json.Unmarshal(data, &np); err != nil {
		return nil, ""
	}
	p, err := policy.FromNetworkPolicy(&np)
	if err != nil {
		return nil, ""
	}
	return []*policy.Policy{p}, "np/" + np.Namespace + "/" + np.Name
}
