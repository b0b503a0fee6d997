// Package reachability is the model of a policy suite's truth tables: for
// each source, destination and port, whether a connection gets through, as
// the oracle expects it and as the probes observed it, and the cells where
// the two differ. Rendering them for people and CI is suites/report's job.
package reachability

import (
	"fmt"
	"slices"
	"strings"

	"github.com/flatnet/flatnet/fixtures/oracle"
)

// PortProtocol is one column set of a table: a port and its protocol.
type PortProtocol struct {
	Port     int
	Protocol oracle.Protocol
}

func (p PortProtocol) String() string { return fmt.Sprintf("%d/%s", p.Port, p.Protocol) }

// Key is one probe: from a source to a destination on a port.
type Key struct {
	From, To string
	PortProtocol
}

func (k Key) String() string { return fmt.Sprintf("%s -> %s %s", k.From, k.To, k.PortProtocol) }

// Cell is one probe's answer, expected or observed.
type Cell struct {
	Reachable bool
	// Detail says why: the oracle's verdict for an expected cell, the probe's
	// output (e.g. "TIMEOUT") for an observed one.
	Detail string
	// Policies are the policies that took part (expected cells).
	Policies []string
	// Verdict is the oracle's decision (expected cells): which end decides
	// and by which policies, what a flow must show (suites/internal/flowcheck).
	Verdict *oracle.Verdict
	// Backend is the pod and port a Service cell is judged on (expected
	// cells reached through a Service).
	Backend *oracle.ServiceBackend
}

// Table is a truth table: for each source (row), destination (column) and
// port, whether the connection gets through. Rows, columns and ports keep the
// order they were declared in.
type Table struct {
	Title string
	From  []string
	To    []string
	Ports []PortProtocol
	cells map[Key]Cell
}

// NewTable makes an empty table with the given rows, columns and ports.
func NewTable(title string, from, to []string, ports []PortProtocol) (*Table, error) {
	for _, list := range []struct {
		what  string
		names []string
	}{{"source", from}, {"destination", to}} {
		if len(list.names) == 0 {
			return nil, fmt.Errorf("table %q: no %s", title, list.what)
		}
		seen := map[string]bool{}
		for _, n := range list.names {
			if n == "" || seen[n] {
				return nil, fmt.Errorf("table %q: %s %q: labels must be non-empty and unique", title, list.what, n)
			}
			seen[n] = true
		}
	}
	if len(ports) == 0 {
		return nil, fmt.Errorf("table %q: no ports", title)
	}
	return &Table{Title: title, From: slices.Clone(from), To: slices.Clone(to), Ports: slices.Clone(ports), cells: map[Key]Cell{}}, nil
}

// Set records a cell; the key must name a row, column and port of the table.
func (t *Table) Set(k Key, c Cell) error {
	if !slices.Contains(t.From, k.From) || !slices.Contains(t.To, k.To) || !slices.Contains(t.Ports, k.PortProtocol) {
		return fmt.Errorf("table %q: %s is outside the table", t.Title, k)
	}
	t.cells[k] = c
	return nil
}

// Get returns a cell and whether it was set.
func (t *Table) Get(k Key) (Cell, bool) {
	c, ok := t.cells[k]
	return c, ok
}

// Keys lists every cell position in row, column, port order.
func (t *Table) Keys() []Key {
	var out []Key
	for _, p := range t.Ports {
		for _, f := range t.From {
			for _, to := range t.To {
				out = append(out, Key{From: f, To: to, PortProtocol: p})
			}
		}
	}
	return out
}

// Endpoint is a row or column of an expected table: a label and the peer the
// oracle knows it as. With Service set, probes to it go through that Service
// (same port) and are judged on its backend.
type Endpoint struct {
	Label   string
	Peer    oracle.Peer
	Service *ServiceRef
}

// ServiceRef names a Service.
type ServiceRef struct{ Namespace, Name string }

