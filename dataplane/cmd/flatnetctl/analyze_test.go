package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/flatnet/flatnet/fixtures/oracle"
	policycases "github.com/flatnet/flatnet/fixtures/policies"
	"github.com/flatnet/flatnet/fixtures/topology"
	"github.com/flatnet/flatnet/suites/reachability"
	gridreport "github.com/flatnet/flatnet/suites/report"
)

// runCLI runs flatnetctl with args as the binary would and returns what it
// printed on stdout, and its error.
func runCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	root := newRootCommand("flatnetctl")
	root.SetArgs(args)
	root.SetOut(&out)
	root.SetErr(&errOut)
	err := root.Execute()
	return out.String(), err
}

func writeFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// manifests renders Kubernetes objects as one multi-document file.
func manifests(t *testing.T, objs ...any) []byte {
	t.Helper()
	var docs [][]byte
	for _, o := range objs {
		data, err := yaml.Marshal(o)
		if err != nil {
			t.Fatal(err)
		}
		docs = append(docs, data)
	}
	return bytes.Join(docs, []byte("---\n"))
}

// seedStep is the seed article's step "apply default deny" and its workload.
func seedStep(t *testing.T) (topology.Seed, policycases.Step) {
	t.Helper()
	seed := topology.DefaultSeed()
	for _, c := range policycases.SeedCases(seed) {
		if c.Name == "seed-default-deny" {
			return seed, c.Steps[0]
		}
	}
	t.Fatal("fixtures/policies has no seed-default-deny case")
	return seed, policycases.Step{}
}

// The seed article's policy (a default-deny CNP on app=server) on its two pods,
// given as the manifests a user would write: analyze prints the client ->
// server connection blocked, as the oracle decides it and as the article's
// hand-written table says, and --explain names default-deny at the server's
// ingress.
func TestAnalyzeSeedDefaultDeny(t *testing.T) {
	seed, step := seedStep(t)
	dir := t.TempDir()
	pm, err := policycases.Manifests(step.Policies)
	if err != nil {
		t.Fatal(err)
	}
	policyFile := writeFile(t, dir, "default-deny.yaml", pm)
	podsFile := writeFile(t, dir, "pods.yaml", manifests(t, seed.ServerPod("probe"), seed.ClientPod("probe")))

	// The oracle on the seed's own cluster model, independent of how
	// analyze reads files and completes pods.
	cluster, err := seed.PlannedCluster(syntheticSubnet)
	if err != nil {
		t.Fatal(err)
	}
	orc, err := oracle.New(cluster, step.Policies)
	if err != nil {
		t.Fatal(err)
	}
	client, server := oracle.PodPeer(seed.Namespace, seed.Client), oracle.PodPeer(seed.Namespace, seed.Server)
	port := int(seed.Port.Number)
	want, err := orc.Explain(client, server, port, oracle.TCP)
	if err != nil {
		t.Fatal(err)
	}
	documented, err := step.Documented[0].Reachable(0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if want.Verdict.Allowed || documented {
		t.Fatalf("the oracle (%s) or the article (reachable %v) no longer blocks client -> server: this test shows nothing", want.Verdict, documented)
	}
	deciders := refStrings(want.Verdict.DeniedAt().DecidedBy())
	if !slices.ContainsFunc(deciders, func(s string) bool { return strings.HasSuffix(s, "/default-deny") }) {
		t.Fatalf("the oracle names %v, not default-deny", deciders)
	}

	// The table: the same grid suites/report draws from the oracle's own table.
	out, err := runCLI(t, "analyze", "-f", policyFile, "--pods", podsFile)
	if err != nil {
		t.Fatalf("analyze: %v\n%s", err, out)
	}
	eps := []reachability.Endpoint{{Label: client.String(), Peer: client}, {Label: server.String(), Peer: server}}
	ports := []reachability.PortProtocol{{Port: port, Protocol: oracle.TCP}}
	wantTable, err := reachability.Expected(orc, tableTitle, eps, eps, ports)
	if err != nil {
		t.Fatal(err)
	}
	var grid bytes.Buffer
	if err := gridreport.WriteGrid(&grid, wantTable, nil, ports[0]); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, grid.String()) {
		t.Errorf("analyze's grid differs from the oracle's:\nwant\n%s\ngot\n%s", grid.String(), out)
	}
	blockedLine := fmt.Sprintf("ingress of %s: %s", server, decisionText(*want.Verdict.DeniedAt()))
	if !strings.Contains(out, blockedLine) || !strings.Contains(out, "from "+client.String()) {
		t.Errorf("analyze does not list %s -> %s as blocked by %v:\n%s", client, server, deciders, out)
	}

	// --explain, as text and as JSON.
	args := []string{"analyze", "-f", policyFile, "--pods", podsFile, "--explain", "--from", client.String(), "--to", fmt.Sprintf("%s:%d", server, port)}
	out, err = runCLI(t, args...)
	if err != nil {
		t.Fatalf("analyze --explain: %v\n%s", err, out)
	}
	wantVerdict := fmt.Sprintf("verdict: blocked at ingress of %s: %s", server, decisionText(*want.Verdict.DeniedAt()))
	if !strings.Contains(out, wantVerdict) {
		t.Errorf("--explain: want %q in\n%s", wantVerdict, out)
	}
	for _, r := range want.Ingress.Tiers[3].Selecting {
		if !strings.Contains(out, r.String()) {
			t.Errorf("--explain does not name %s, which isolates the server:\n%s", r, out)
		}
	}
	out, err = runCLI(t, append(args, "-o", "json")...)
	if err != nil {
		t.Fatalf("analyze --explain -o json: %v\n%s", err, out)
	}
	var got []explainJSON
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("--explain -o json: %v\n%s", err, out)
	}
	if len(got) != 1 || got[0].Allowed || got[0].DeniedAt != "ingress" || got[0].Ingress == nil || !slices.Equal(got[0].Ingress.DecidedBy, deciders) {
		t.Errorf("--explain -o json: want blocked at ingress by %v, got %s", deciders, out)
	}
}

