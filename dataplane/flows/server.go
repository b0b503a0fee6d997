package flows

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/flatnet/flatnet/dataplane/bpf"
	"github.com/flatnet/flatnet/dataplane/compile"
	"github.com/flatnet/flatnet/dataplane/policy"
)

// Paths served by Handler (under the agent's HTTP server).
const (
	FlowsPath   = "/v1/flows"
	ExplainPath = "/v1/explain"
)

// Explainer decides connections as the compiled policy does (enforce.Enforcer).
type Explainer interface {
	Explain(namespace, name string, dir policy.Direction, remote netip.Addr, proto policy.Protocol, port uint16) (compile.Decision, compile.RuleInfo, error)
	DefaultDenyBy(namespace, name string, dir policy.Direction) []policy.Ref
	// LookupMaps reads what the datapath's maps hold for the same connection.
	LookupMaps(namespace, name string, dir policy.Direction, remote netip.Addr, proto policy.Protocol, port uint16) (bpf.MapDecision, compile.RuleInfo, error)
}

// Limits bound what the API's clients can cost an agent. Zero fields take the
// defaults below.
type Limits struct {
	// MaxFollowers is how many follow streams may be open at once; beyond it a
	// client gets 429. Each holds a subscription and a goroutine.
	MaxFollowers int
	// WriteTimeout drops a client that takes no data for this long, so a
	// stalled reader neither holds a follower slot nor a goroutine forever. What
	// it does not read meanwhile is lost from its bounded buffer, never queued.
	WriteTimeout time.Duration
	// MaxExplains is how many explains may run at once (each takes the
	// enforcer's lock once per answer); beyond it a client gets 429.
	MaxExplains int
	// ExplainTimeout answers 503 when an explain takes longer. Its slot stays
	// taken until the work really ends, so timeouts cannot pile up work.
	ExplainTimeout time.Duration
}

// Default limits.
const (
	DefaultMaxFollowers   = 16
	DefaultWriteTimeout   = 10 * time.Second
	DefaultMaxExplains    = 4
	DefaultExplainTimeout = 5 * time.Second
	// followBuffer is how many live flows wait for a slow follower before it loses some.
	followBuffer = 1024
)

func (l Limits) withDefaults() Limits {
	if l.MaxFollowers <= 0 {
		l.MaxFollowers = DefaultMaxFollowers
	}
	if l.WriteTimeout <= 0 {
		l.WriteTimeout = DefaultWriteTimeout
	}
	if l.MaxExplains <= 0 {
		l.MaxExplains = DefaultMaxExplains
	}
	if l.ExplainTimeout <= 0 {
		l.ExplainTimeout = DefaultExplainTimeout
	}
	return l
}

// Handler serves GET /v1/flows (JSON lines, one Response each) and GET /v1/explain
// with the default Limits. ex may be nil (then /v1/explain answers 503).
func Handler(store *Store, ex Explainer, node string) http.Handler {
	return NewHandler(store, ex, node, Limits{})
}

// NewHandler is Handler with lim.
func NewHandler(store *Store, ex Explainer, node string, lim Limits) http.Handler {
	lim = lim.withDefaults()
	s := &server{store: store, ex: ex, node: node, lim: lim,
		followers: make(chan struct{}, lim.MaxFollowers), explains: make(chan struct{}, lim.MaxExplains)}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+FlowsPath, s.serveFlows)
	mux.HandleFunc("GET "+ExplainPath, s.serveExplain)
	return mux
}

type server struct {
	store *Store
	ex    Explainer
	node  string
	lim   Limits
	// Semaphores: a slot is taken without waiting or refused.
	followers, explains chan struct{}
}

func tryAcquire(sem chan struct{}) bool {
	select {
	case sem <- struct{}{}:
		return true
	default:
		return false
	}
}

// tooMany answers 429 saying which limit was hit and what to do.
func tooMany(w http.ResponseWriter, what string, limit int) {
	w.Header().Set("Retry-After", "1")
	http.Error(w, fmt.Sprintf("too many %s on this agent (limit %d): try again shortly", what, limit), http.StatusTooManyRequests)
}