// Expected asks the oracle for every cell of a table.
func Expected(o *oracle.Oracle, title string, from, to []Endpoint, ports []PortProtocol) (*Table, error) {
	label := func(es []Endpoint) []string {
		var out []string
		for _, e := range es {
			out = append(out, e.Label)
		}
		return out
	}
	t, err := NewTable(title, label(from), label(to), ports)
	if err != nil {
		return nil, err
	}
	for _, p := range ports {
		for _, f := range from {
			for _, d := range to {
				var v oracle.Verdict
				var backend *oracle.ServiceBackend
				var err error
				if d.Service != nil {
					var b oracle.ServiceBackend
					v, b, err = o.DecideService(f.Peer, d.Service.Namespace, d.Service.Name, p.Port, p.Protocol)
					backend = &b
				} else {
					v, err = o.Decide(f.Peer, d.Peer, p.Port, p.Protocol)
				}
				if err != nil {
					return nil, fmt.Errorf("expected table %q: %w", title, err)
				}
				var refs []string
				for _, r := range v.Policies() {
					refs = append(refs, r.String())
				}
				if err := t.Set(Key{From: f.Label, To: d.Label, PortProtocol: p}, Cell{Reachable: v.Allowed, Detail: v.String(), Policies: refs, Verdict: &v, Backend: backend}); err != nil {
					return nil, err
				}
			}
		}
	}
	return t, nil
}

// Mismatch is a probe whose observed answer differs from the expected one,
// or (in Comparison.WrongReason) one whose answer is right but whose flows
// do not prove it. Flows is for the caller: the flow lines recorded for that
// probe; Why says what the flows lacked.
type Mismatch struct {
	Key
	Expected Cell
	Observed Cell
	Flows    []string
	Why      string
}

// Comparison is an expected and an observed table of the same shape.
type Comparison struct {
	Title      string
	Expected   *Table
	Observed   *Table
	Mismatches []Mismatch
	// Missing are cells expected but never observed (probes that did not
	// run); they count as failures too.
	Missing []Key
	// WrongReason are cells observed as expected whose flows say otherwise:
	// blocked without a policy drop where the oracle denies (a broken route,
	// a lost packet), or by another policy, or reachable without the
	// datapath's forwarded flows. They fail the comparison (flow validation
	// strict, suites/internal/flowcheck).
	WrongReason []Mismatch
}

// Compare checks observed against expected cell by cell.
func Compare(title string, expected, observed *Table) (*Comparison, error) {
	if !slices.Equal(expected.From, observed.From) || !slices.Equal(expected.To, observed.To) || !slices.Equal(expected.Ports, observed.Ports) {
		return nil, fmt.Errorf("compare %q: tables differ in shape (rows, columns or ports); build both from the same endpoints", title)
	}
	c := &Comparison{Title: title, Expected: expected, Observed: observed}
	for _, k := range expected.Keys() {
		want, okW := expected.Get(k)
		got, okG := observed.Get(k)
		switch {
		case !okW:
			return nil, fmt.Errorf("compare %q: expected table has no cell %s", title, k)
		case !okG:
			c.Missing = append(c.Missing, k)
		case want.Reachable != got.Reachable:
			c.Mismatches = append(c.Mismatches, Mismatch{Key: k, Expected: want, Observed: got})
		}
	}
	return c, nil
}

// OK says every cell was observed as expected.
func (c *Comparison) OK() bool {
	return len(c.Mismatches) == 0 && len(c.Missing) == 0 && len(c.WrongReason) == 0
}

// Wrong returns the WrongReason entry of cell k, if it has one.
func (c *Comparison) Wrong(k Key) (Mismatch, bool) {
	for _, m := range c.WrongReason {
		if m.Key == k {
			return m, true
		}
	}
	return Mismatch{}, false
}

// SetFlows attaches flow lines to the mismatch at k.
func (c *Comparison) SetFlows(k Key, flows []string) bool {
	for i := range c.Mismatches {
		if c.Mismatches[i].Key == k {
			c.Mismatches[i].Flows = flows
			return true
		}
	}
	return false
}

// Summary is one line: how many cells matched.
func (c *Comparison) Summary() string {
	total := len(c.Expected.Keys())
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %d/%d probes as expected", c.Title, total-len(c.Mismatches)-len(c.Missing)-len(c.WrongReason), total)
	if n := len(c.Mismatches); n > 0 {
		fmt.Fprintf(&b, ", %d mismatched", n)
	}
	if n := len(c.WrongReason); n > 0 {
		fmt.Fprintf(&b, ", %d for the wrong reason (flows)", n)
	}
	if n := len(c.Missing); n > 0 {
		fmt.Fprintf(&b, ", %d not probed", n)
	}
	return b.String()
}
