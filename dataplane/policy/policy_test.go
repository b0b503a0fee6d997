package policy

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	"sigs.k8s.io/yaml"

	"github.com/flatnet/flatnet/dataplane/ipv4"
)

func np(t *testing.T, doc string) (*Policy, error) {
	t.Helper()
	var p networkingv1.NetworkPolicy
	if err := yaml.UnmarshalStrict([]byte(doc), &p); err != nil {
		t.Fatal(err)
	}
	return FromNetworkPolicy(&p)
}

func cnp(t *testing.T, doc string) ([]*Policy, error) {
	t.Helper()
	js, err := yaml.YAMLToJSON([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	c, err := DecodeCilium(js)
	if err != nil {
		return nil, err
	}
	return FromCilium(c)
}

func labels(ns string, kv ...string) map[string]string {
	pod := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		pod[kv[i]] = kv[i+1]
	}
	return IdentityLabels(ns, pod, map[string]string{"kubernetes.io/metadata.name": ns, "team": ns + "-team"}, "")
}

func TestNetworkPolicyTypesDefaulting(t *testing.T) {
	for _, c := range []struct {
		name, doc string
		want      [2]bool
		rules     int
	}{
		{"ingress only by default", `
metadata: {name: a, namespace: ns}
spec:
  podSelector: {}
  ingress: [{}]`, [2]bool{true, false}, 1},
		{"egress rules add Egress", `
metadata: {name: a, namespace: ns}
spec:
  podSelector: {}
  egress: [{}]`, [2]bool{true, true}, 1},
		{"explicit Egress ignores ingress rules", `
metadata: {name: a, namespace: ns}
spec:
  podSelector: {}
  policyTypes: [Egress]
  ingress: [{}]`, [2]bool{false, true}, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			p, err := np(t, c.doc)
			if err != nil {
				t.Fatal(err)
			}
			if p.DefaultDeny != c.want || len(p.Rules) != c.rules {
				t.Fatalf("default deny %v with %d rules, want %v with %d", p.DefaultDeny, len(p.Rules), c.want, c.rules)
			}
		})
	}
}

func TestNetworkPolicyPeers(t *testing.T) {
	p, err := np(t, `
metadata: {name: a, namespace: ns}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from:
    - podSelector: {matchLabels: {app: web}}
    - namespaceSelector: {matchLabels: {team: prod-team}}
    - namespaceSelector: {matchExpressions: [{key: team, operator: In, values: [qa-team]}]}
      podSelector: {matchExpressions: [{key: app, operator: NotIn, values: [db]}]}
    - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}
    ports:
    - port: 5432
    - {protocol: UDP, port: 1000, endPort: 2000}
    - port: metrics
`)
	if err != nil {
		t.Fatal(err)
	}
	if !p.Subject.Matches(labels("ns", "app", "db")) || p.Subject.Matches(labels("other", "app", "db")) {
		t.Fatalf("subject %q must select app=db in ns only", p.Subject)
	}
	r := p.Rules[0]
	peer := func(i int, l map[string]string) bool { return r.Peers[i].Endpoints.Matches(l) }
	checks := []struct {
		what string
		got  bool
		want bool
	}{
		{"podSelector matches same namespace", peer(0, labels("ns", "app", "web")), true},
		{"podSelector never crosses namespaces", peer(0, labels("prod", "app", "web")), false},
		{"namespaceSelector matches any pod of prod", peer(1, labels("prod", "app", "x")), true},
		{"namespaceSelector does not match ns", peer(1, labels("ns", "app", "web")), false},
		{"both: pod and namespace", peer(2, labels("qa", "app", "web")), true},
		{"both: namespace right, pod excluded", peer(2, labels("qa", "app", "db")), false},
		{"both: pod right, namespace wrong", peer(2, labels("ns", "app", "web")), false},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: got %v, want %v", c.what, c.got, c.want)
		}
	}
	if c := r.Peers[3].CIDR; c == nil || c.Prefix.String() != "10.0.0.0/8" || len(c.Except) != 1 {
		t.Fatalf("ipBlock peer = %+v", r.Peers[3])
	}
	want := []Port{{Protocol: ProtoTCP, Port: 5432, EndPort: 5432}, {Protocol: ProtoUDP, Port: 1000, EndPort: 2000}, {Protocol: ProtoTCP, Name: "metrics"}}
	if len(r.Ports) != len(want) {
		t.Fatalf("ports %+v", r.Ports)
	}
	for i := range want {
		if r.Ports[i] != want[i] {
			t.Errorf("port %d = %+v, want %+v", i, r.Ports[i], want[i])
		}
	}
}

