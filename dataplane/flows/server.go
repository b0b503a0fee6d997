package flows

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

// Handler serves GET /v1/flows (JSON lines, one Response each) and GET /v1/explain.
// ex may be nil (then /v1/explain answers 503).
func Handler(store *Store, ex Explainer, node string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+FlowsPath, func(w http.ResponseWriter, r *http.Request) { serveFlows(w, r, store) })
	mux.HandleFunc("GET "+ExplainPath, func(w http.ResponseWriter, r *http.Request) { serveExplain(w, r, ex, node) })
	return mux
}

func serveFlows(w http.ResponseWriter, r *http.Request, store *Store) {
	q := r.URL.Query()
	f, err := FilterFromQuery(q, time.Now())
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	last := 0
	if s := q.Get(ParamLast); s != "" {
		if last, err = strconv.Atoi(s); err != nil || last < 0 {
			http.Error(w, fmt.Sprintf("last %q: want a number of flows >= 0", s), http.StatusBadRequest)
			return
		}
	}
	follow := false
	if s := q.Get(ParamFollow); s != "" {
		if follow, err = strconv.ParseBool(s); err != nil {
			http.Error(w, fmt.Sprintf("follow %q: want true or false", s), http.StatusBadRequest)
			return
		}
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	enc := json.NewEncoder(w)
	flusher, _ := w.(http.Flusher)
	if !follow {
		for _, fl := range store.Recent(f, last) {
			if enc.Encode(fl) != nil {
				return
			}
		}
		return
	}
	hist, live, stop := store.Follow(f, last, 1024)
	defer stop()
	for _, fl := range hist {
		if enc.Encode(fl) != nil {
			return
		}
	}
	if flusher != nil {
		flusher.Flush()
	}
	for {
		select {
		case <-r.Context().Done():
			return
		case fl := <-live:
			if !f.Match(fl) {
				continue
			}
			if enc.Encode(fl) != nil {
				return
			}
			if flusher != nil {
				flusher.Flush()
			}
		}
	}
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

func serveExplain(w http.ResponseWriter, r *http.Request, ex Explainer, node string) {
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
	d, ri, err := ex.Explain(ns, pod, dir, remote, proto, uint16(port))
	if err != nil {
		http.Error(w, fmt.Sprintf("pod %s/%s on node %s: %v", ns, pod, node, err), http.StatusNotFound)
		return
	}
	out := Explanation{
		NodeName: node, Namespace: ns, Pod: pod, Direction: q.Get(ParamDirection), Remote: remote.String(),
		Protocol: proto.String(), Port: uint16(port), Verdict: VerdictForwarded,
	}
	out.Direction = strings.ToUpper(out.Direction)
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
	out.Datapath = datapathView(ex, ns, pod, dir, remote, proto, uint16(port))
	out.Agrees = out.Datapath.Error == "" && out.Datapath.Verdict == out.Verdict && out.Datapath.Rule == out.Rule
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(out)
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
