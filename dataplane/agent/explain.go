package agent

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/flatnet/flatnet/dataplane/bpf"
	"github.com/flatnet/flatnet/dataplane/compile"
	"github.com/flatnet/flatnet/dataplane/flows"
	"github.com/flatnet/flatnet/dataplane/policy"
)

// ExplainPath is where the agent's API (Config.API) answers explain: what a local
// pod's compiled policy, and the datapath's maps, decide for a new connection.
const ExplainPath = "/v1/explain"

// Explainer decides connections as the compiled policy does (enforce.Enforcer).
type Explainer interface {
	Explain(namespace, name string, dir policy.Direction, remote netip.Addr, proto policy.Protocol, port uint16) (compile.Decision, compile.RuleInfo, error)
	DefaultDenyBy(namespace, name string, dir policy.Direction) []policy.Ref
	// LookupMaps reads what the datapath's maps hold for the same connection.
	LookupMaps(namespace, name string, dir policy.Direction, remote netip.Addr, proto policy.Protocol, port uint16) (bpf.MapDecision, compile.RuleInfo, error)
}

// ExplainLimits bound what explain's clients can cost an agent. Zero fields take
// the defaults below.
type ExplainLimits struct {
	// MaxRunning is how many explains may run at once (each reads the
	// datapath's maps); beyond it a client gets 429.
	MaxRunning int
	// Timeout answers 503 when an explain takes longer. Its slot stays taken
	// until the work really ends, so timeouts cannot pile up work.
	Timeout time.Duration
}

// Default explain limits.
const (
	DefaultMaxExplains    = 4
	DefaultExplainTimeout = 5 * time.Second
)

// ExplainHandler serves GET ExplainPath for node with the default limits. ex may
// be nil (policy enforcement is off: 503).
func ExplainHandler(ex Explainer, node string) http.Handler {
	return NewExplainHandler(ex, node, ExplainLimits{})
}

// NewExplainHandler is ExplainHandler with lim.
func NewExplainHandler(ex Explainer, node string, lim ExplainLimits) http.Handler {
	if lim.MaxRunning <= 0 {
		lim.MaxRunning = DefaultMaxExplains
	}
	if lim.Timeout <= 0 {
		lim.Timeout = DefaultExplainTimeout
	}
	s := &explainServer{ex: ex, node: node, lim: lim, running: make(chan struct{}, lim.MaxRunning)}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+ExplainPath, s.serveExplain)
	return mux
}

type explainServer struct {
	ex   Explainer
	node string
	lim  ExplainLimits
	// running is a semaphore: a slot is taken without waiting or refused.
	running chan struct{}
}

// Explanation is the answer of GET /v1/explain: what the compiled policy of a local
// pod decides for a new connection with a remote address.
type Explanation struct {
	NodeName  string          `json:"node_name"`
	Namespace string          `json:"namespace"`
	Pod       string          `json:"pod_name"`
	Direction string          `json:"traffic_direction"` // INGRESS or EGRESS
	Remote    string          `json:"remote"`
	Protocol  string          `json:"protocol"`
	Port      uint16          `json:"port"`
	Verdict   string          `json:"verdict"` // FORWARDED or DROPPED
	Reason    string          `json:"reason"`
	Rule      string          `json:"rule,omitempty"`
	Policies  []*flows.Policy `json:"policies,omitempty"`
	// Datapath is what the node's BPF maps hold for the same connection, read back
	// the way the programs read them; Agrees says whether it matches the above.
	Datapath *DatapathView `json:"datapath,omitempty"`
	Agrees   bool          `json:"datapath_agrees"`
}

// DatapathView is the datapath's side of an explanation.
type DatapathView struct {
	Verdict        string        `json:"verdict"` // FORWARDED or DROPPED
	Reason         string        `json:"reason"`
	RemoteIdentity uint32        `json:"remote_identity"`
	CIDRIdentity   uint32        `json:"cidr_identity,omitempty"`
	Enforced       bool          `json:"enforced"`
	Rule           string        `json:"rule,omitempty"`
	Policy         *flows.Policy `json:"policy,omitempty"`
	Error          string        `json:"error,omitempty"` // the maps could not be read
}

// Explain parameters.
const (
	ParamDirection = "direction"
	ParamRemote    = "remote"
)

// explainResult is an explanation or the error answer in its place.
type explainResult struct {
	out    Explanation
	status int
	err    string
}