func (s *server) serveFlows(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f, err := FilterFromQuery(q, time.Now())
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	last := 0
	if v := q.Get(ParamLast); v != "" {
		if last, err = strconv.Atoi(v); err != nil || last < 0 {
			http.Error(w, fmt.Sprintf("last %q: want a number of flows >= 0", v), http.StatusBadRequest)
			return
		}
	}
	follow := false
	if v := q.Get(ParamFollow); v != "" {
		if follow, err = strconv.ParseBool(v); err != nil {
			http.Error(w, fmt.Sprintf("follow %q: want true or false", v), http.StatusBadRequest)
			return
		}
	}
	if follow {
		if !tryAcquire(s.followers) {
			tooMany(w, "followers (flows --follow)", s.lim.MaxFollowers)
			return
		}
		defer func() { <-s.followers }()
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	out := newStreamWriter(w, s.lim.WriteTimeout)
	if !follow {
		for _, fl := range s.store.Recent(f, last) {
			if out.write(fl) != nil {
				return
			}
		}
		return
	}
	hist, live, stop := s.store.Follow(f, last, followBuffer)
	defer stop()
	for _, fl := range hist {
		if out.write(fl) != nil {
			return
		}
	}
	if out.flush() != nil {
		return
	}
	for {
		select {
		case <-r.Context().Done():
			return
		case fl := <-live:
			if !f.Match(fl) {
				continue
			}
			if out.write(fl) != nil || out.flush() != nil {
				return
			}
		}
	}
}

// streamWriter encodes flows with a deadline on every write: a client that
// stops reading fails the write instead of blocking the handler.
type streamWriter struct {
	enc     *json.Encoder
	rc      *http.ResponseController
	timeout time.Duration
}

func newStreamWriter(w http.ResponseWriter, timeout time.Duration) *streamWriter {
	return &streamWriter{enc: json.NewEncoder(w), rc: http.NewResponseController(w), timeout: timeout}
}

func (sw *streamWriter) deadline() {
	// Not every ResponseWriter supports deadlines (httptest.ResponseRecorder); then
	// the server's own timeouts are all there is.
	_ = sw.rc.SetWriteDeadline(time.Now().Add(sw.timeout))
}

func (sw *streamWriter) write(r *Response) error {
	sw.deadline()
	return sw.enc.Encode(r)
}

func (sw *streamWriter) flush() error {
	sw.deadline()
	if err := sw.rc.Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return err
	}
	return nil
}

// Explanation is the answer of GET /v1/explain: what the compiled policy of a local
// pod decides for a new connection with a remote address.
type Explanation struct {
	NodeName  string    `json:"node_name"`
	Namespace string    `json:"namespace"`
	Pod       string    `json:"pod_name"`
	Direction string    `json:"traffic_direction"` // INGRESS or EGRESS
	Remote    string    `json:"remote"`
	Protocol  string    `json:"protocol"`
	Port      uint16    `json:"port"`
	Verdict   string    `json:"verdict"` // FORWARDED or DROPPED
	Reason    string    `json:"reason"`
	Rule      string    `json:"rule,omitempty"`
	Policies  []*Policy `json:"policies,omitempty"`
	// Datapath is what the node's BPF maps hold for the same connection, read back
	// the way the programs read them; Agrees says whether it matches the above.
	Datapath *DatapathView `json:"datapath,omitempty"`
	Agrees   bool          `json:"datapath_agrees"`
}