// Every fixture case's last step on the x, y, z × a, b, c model (the default
// workload), written to files as a user would have them: every cell of
// analyze's JSON table is the oracle's on the suites' planned cluster.
func TestAnalyzeTableIsTheOracles(t *testing.T) {
	m := topology.Default("", false)
	cluster, err := m.PlannedCluster(syntheticSubnet, 2)
	if err != nil {
		t.Fatal(err)
	}
	env := policycases.Env{Model: m, Cluster: cluster, NodeSubnet: syntheticSubnet, WorldCIDR: netip.MustParsePrefix("192.0.2.0/24")}
	cases, err := policycases.All(env)
	if err != nil {
		t.Fatal(err)
	}
	eps := reachability.ModelEndpoints(m, false)
	ports := reachability.ModelPorts(m)
	var portArgs []string
	for _, p := range ports {
		portArgs = append(portArgs, "--port", p.String())
	}
	dir := t.TempDir()
	blocked := 0
	for _, c := range cases {
		step := c.Steps[len(c.Steps)-1]
		orc, err := oracle.New(cluster, step.Policies)
		if err != nil {
			t.Fatalf("%s: %v", c.Name, err)
		}
		want, err := reachability.Expected(orc, tableTitle, eps, eps, ports)
		if err != nil {
			t.Fatal(err)
		}
		args := append([]string{"analyze", "-o", "json"}, portArgs...)
		if n := len(policycases.Refs(step.Policies)); n > 0 {
			data, err := policycases.Manifests(step.Policies)
			if err != nil {
				t.Fatal(err)
			}
			args = append(args, "-f", writeFile(t, dir, c.Name+".yaml", data))
		}
		out, err := runCLI(t, args...)
		if err != nil {
			t.Fatalf("%s: analyze: %v", c.Name, err)
		}
		var got tableJSON
		if err := json.Unmarshal([]byte(out), &got); err != nil {
			t.Fatalf("%s: %v\n%s", c.Name, err, out)
		}
		if len(got.Cells) != len(want.Keys()) {
			t.Fatalf("%s: %d cells, want %d", c.Name, len(got.Cells), len(want.Keys()))
		}
		for _, cell := range got.Cells {
			k := reachability.Key{From: cell.From, To: cell.To, PortProtocol: reachability.PortProtocol{Port: cell.Port, Protocol: oracle.Protocol(cell.Protocol)}}
			w, ok := want.Get(k)
			if !ok || w.Reachable != cell.Allowed {
				t.Errorf("%s: %s: analyze says allowed=%v, the oracle %v (%s)", c.Name, k, cell.Allowed, w.Reachable, w.Detail)
			}
			if !cell.Allowed {
				blocked++
			}
		}
	}
	if blocked == 0 {
		t.Fatal("no case blocks anything: the comparison shows nothing")
	}
}