func (s *explainServer) serveExplain(w http.ResponseWriter, r *http.Request) {
	ex := s.ex
	if ex == nil {
		http.Error(w, "policy enforcement is off on this agent (--policy=false): nothing to explain", http.StatusServiceUnavailable)
		return
	}
	q := r.URL.Query()
	ns, pod := q.Get(flows.ParamNamespace), q.Get(flows.ParamPod)
	if ns == "" || pod == "" {
		http.Error(w, "namespace and pod: both required (the local pod whose policy decides)", http.StatusBadRequest)
		return
	}
	var dir policy.Direction
	switch strings.ToUpper(q.Get(ParamDirection)) {
	case flows.Ingress:
		dir = policy.Ingress
	case flows.Egress:
		dir = policy.Egress
	default:
		http.Error(w, fmt.Sprintf("direction %q: use INGRESS or EGRESS", q.Get(ParamDirection)), http.StatusBadRequest)
		return
	}
	remote, err := netip.ParseAddr(q.Get(ParamRemote))
	if err != nil {
		http.Error(w, fmt.Sprintf("remote %q: want the peer's IP address", q.Get(ParamRemote)), http.StatusBadRequest)
		return
	}
	proto, err := ParseProtocol(q.Get(flows.ParamProtocol))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	port, err := strconv.ParseUint(q.Get(flows.ParamPort), 10, 16)
	if err != nil || (port == 0 && proto != policy.ProtoAny) {
		http.Error(w, fmt.Sprintf("port %q: want a number 1-65535", q.Get(flows.ParamPort)), http.StatusBadRequest)
		return
	}
	select {
	case s.running <- struct{}{}:
	default:
		w.Header().Set("Retry-After", "1")
		http.Error(w, fmt.Sprintf("too many explains running on this agent (limit %d): try again shortly", s.lim.MaxRunning), http.StatusTooManyRequests)
		return
	}
	// The work runs apart from the request: a client that gives up (or a
	// timeout) answers at once, while the slot is freed only when the work ends.
	done := make(chan explainResult, 1)
	go func() {
		defer func() { <-s.running }()
		done <- explain(ex, s.node, ns, pod, dir, remote, proto, uint16(port))
	}()
	timer := time.NewTimer(s.lim.Timeout)
	defer timer.Stop()
	var res explainResult
	select {
	case res = <-done:
	case <-r.Context().Done():
		return
	case <-timer.C:
		http.Error(w, fmt.Sprintf("explain of %s/%s on node %s did not finish within %s: the agent is busy, try again", ns, pod, s.node, s.lim.Timeout), http.StatusServiceUnavailable)
		return
	}
	if res.err != "" {
		http.Error(w, res.err, res.status)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(res.out)
}

// explain decides a connection of a local pod as the compiled policy and the
// datapath's maps do.
func explain(ex Explainer, node, ns, pod string, dir policy.Direction, remote netip.Addr, proto policy.Protocol, port uint16) explainResult {
	d, ri, err := ex.Explain(ns, pod, dir, remote, proto, port)
	if err != nil {
		return explainResult{status: http.StatusNotFound, err: fmt.Sprintf("pod %s/%s on node %s: %v", ns, pod, node, err)}
	}
	out := Explanation{
		NodeName: node, Namespace: ns, Pod: pod, Direction: flows.Ingress, Remote: remote.String(),
		Protocol: proto.String(), Port: port, Verdict: flows.VerdictForwarded,
	}
	if dir == policy.Egress {
		out.Direction = flows.Egress
	}
	switch {
	case d.Host:
		out.Reason = "the remote is the pod's own node: always allowed"
	case d.Deny:
		out.Verdict, out.Reason = flows.VerdictDropped, "denied by a deny rule"
	case !d.Allowed:
		out.Verdict, out.Reason = flows.VerdictDropped, "no rule allows it (default deny)"
		for _, r := range ex.DefaultDenyBy(ns, pod, dir) {
			out.Policies = append(out.Policies, flows.PolicyOf(r))
		}
	case d.RuleID != 0:
		out.Reason = "allowed by a rule"
	default:
		out.Reason = "no policy enforces this direction: allowed"
	}
	if d.RuleID != 0 {
		out.Rule = ri.Rule
		out.Policies = []*flows.Policy{flows.PolicyOf(ri.Policy)}
	}
	out.Datapath = datapathView(ex, ns, pod, dir, remote, proto, port)
	out.Agrees = out.Datapath.Error == "" && out.Datapath.Verdict == out.Verdict && out.Datapath.Rule == out.Rule
	return explainResult{out: out}
}

// datapathView reads the maps' answer for the connection an explanation is about.
func datapathView(ex Explainer, ns, pod string, dir policy.Direction, remote netip.Addr, proto policy.Protocol, port uint16) *DatapathView {
	md, ri, err := ex.LookupMaps(ns, pod, dir, remote, proto, port)
	if err != nil {
		return &DatapathView{Error: err.Error()}
	}
	v := &DatapathView{Verdict: flows.VerdictForwarded, RemoteIdentity: uint32(md.RemoteIdentity),
		CIDRIdentity: uint32(md.CIDRIdentity), Enforced: md.Enforced}
	switch {
	case md.Host:
		v.Reason = "the remote is the pod's own node: always allowed"
	case md.Deferred:
		v.Reason = "a Service or node address: judged on the backend after kube-proxy's DNAT"
	case md.Deny:
		v.Verdict, v.Reason = flows.VerdictDropped, "a deny entry matches"
	case !md.Allowed:
		v.Verdict, v.Reason = flows.VerdictDropped, "no entry matches and the direction is enforced"
	case md.RuleID != 0:
		v.Reason = "an allow entry matches"
	default:
		v.Reason = "the direction is not enforced"
	}
	if md.RuleID != 0 {
		v.Rule = ri.Rule
		v.Policy = flows.PolicyOf(ri.Policy)
	}
	return v
}

// ParseProtocol reads TCP, UDP, SCTP (any case); "" is TCP.
func ParseProtocol(s string) (policy.Protocol, error) {
	switch strings.ToUpper(s) {
	case "", "TCP":
		return policy.ProtoTCP, nil
	case "UDP":
		return policy.ProtoUDP, nil
	case "SCTP":
		return policy.ProtoSCTP, nil
	}
	return 0, fmt.Errorf("protocol %q: use TCP, UDP or SCTP", s)
}