func TestInvalidPoliciesNameObjectAndField(t *testing.T) {
	for _, c := range []struct {
		name, doc, field string
		cilium           bool
	}{
		{"bad cidr", `
metadata: {name: bad, namespace: ns}
spec:
  podSelector: {}
  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/33}}]}]`, "spec.egress[0].to[0].ipBlock.cidr", false},
		{"except outside", `
metadata: {name: bad, namespace: ns}
spec:
  podSelector: {}
  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}}]}]`, "spec.egress[0].to[0].ipBlock.except[0]", false},
		{"port 0", `
metadata: {name: bad, namespace: ns}
spec:
  podSelector: {}
  ingress: [{ports: [{port: 0}]}]`, "spec.ingress[0].ports[0].port", false},
		{"port too big", `
metadata: {name: bad, namespace: ns}
spec:
  podSelector: {}
  ingress: [{ports: [{port: 70000}]}]`, "spec.ingress[0].ports[0].port", false},
		{"endPort below port", `
metadata: {name: bad, namespace: ns}
spec:
  podSelector: {}
  ingress: [{ports: [{port: 90, endPort: 80}]}]`, "spec.ingress[0].ports[0].endPort", false},
		{"unknown protocol", `
metadata: {name: bad, namespace: ns}
spec:
  podSelector: {}
  ingress: [{ports: [{port: 80, protocol: ICMP}]}]`, "spec.ingress[0].ports[0].protocol", false},
		{"cnp bad cidr", `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bad, namespace: ns}
spec:
  endpointSelector: {}
  egress: [{toCIDR: [300.0.0.0/8]}]`, "spec.egress[0].toCIDR[0]", true},
		{"cnp port 0", `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bad, namespace: ns}
spec:
  endpointSelector: {}
  ingress: [{toPorts: [{ports: [{port: "0"}]}]}]`, "spec.ingress[0].toPorts[0].ports[0].port", true},
		{"cnp endPort below port", `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bad, namespace: ns}
spec:
  endpointSelector: {}
  ingressDeny: [{toPorts: [{ports: [{port: "100", endPort: 99}]}]}]`, "spec.ingressDeny[0].toPorts[0].ports[0].endPort", true},
		{"cnp unknown protocol", `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bad, namespace: ns}
spec:
  endpointSelector: {}
  ingress: [{toPorts: [{ports: [{port: "80", protocol: GRE}]}]}]`, "spec.ingress[0].toPorts[0].ports[0].protocol", true},
		{"cnp unknown entity", `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bad, namespace: ns}
spec:
  endpointSelector: {}
  egress: [{toEntities: [everything]}]`, "spec.egress[0].toEntities[0]", true},
		{"cnp L7 rules", `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bad, namespace: ns}
spec:
  endpointSelector: {}
  egress: [{toPorts: [{ports: [{port: "80"}], rules: {http: [{method: GET}]}}]}]`, "spec.egress[0].toPorts[0].rules", true},
		{"cnp toFQDNs", `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bad, namespace: ns}
spec:
  endpointSelector: {}
  egress: [{toFQDNs: [{matchName: example.com}]}]`, "spec.egress[0].toFQDNs", true},
		{"cnp second spec invalid", `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bad, namespace: ns}
specs:
- endpointSelector: {}
  ingress: [{}]
- endpointSelector: {}
  egress: [{toCIDRSet: [{cidr: 10.0.0.0/8, except: [10.0.0.0/4]}]}]`, "specs[1].egress[0].toCIDRSet[0].except[0]", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			var err error
			var got any
			if c.cilium {
				got, err = cnp(t, c.doc)
			} else {
				var p *Policy
				p, err = np(t, c.doc)
				if p != nil {
					got = p
				}
			}
			var perr *Error
			if !errors.As(err, &perr) {
				t.Fatalf("got %v (%v), want a *policy.Error", got, err)
			}
			if !strings.Contains(err.Error(), c.field+":") || !strings.Contains(err.Error(), "ns/bad") {
				t.Fatalf("error %q does not name ns/bad and %s", err, c.field)
			}
		})
	}
}