// Pods given as a v1 List (what kubectl get -o yaml prints), with a Node and a
// Namespace, and as policy-assistant's probe file: both are read, defaults
// filled in, and the probe file's Probes are the table's ports.
func TestAnalyzePodsForms(t *testing.T) {
	dir := t.TempDir()
	list := writeFile(t, dir, "list.yaml", []byte(`apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Namespace
  metadata: {name: demo, labels: {team: a}}
- apiVersion: v1
  kind: Node
  metadata: {name: worker}
  status: {addresses: [{type: InternalIP, address: 10.224.0.9}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: a, namespace: demo, labels: {pod: a}}
  spec: {nodeName: worker, containers: [{name: c, ports: [{containerPort: 80, name: web}]}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: b, labels: {pod: b}}
  spec: {containers: [{name: c}]}
`))
	// Namespace demo (team=a) may reach a only on its named port.
	pol := writeFile(t, dir, "np.yaml", []byte(`apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: only-team-a, namespace: demo}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: a}}}]
    ports: [{port: web}]
`))
	out, err := runCLI(t, "analyze", "--pods", list, "-f", pol, "--explain", "--from", "default/b", "--to", "demo/a:80", "-o", "json")
	if err != nil {
		t.Fatalf("analyze: %v\n%s", err, out)
	}
	var got []explainJSON
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatal(err)
	}
	// b went to namespace default (not team=a), so the policy isolates a and
	// nothing allows b.
	if len(got) != 1 || got[0].Allowed || got[0].DeniedAt != "ingress" || got[0].Ingress.Reason != string(oracle.ReasonNoRuleAllows) {
		t.Errorf("default/b -> demo/a: want blocked at ingress, no rule allows; got %s", out)
	}
	// The node's own address is the node: own node, always allowed.
	out, err = runCLI(t, "analyze", "--pods", list, "-f", pol, "--explain", "--from", "10.224.0.9", "--to", "demo/a:80", "-o", "json")
	if err != nil {
		t.Fatalf("analyze: %v\n%s", err, out)
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].From != "node/worker" || !got[0].Allowed || got[0].Ingress.Reason != string(oracle.ReasonOwnNode) {
		t.Errorf("node worker -> demo/a: want allowed as its own node; got %s", out)
	}

	probe := writeFile(t, dir, "probe.json", []byte(`{
  "Probes": [{"Protocol": "TCP", "Port": 81}],
  "Resources": {
    "Namespaces": {"demo": {"ns": "demo"}},
    "Pods": [
      {"Namespace": "demo", "Name": "a", "Labels": {"pod": "a"}, "IP": "192.168.1.8",
       "Containers": [{"Name": "c1", "Port": 80, "PortName": "serve-80-tcp", "Protocol": "tcp"}]},
      {"Namespace": "demo", "Name": "b", "Labels": {"pod": "b"}, "IP": "192.168.1.9", "Containers": []}
    ]
  }
}`))
	out, err = runCLI(t, "analyze", "--pods", probe, "-o", "json")
	if err != nil {
		t.Fatalf("analyze: %v\n%s", err, out)
	}
	var table tableJSON
	if err := json.Unmarshal([]byte(out), &table); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(table.Ports, []string{"81/TCP"}) || !slices.Equal(table.From, []string{"demo/a", "demo/b"}) {
		t.Errorf("probe file: want port 81/TCP and pods demo/a, demo/b; got %s", out)
	}
}

