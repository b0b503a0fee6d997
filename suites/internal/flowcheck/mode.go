// Package flowcheck proves each verdict of a matrix by the datapath's own
// record, as `cilium connectivity test --flow-validation` does: after a poll
// of probes it reads the flows of that poll's time window from the Hubble
// Observer API (one GetFlows stream through the relay, filtered on the
// probes' addresses), and checks every cell against the oracle's decision:
//
//   - allowed: the connection's opening (a TCP SYN without ACK, or the first
//     UDP datagram) FORWARDED at the egress of the source pod and at the
//     ingress of the destination pod, and no reply of it DROPPED;
//   - denied: the opening DROPPED with a policy reason (POLICY_DENIED or
//     POLICY_DENY) at the end the oracle says denies it (the source's egress
//     when its egress policy denies, else the destination's ingress) and,
//     where the drop names policies (egress_denied_by / ingress_denied_by),
//     naming one the oracle names for that end.
//
// A blocked answer without such a drop is "blocked for the wrong reason" (a
// broken route, a full table, a lost packet): a failure in strict mode even
// though the answer is the oracle's. Cells whose answer differs from the
// oracle's keep their flows for the report.
package flowcheck

import (
	"fmt"
	"strings"
)

// Mode is how flow validation acts, as cilium-cli's --flow-validation.
type Mode string

const (
	// Strict fails a cell whose flows do not prove its verdict.
	Strict Mode = "strict"
	// Warn reports such cells and fails nothing.
	Warn Mode = "warn"
	// Off reads no flows.
	Off Mode = "off"
)

// Where the mode comes from: a suite flag (after `--` on the ginkgo command
// line) or the environment; the flag wins.
const (
	FlagName = "flow-validation"
	EnvName  = "FLATNET_FLOW_VALIDATION"
)

// ParseMode reads a mode; cilium-cli's spellings "warning" and "disabled"
// are accepted too. what names where the value came from, for the error.
func ParseMode(what, s string) (Mode, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "strict":
		return Strict, nil
	case "warn", "warning":
		return Warn, nil
	case "off", "disabled":
		return Off, nil
	}
	return "", fmt.Errorf("%s=%q: unknown flow validation mode: use strict, warn or off", what, s)
}

// Choose picks the mode from the flag's and the environment's values (empty
// when not given). It returns "" when neither is given: the default then
// depends on the cluster (see Setup).
func Choose(flagValue, envValue string) (Mode, error) {
	if flagValue != "" {
		return ParseMode("--"+FlagName, flagValue)
	}
	if envValue != "" {
		return ParseMode(EnvName, envValue)
	}
	return "", nil
}