func TestCiliumSemantics(t *testing.T) {
	pols, err := cnp(t, `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p, namespace: ns}
spec:
  endpointSelector: {matchLabels: {"k8s:app": server}}
  ingress:
  - {}
  - fromEndpoints: [{matchLabels: {app: client}}]
  - fromEndpoints: [{matchLabels: {app: client, "k8s:io.kubernetes.pod.namespace": other}}]
  - toPorts: [{ports: [{port: "80"}]}]
  egressDeny:
  - toEntities: [world]
  enableDefaultDeny: {egress: false}
`)
	if err != nil {
		t.Fatal(err)
	}
	p := pols[0]
	if !p.Subject.Matches(labels("ns", "app", "server")) || p.Subject.Matches(labels("x", "app", "server")) {
		t.Fatalf("endpointSelector of a CNP must stay in its namespace: %q", p.Subject)
	}
	if p.DefaultDeny != [2]bool{true, false} {
		t.Fatalf("default deny %v, want ingress only (egress turned off by enableDefaultDeny)", p.DefaultDeny)
	}
	empty := p.Rules[0]
	if empty.AnyPeer || len(empty.Peers) != 0 || len(empty.Ports) != 0 {
		t.Fatalf("the empty rule must select nothing: %+v", empty)
	}
	if s := p.Rules[1].Peers[0].Endpoints; !s.Matches(labels("ns", "app", "client")) || s.Matches(labels("other", "app", "client")) {
		t.Fatalf("fromEndpoints must be namespaced: %q", s)
	}
	if s := p.Rules[2].Peers[0].Endpoints; !s.Matches(labels("other", "app", "client")) || s.Matches(labels("ns", "app", "client")) {
		t.Fatalf("the namespace label must cross namespaces: %q", s)
	}
	l4 := p.Rules[3]
	if !l4.AnyPeer || len(l4.Ports) != 1 || l4.Ports[0] != (Port{Protocol: ProtoAny, Port: 80, EndPort: 80}) {
		t.Fatalf("an L4-only rule applies to every peer: %+v", l4)
	}
	if d := p.Rules[4]; !d.Deny || d.Direction != Egress || d.Peers[0].Entity != EntityWorld || d.Name != "spec.egressDeny[0]" {
		t.Fatalf("deny rule = %+v", d)
	}

	ccnp, err := cnp(t, `
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: c}
spec:
  endpointSelector: {}
  ingressDeny:
  - fromEndpoints: [{}]
`)
	if err != nil {
		t.Fatal(err)
	}
	if ccnp[0].Ref.Kind != KindCCNP || !ccnp[0].Subject.Matches(labels("any", "x", "y")) ||
		!ccnp[0].Rules[0].Peers[0].Endpoints.Matches(labels("elsewhere")) {
		t.Fatalf("a CCNP selects across namespaces: %+v", ccnp[0])
	}
	if ccnp[0].DefaultDeny != [2]bool{true, false} {
		t.Fatalf("a deny-only policy still turns default deny on for its direction (as Cilium): %v", ccnp[0].DefaultDeny)
	}
}

func TestUnknownFieldRejected(t *testing.T) {
	_, err := DecodeCilium([]byte(`{"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy","metadata":{"name":"x","namespace":"y"},"spec":{"endpointSelector":{},"ingres":[{}]}}`))
	if err == nil || !strings.Contains(err.Error(), "ingres") {
		t.Fatalf("a misspelt field must be rejected with its name, got %v", err)
	}
}

func TestPodCannotClaimAnotherNamespace(t *testing.T) {
	l := IdentityLabels("ns", map[string]string{NamespaceLabel: "kube-system", NamespaceLabelPrefix + "team": "x"}, nil, "")
	if l[NamespaceLabel] != "ns" || l[NamespaceLabelPrefix+"team"] != "" {
		t.Fatalf("reserved labels set by a pod must not reach its identity: %v", l)
	}
}