// Bad input fails before anything is printed, naming the file, the document
// and the field (or the flag) at fault.
func TestAnalyzeBadInput(t *testing.T) {
	np := "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: ok, namespace: x}\nspec: {podSelector: {}}\n"
	for _, tc := range []struct {
		name  string
		files map[string]string // written to dir
		args  []string
		want  []string // all in the error
	}{
		{name: "yaml syntax", files: map[string]string{"p.yaml": np + "---\n# second\nspec: [\n"},
			args: []string{"-f", "p.yaml"}, want: []string{"p.yaml", "document 2 (line 6)", "yaml: line 7"}},
		{name: "unknown field", files: map[string]string{"p.yaml": np + "---\n" + strings.Replace(np, "spec: {podSelector: {}}", "spec: {podSelector: {}, ingress: [{from: [{podSelector: {matchLabel: {a: b}}}]}]}", 1)},
			args: []string{"-f", "p.yaml"}, want: []string{"p.yaml: document 2", `unknown field "spec.ingress[0].from[0].podSelector.matchLabel"`}},
		{name: "wrong type", files: map[string]string{"p.yaml": strings.Replace(np, "{podSelector: {}}", "{podSelector: 3}", 1)},
			args: []string{"-f", "p.yaml"}, want: []string{"p.yaml: document 1", "spec.podSelector"}},
		{name: "cilium field outside the subset", files: map[string]string{"d/c.yaml": "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: fqdn, namespace: x}\nspec:\n  endpointSelector: {}\n  egress:\n  - toFQDNs: [{matchName: example.com}]\n"},
			args: []string{"-f", "d"}, want: []string{"c.yaml: document 1", `"spec.egress[0].toFQDNs"`, "dataplane/POLICY.md"}},
		{name: "cilium value outside the subset", files: map[string]string{"c.yaml": "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: ent}\nspec:\n  endpointSelector: {}\n  egress:\n  - toEntities: [kube-apiserver]\n"},
			args: []string{"-f", "c.yaml"}, want: []string{"c.yaml: document 1", "CiliumNetworkPolicy default/ent", "spec.egress[0].toEntities[0]", "kube-apiserver"}},
		{name: "unsupported kind", files: map[string]string{"anp.yaml": "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\nmetadata: {name: a}\n"},
			args: []string{"-f", "anp.yaml"}, want: []string{"anp.yaml: document 1", "AdminNetworkPolicy", "not a policy flatnet models"}},
		{name: "pod given as a policy", files: map[string]string{"pod.yaml": "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n"},
			args: []string{"-f", "pod.yaml"}, want: []string{"pod.yaml: document 1", "--pods"}},
		{name: "policy defined twice", files: map[string]string{"a.yaml": np, "b.yaml": np},
			args: []string{"-f", "a.yaml", "-f", "b.yaml"}, want: []string{"b.yaml: document 1", "NetworkPolicy x/ok", "already defined in", "a.yaml"}},
		{name: "missing path", args: []string{"-f", "nope.yaml"}, want: []string{"-f nope.yaml"}},
		{name: "empty directory", files: map[string]string{"empty/README": "x"}, args: []string{"-f", "empty"}, want: []string{"-f empty", "no *.yaml"}},
		{name: "pods file of policies", files: map[string]string{"p.yaml": np}, args: []string{"--pods", "p.yaml"}, want: []string{"--pods p.yaml: document 1", "want v1 Pod"}},
		{name: "pod unknown field", files: map[string]string{"pods.yaml": "apiVersion: v1\nkind: Pod\nmetadata: {name: a, lables: {a: b}}\n"},
			args: []string{"--pods", "pods.yaml"}, want: []string{"pods.yaml: document 1", `"metadata.lables"`}},
		{name: "pod without name", files: map[string]string{"pods.yaml": "apiVersion: v1\nkind: Pod\nmetadata: {namespace: a}\n"},
			args: []string{"--pods", "pods.yaml"}, want: []string{"pods.yaml: document 1", "metadata.name"}},
		{name: "pods and cluster", args: []string{"--pods", "x.yaml", "--cluster"}, want: []string{"--pods and --cluster"}},
		{name: "output", args: []string{"-o", "yaml"}, want: []string{`-o "yaml"`}},
		{name: "port", args: []string{"--port", "http"}, want: []string{`--port "http"`}},
		{name: "protocol", args: []string{"--port", "80/ICMP"}, want: []string{`--port "80/ICMP"`, "TCP, UDP or SCTP"}},
		{name: "explain without ends", args: []string{"--explain", "--from", "x/a"}, want: []string{"--explain needs --from", "--to"}},
		{name: "ends without explain", args: []string{"--from", "x/a"}, want: []string{"--from and --to go with --explain"}},
		{name: "source port", args: []string{"--explain", "--from", "x/a:80", "--to", "x/b"}, want: []string{`--from "x/a:80"`, "--to only"}},
		{name: "unknown pod", args: []string{"--explain", "--from", "x/a", "--to", "x/nope:80"}, want: []string{"x/nope", "no such pod"}},
		{name: "bad peer", args: []string{"--explain", "--from", "a", "--to", "x/b"}, want: []string{`--from "a"`, "<namespace>/<pod>"}},
		{name: "namespace filter", args: []string{"-n", "nope"}, want: []string{"-n nope", "no pod"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := t.TempDir()
			for name, content := range tc.files {
				if err := os.MkdirAll(filepath.Dir(filepath.Join(d, name)), 0o755); err != nil {
					t.Fatal(err)
				}
				writeFile(t, d, name, []byte(content))
			}
			t.Chdir(d)
			out, err := runCLI(t, append([]string{"analyze"}, tc.args...)...)
			if err == nil {
				t.Fatalf("analyze %v: no error; printed\n%s", tc.args, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("analyze %v: error %q does not name %q", tc.args, err, w)
				}
			}
			if out != "" {
				t.Errorf("analyze %v: printed before failing:\n%s", tc.args, out)
			}
		})
	}
}

