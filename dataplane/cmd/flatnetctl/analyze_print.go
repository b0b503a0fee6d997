package main

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/flatnet/flatnet/fixtures/oracle"
	"github.com/flatnet/flatnet/suites/reachability"
	gridreport "github.com/flatnet/flatnet/suites/report"
)

// analysis is an oracle over the inputs analyze read, and what to print.
type analysis struct {
	oracle    *oracle.Oracle
	cluster   oracle.Cluster
	policies  oracle.PolicySet
	fromFiles int    // policies read with -f
	source    string // where the pods come from, for the heading
	ports     []portProtocol
}

// tableTitle heads every grid (suites/report prints it with the port).
const tableTitle = "analyze"

// pods are the table's rows and columns: every pod of the model, or those of
// the namespaces asked for, by namespace and name.
func (a analysis) pods(namespaces []string) ([]reachability.Endpoint, error) {
	var out []reachability.Endpoint
	for _, p := range a.cluster.Pods {
		if len(namespaces) == 0 || slices.Contains(namespaces, p.Namespace) {
			peer := oracle.PodPeer(p.Namespace, p.Name)
			out = append(out, reachability.Endpoint{Label: peer.String(), Peer: peer})
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("-n %s: no pod in those namespaces among the %d pods of %s", strings.Join(namespaces, ","), len(a.cluster.Pods), a.source)
	}
	slices.SortFunc(out, func(x, y reachability.Endpoint) int { return strings.Compare(x.Label, y.Label) })
	return out, nil
}

// tableJSON is -o json of the truth table.
type tableJSON struct {
	Ports []string   `json:"ports"`
	From  []string   `json:"from"`
	To    []string   `json:"to"`
	Cells []cellJSON `json:"cells"`
}

type cellJSON struct {
	From     string   `json:"from"`
	To       string   `json:"to"`
	Port     int      `json:"port"`
	Protocol string   `json:"protocol"`
	Allowed  bool     `json:"allowed"`
	Reason   string   `json:"reason"`
	Policies []string `json:"policies,omitempty"`
}

// table prints the truth table: one grid per port with suites/report's
// renderer, then each blocked connection with the oracle's reason.
func (a analysis) table(w io.Writer, o analyzeOptions) error {
	eps, err := a.pods(o.namespaces)
	if err != nil {
		return err
	}
	var ports []reachability.PortProtocol
	for _, p := range a.ports {
		ports = append(ports, reachability.PortProtocol{Port: p.port, Protocol: p.proto})
	}
	t, err := reachability.Expected(a.oracle, tableTitle, eps, eps, ports)
	if err != nil {
		return err
	}
	if o.output == "json" {
		out := tableJSON{From: t.From, To: t.To}
		for _, p := range t.Ports {
			out.Ports = append(out.Ports, p.String())
		}
		for _, k := range t.Keys() {
			c, _ := t.Get(k)
			out.Cells = append(out.Cells, cellJSON{From: k.From, To: k.To, Port: k.Port, Protocol: string(k.Protocol),
				Allowed: c.Reachable, Reason: c.Detail, Policies: c.Policies})
		}
		return writeJSON(w, out)
	}
	fmt.Fprintf(w, "%d pods (%s); %s\n(rows: from, columns: to; %s reachable, %s blocked)\n",
		len(eps), a.source, a.policyCount(), gridreport.MarkReachable, gridreport.MarkBlocked)
	for _, p := range t.Ports {
		if err := gridreport.WriteGrid(w, t, nil, p); err != nil {
			return err
		}
		fmt.Fprintln(w)
	}
	return a.writeBlocked(w, t, eps)
}

// writeBlocked lists the blocked connections grouped by the end that blocks
// them and why: one line per decision, then per port the peers it blocks.
func (a analysis) writeBlocked(w io.Writer, t *reachability.Table, eps []reachability.Endpoint) error {
	peers := map[string]oracle.Peer{}
	for _, e := range eps {
		peers[e.Label] = e.Peer
	}
	type group struct {
		heading string
		egress  bool // the peers listed are destinations
		byPort  map[reachability.PortProtocol][]string
	}
	var groups []*group
	index := map[string]*group{}
	total := 0
	for _, k := range t.Keys() {
		if c, _ := t.Get(k); c.Reachable {
			continue
		}
		v, err := a.oracle.Decide(peers[k.From], peers[k.To], k.Port, k.Protocol)
		if err != nil {
			return err
		}
		d := v.DeniedAt()
		if d == nil {
			return fmt.Errorf("%s: blocked in the table, yet the oracle denies it nowhere: %s", k, v)
		}
		total++
		heading := fmt.Sprintf("%s of %s: %s", strings.ToLower(string(d.Direction)), d.Pod, decisionText(*d))
		g := index[heading]
		if g == nil {
			g = &group{heading: heading, byPort: map[reachability.PortProtocol][]string{}}
			index[heading] = g
			groups = append(groups, g)
		}
		other := k.From
		if d.Direction == oracle.Egress {
			g.egress, other = true, k.To
		}
		g.byPort[k.PortProtocol] = append(g.byPort[k.PortProtocol], other)
	}
	if total == 0 {
		_, err := fmt.Fprintln(w, "nothing blocked")
		return err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "blocked (%d), by the end that blocks:\n", total)
	for _, g := range groups {
		fmt.Fprintf(&b, "  %s\n", g.heading)
		dir := "from"
		if g.egress {
			dir = "to"
		}
		for _, p := range t.Ports {
			if list := g.byPort[p]; len(list) > 0 {
				fmt.Fprintf(&b, "    %-8s %s %s\n", p, dir, strings.Join(list, ", "))
			}
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func (a analysis) policyCount() string {
	n := len(a.policies.NetworkPolicies) + len(a.policies.CiliumPolicies)
	s := fmt.Sprintf("%d policies", n)
	if n == 1 {
		s = "1 policy"
	}
	if a.fromFiles > 0 && a.fromFiles != n {
		s += fmt.Sprintf(" (%d from -f)", a.fromFiles)
	}
	return s
}

// ruleJSON, tierJSON, directionJSON and explainJSON are -o json of --explain.
type ruleJSON struct {
	Policy string `json:"policy"` // "CiliumNetworkPolicy default/default-deny"
	Rule   string `json:"rule"`   // field path in the manifest
}

type tierJSON struct {
	Tier      string     `json:"tier"`
	Modelled  bool       `json:"modelled"`
	Selecting []ruleJSON `json:"selecting,omitempty"`
	Matched   []ruleJSON `json:"matched,omitempty"`
}

type directionJSON struct {
	Pod       string     `json:"pod"`
	Allowed   bool       `json:"allowed"`
	Reason    string     `json:"reason"`
	Isolated  bool       `json:"isolated"`
	DecidedBy []string   `json:"decidedBy,omitempty"`
	Tiers     []tierJSON `json:"tiers,omitempty"`
}

type explainJSON struct {
	From     string         `json:"from"`
	To       string         `json:"to"`
	Port     int            `json:"port"`
	Protocol string         `json:"protocol"`
	Allowed  bool           `json:"allowed"`
	DeniedAt string         `json:"deniedAt,omitempty"` // "egress" or "ingress"
	Egress   *directionJSON `json:"egress,omitempty"`
	Ingress  *directionJSON `json:"ingress,omitempty"`
}

// explain walks the chain for --from to --to, on --to's port or on every
// port of the analysis.
func (a analysis) explain(w io.Writer, o analyzeOptions, proto oracle.Protocol) error {
	src, srcPort, err := peerArg(a.cluster, o.from, "--from", proto)
	if err != nil {
		return err
	}
	if srcPort != nil {
		return fmt.Errorf("--from %q: give the port on --to only", o.from)
	}
	dst, dstPort, err := peerArg(a.cluster, o.to, "--to", proto)
	if err != nil {
		return err
	}
	ports := a.ports
	if dstPort != nil {
		ports = []portProtocol{*dstPort}
	}
	var all []explainJSON
	for i, p := range ports {
		e, err := a.oracle.Explain(src, dst, p.port, p.proto)
		if err != nil {
			return fmt.Errorf("--explain: %w", err)
		}
		if o.output == "json" {
			all = append(all, toExplainJSON(src, dst, p, e))
			continue
		}
		if i > 0 {
			fmt.Fprintln(w)
		}
		if err := writeExplain(w, src, dst, p, e); err != nil {
			return err
		}
	}
	if o.output == "json" {
		return writeJSON(w, all)
	}
	return nil
}

func refStrings(refs []oracle.PolicyRef) []string {
	var out []string
	for _, r := range refs {
		out = append(out, r.String())
	}
	return out
}

func ruleStrings(refs []oracle.RuleRef) []string {
	var out []string
	for _, r := range refs {
		out = append(out, r.String())
	}
	return out
}

func toExplainJSON(src, dst oracle.Peer, p portProtocol, e oracle.Explanation) explainJSON {
	out := explainJSON{From: src.String(), To: dst.String(), Port: p.port, Protocol: string(p.proto), Allowed: e.Verdict.Allowed}
	if d := e.Verdict.DeniedAt(); d != nil {
		out.DeniedAt = strings.ToLower(string(d.Direction))
	}
	conv := func(d *oracle.DirectionExplanation) *directionJSON {
		if d == nil {
			return nil
		}
		dj := &directionJSON{Pod: d.Pod, Allowed: d.Allowed, Reason: string(d.Reason), Isolated: d.Isolated, DecidedBy: refStrings(d.DecidedBy())}
		rules := func(refs []oracle.RuleRef) []ruleJSON {
			var out []ruleJSON
			for _, r := range refs {
				out = append(out, ruleJSON{Policy: r.Policy.String(), Rule: r.Rule})
			}
			return out
		}
		for _, t := range d.Tiers {
			dj.Tiers = append(dj.Tiers, tierJSON{Tier: string(t.Tier), Modelled: t.Modelled, Selecting: rules(t.Selecting), Matched: rules(t.Matched)})
		}
		return dj
	}
	out.Egress, out.Ingress = conv(e.Egress), conv(e.Ingress)
	return out
}

// writeExplain prints one connection's chain: a heading with the verdict,
// then each end's tiers in order and its decision.
func writeExplain(w io.Writer, src, dst oracle.Peer, p portProtocol, e oracle.Explanation) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s -> %s %s: %s\n", src, dst, p, reachWord(e.Verdict.Allowed))
	for _, d := range []*oracle.DirectionExplanation{e.Egress, e.Ingress} {
		if d == nil {
			continue
		}
		fmt.Fprintf(&b, "  %s of %s\n", strings.ToLower(string(d.Direction)), d.Pod)
		for _, t := range d.Tiers {
			fmt.Fprintf(&b, "    %-22s %s\n", t.Tier, tierText(t))
		}
		fmt.Fprintf(&b, "    => %s\n", decisionText(d.DirectionVerdict))
	}
	switch d := e.Verdict.DeniedAt(); {
	case d != nil:
		fmt.Fprintf(&b, "verdict: blocked at %s of %s: %s\n", strings.ToLower(string(d.Direction)), d.Pod, decisionText(*d))
	case e.Egress == nil && e.Ingress == nil:
		b.WriteString("verdict: allowed (no pod at either end: no policy applies)\n")
	default:
		b.WriteString("verdict: allowed\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func reachWord(allowed bool) string {
	if allowed {
		return "allowed"
	}
	return "blocked"
}

func tierText(t oracle.TierResult) string {
	if !t.Modelled {
		return "none (not modelled yet)"
	}
	if len(t.Selecting) == 0 && len(t.Matched) == 0 {
		return "no policy selects the pod"
	}
	var parts []string
	if len(t.Selecting) > 0 {
		parts = append(parts, "selected by "+strings.Join(ruleStrings(t.Selecting), ", "))
	}
	if len(t.Matched) > 0 {
		parts = append(parts, "matching: "+strings.Join(ruleStrings(t.Matched), ", "))
	} else {
		parts = append(parts, "no rule matches")
	}
	return strings.Join(parts, "; ")
}

// decisionText is one end's decision, why, and by which policies:
// "denied: no rule allows; isolated by ...", "allowed by policy (...)".
func decisionText(d oracle.DirectionVerdict) string {
	word := "denied"
	if d.Allowed {
		word = "allowed"
	}
	s := string(d.Reason)
	if !strings.HasPrefix(s, word) {
		s = word + ": " + s
	}
	by := refStrings(d.DecidedBy())
	switch {
	case len(by) == 0:
	case d.Reason == oracle.ReasonNoRuleAllows:
		s += "; isolated by " + strings.Join(by, ", ")
	default:
		s += " (" + strings.Join(by, ", ") + ")"
	}
	return s
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