// FuzzCilium feeds arbitrary JSON to the CNP parser: it must never panic, and a policy
// it accepts must hold only valid ports and CIDRs.
func FuzzCilium(f *testing.F) {
	f.Add([]byte(`{"kind":"CiliumNetworkPolicy","metadata":{"name":"a","namespace":"b"},"spec":{"endpointSelector":{},"ingress":[{}]}}`))
	f.Add([]byte(`{"kind":"CiliumNetworkPolicy","metadata":{"name":"a","namespace":"b"},"spec":{"endpointSelector":{"matchExpressions":[{"key":"a","operator":"In","values":["x"]}]},"egress":[{"toCIDRSet":[{"cidr":"10.0.0.0/8","except":["10.1.0.0/16"]}],"toPorts":[{"ports":[{"port":"80","endPort":90,"protocol":"TCP"}]}]}]}}`))
	f.Add([]byte(`{"kind":"CiliumClusterwideNetworkPolicy","metadata":{"name":"a"},"specs":[{"endpointSelector":{},"egressDeny":[{"toEntities":["world"]}]}]}`))
	// IPv4-mapped IPv6 forms (issue 13 item 1): rejected, never an invalid prefix.
	f.Add([]byte(`{"kind":"CiliumNetworkPolicy","metadata":{"name":"a","namespace":"b"},"spec":{"endpointSelector":{},"egress":[{"toCIDR":["::ffff:10.0.0.0/104"]}]}}`))
	f.Add([]byte(`{"kind":"CiliumNetworkPolicy","metadata":{"name":"a","namespace":"b"},"spec":{"endpointSelector":{},"ingressDeny":[{"fromCIDR":["::ffff:10.1.2.3"]}]}}`))
	f.Add([]byte(`{"kind":"CiliumNetworkPolicy","metadata":{"name":"a","namespace":"b"},"spec":{"endpointSelector":{},"egress":[{"toCIDRSet":[{"cidr":"::ffff:0:0/96","except":["::ffff:10.0.0.0/104"]}]}]}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := DecodeCilium(data)
		if err != nil {
			return
		}
		pols, err := FromCilium(c)
		if err != nil {
			return
		}
		for _, p := range pols {
			checkPolicy(t, p)
		}
	})
}

// FuzzNetworkPolicy does the same for NetworkPolicy JSON.
func FuzzNetworkPolicy(f *testing.F) {
	f.Add([]byte(`{"metadata":{"name":"a","namespace":"b"},"spec":{"podSelector":{},"ingress":[{"from":[{"ipBlock":{"cidr":"10.0.0.0/8","except":["10.1.0.0/16"]}}],"ports":[{"port":80,"endPort":90}]}]}}`))
	f.Add([]byte(`{"metadata":{"name":"a","namespace":"b"},"spec":{"podSelector":{},"egress":[{"to":[{"namespaceSelector":{},"podSelector":{"matchLabels":{"a":"b"}}}],"ports":[{"port":"dns","protocol":"UDP"}]}]}}`))
	f.Add([]byte(`{"metadata":{"name":"a","namespace":"b"},"spec":{"podSelector":{},"ingress":[{"from":[{"ipBlock":{"cidr":"::ffff:192.168.0.0/120"}}]}]}}`))
	f.Add([]byte(`{"metadata":{"name":"a","namespace":"b"},"spec":{"podSelector":{},"ingress":[{"from":[{"ipBlock":{"cidr":"::ffff:10.1.2.3"}}]}]}}`))
	f.Add([]byte(`{"metadata":{"name":"a","namespace":"b"},"spec":{"podSelector":{},"ingress":[{"from":[{"ipBlock":{"cidr":"10.0.0.0/8","except":["::ffff:10.1.0.0/112"]}}]}]}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var np networkingv1.NetworkPolicy
		if err := json.Unmarshal(data, &np); err != nil {
			return
		}
		p, err := FromNetworkPolicy(&np)
		if err != nil {
			if p != nil {
				t.Fatalf("rejected policy returned alongside %v", err)
			}
			return
		}
		checkPolicy(t, p)
	})
}

func checkPolicy(t *testing.T, p *Policy) {
	for _, r := range p.Rules {
		for _, port := range r.Ports {
			if port.Name == "" && port.Port != 0 && (port.EndPort < port.Port) {
				t.Fatalf("accepted port range %d-%d", port.Port, port.EndPort)
			}
			if port.Name != "" && port.Port != 0 {
				t.Fatalf("named port with a number: %+v", port)
			}
		}
		for _, peer := range r.Peers {
			if peer.CIDR == nil {
				continue
			}
			// ipv4.Prefix is valid IPv4 by construction; what is left to check is
			// that every datapath key it becomes can be built, and the exceptions.
			if _, err := ipv4.PrefixFrom(peer.CIDR.Prefix.Netip()); err != nil {
				t.Fatalf("accepted CIDR %v: %v", peer.CIDR.Prefix, err)
			}
			for _, e := range peer.CIDR.Except {
				if !e.Within(peer.CIDR.Prefix) {
					t.Fatalf("accepted except %v outside %v", e, peer.CIDR.Prefix)
				}
			}
		}
	}
}

func TestIPv6BlocksMatchNothing(t *testing.T) {
	p, err := np(t, `
metadata: {name: dual, namespace: ns}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 0.0.0.0/0}}, {ipBlock: {cidr: "::/0", except: ["fd00::/8"]}}]
  - to: [{ipBlock: {cidr: "2001:db8::/32"}}]
`)
	if err != nil {
		t.Fatalf("a dual-stack policy must be accepted: %v", err)
	}
	if len(p.Rules[0].Peers) != 1 || p.Rules[0].Peers[0].CIDR.Prefix.String() != "0.0.0.0/0" {
		t.Fatalf("first rule peers = %+v, want only the IPv4 block", p.Rules[0].Peers)
	}
	if r := p.Rules[1]; r.AnyPeer || len(r.Peers) != 0 {
		t.Fatalf("an IPv6-only rule must match nothing, not everything: %+v", r)
	}
	if _, err := np(t, `
metadata: {name: mixed, namespace: ns}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: ["fd00::/8"]}}]}]
`); err == nil || !strings.Contains(err.Error(), "except[0]") {
		t.Fatalf("an IPv6 except in an IPv4 block must be rejected, got %v", err)
	}
}