// Without --port the table covers the ports the policies name, as the help
// says: numbers with their protocol (TCP when a NetworkPolicy omits it, TCP
// for Cilium's ANY), the first port of a range, no named port; 80 when none.
func TestAnalyzeDefaultsToThePortsPoliciesName(t *testing.T) {
	pol := writeFile(t, t.TempDir(), "p.yaml", []byte(`apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np, namespace: x}
spec:
  podSelector: {}
  ingress:
  - ports: [{port: 81}, {port: 53, protocol: UDP}, {port: serve-80-tcp}, {port: 1000, endPort: 1010}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: cnp, namespace: z}
spec:
  endpointSelector: {}
  egressDeny:
  - toPorts: [{ports: [{port: "8080", protocol: ANY}, {port: "81", protocol: TCP}]}]
`))
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"-f", pol}, []string{"53/UDP", "81/TCP", "1000/TCP", "8080/TCP"}},
		{[]string{"-f", pol, "--protocol", "UDP"}, []string{"53/UDP"}},
		{[]string{"-f", pol, "--port", "9/SCTP", "--port", "82"}, []string{"9/SCTP", "82/TCP"}},
		{nil, []string{"80/TCP"}},
	} {
		out, err := runCLI(t, append([]string{"analyze", "-o", "json"}, tc.args...)...)
		if err != nil {
			t.Fatalf("analyze %v: %v", tc.args, err)
		}
		var got tableJSON
		if err := json.Unmarshal([]byte(out), &got); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got.Ports, tc.want) {
			t.Errorf("analyze %v: ports %v, want %v", tc.args, got.Ports, tc.want)
		}
	}
}