// DatapathView is the datapath's side of an explanation.
type DatapathView struct {
	Verdict        string  `json:"verdict"` // FORWARDED or DROPPED
	Reason         string  `json:"reason"`
	RemoteIdentity uint32  `json:"remote_identity"`
	CIDRIdentity   uint32  `json:"cidr_identity,omitempty"`
	Enforced       bool    `json:"enforced"`
	Rule           string  `json:"rule,omitempty"`
	Policy         *Policy `json:"policy,omitempty"`
	Error          string  `json:"error,omitempty"` // the maps could not be read
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

func (s *server) serveExplain(w http.ResponseWriter, r *http.Request) {
	ex := s.ex
	if ex == nil {
		http.Error(w, "policy enforcement is off on this agent (--policy=false): nothing to explain", http.StatusServiceUnavailable)
		return
	}
	q := r.URL.Query()
	ns, pod := q.Get(ParamNamespace), q.Get(ParamPod)
	if ns == "" || pod == "" {
		http.Error(w, "namespace and pod: both required (the local pod whose policy decides)", http.StatusBadRequest)
		return
	}
	var dir policy.Direction
	switch strings.ToUpper(q.Get(ParamDirection)) {
	case Ingress:
		dir = policy.Ingress
	case Egress:
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
	proto, err := ParseProtocol(q.Get(ParamProtocol))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	port, err := strconv.ParseUint(q.Get(ParamPort), 10, 16)
	if err != nil || (port == 0 && proto != policy.ProtoAny) {
		http.Error(w, fmt.Sprintf("port %q: want a number 1-65535", q.Get(ParamPort)), http.StatusBadRequest)
		return
	}
	if !tryAcquire(s.explains) {
		tooMany(w, "explains running", s.lim.MaxExplains)
		return
	}
	// The work runs apart from the request: a client that gives up (or a
	// timeout) answers at once, while the slot is freed only when the work ends.
	done := make(chan explainResult, 1)
	go func() {
		defer func() { <-s.explains }()
		done <- explain(ex, s.node, ns, pod, dir, remote, proto, uint16(port))
	}()
	timer := time.NewTimer(s.lim.ExplainTimeout)
	defer timer.Stop()
	var res explainResult
	select {
	case res = <-done:
	case <-r.Context().Done():
		return
	case <-timer.C:
		http.Error(w, fmt.Sprintf("explain of %s/%s on node %s did not finish within %s: the agent is busy, try again", ns, pod, s.node, s.lim.ExplainTimeout), http.StatusServiceUnavailable)
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
		NodeName: node, Namespace: ns, Pod: pod, Direction: Ingress, Remote: remote.String(),
		Protocol: proto.String(), Port: port, Verdict: VerdictForwarded,
	}
	if dir == policy.Egress {
		out.Direction = Egress
	}
	switch {
	case d.Host:
		out.Reason = "the remote is the pod's own node: always allowed"
	case d.Deny:
		out.Verdict, out.Reason = VerdictDropped, "denied by a deny rule"
	case !d.Allowed:
		out.Verdict, out.Reason = VerdictDropped, "no rule allows it (default deny)"
		for _, r := range ex.DefaultDenyBy(ns, pod, dir) {
			out.Policies = append(out.Policies, policyOf(r))
		}
	case d.RuleID != 0:
		out.Reason = "allowed by a rule"
	default:
		out.Reason = "no policy enforces this direction: allowed"
	}
	if d.RuleID != 0 {
		out.Rule = ri.Rule
		out.Policies = []*Policy{policyOf(ri.Policy)}
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
	v := &DatapathView{Verdict: VerdictForwarded, RemoteIdentity: uint32(md.RemoteIdentity),
		CIDRIdentity: uint32(md.CIDRIdentity), Enforced: md.Enforced}
	switch {
	case md.Host:
		v.Reason = "the remote is the pod's own node: always allowed"
	case md.Deferred:
		v.Reason = "a Service or node address: judged on the backend after kube-proxy's DNAT"
	case md.Deny:
		v.Verdict, v.Reason = VerdictDropped, "a deny entry matches"
	case !md.Allowed:
		v.Verdict, v.Reason = VerdictDropped, "no entry matches and the direction is enforced"
	case md.RuleID != 0:
		v.Reason = "an allow entry matches"
	default:
		v.Reason = "the direction is not enforced"
	}
	if md.RuleID != 0 {
		v.Rule = ri.Rule
		v.Policy = policyOf(ri.Policy)
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
