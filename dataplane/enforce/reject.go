package enforce

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flatnet/flatnet/dataplane/compile"
	"github.com/flatnet/flatnet/dataplane/policy"
)

// Reasons a policy object is not (fully) in force on a node. They are the Events'
// reasons and the rejected-policies gauge's reason label (a bounded set).
const (
	// ReasonInvalid: the object has invalid or unsupported fields; its previous
	// valid version (if any) stays in force.
	ReasonInvalid = "PolicyRejected"
	// ReasonTooLarge: the policy of an endpoint it selects has more entries than the
	// endpoint's map holds; that endpoint is isolated (deny-all).
	ReasonTooLarge = "PolicyTooLarge"
	// ReasonWriteFailed: writing the policy of an endpoint it selects failed; that
	// endpoint is isolated (deny-all) and the write retried.
	ReasonWriteFailed = "PolicyWriteFailed"
)

// ObjectRef is the version of a policy object the enforcer last saw, for Events.
type ObjectRef struct {
	Ref             policy.Ref
	APIVersion      string
	UID             string
	ResourceVersion string
}

// Rejection is why a policy object, or its effect on some endpoints, is not in force
// on this node.
type Rejection struct {
	Object ObjectRef `json:"object"`
	Node   string    `json:"node"`
	Reason string    `json:"reason"`
	// Message names the field (or the endpoints) and the fix.
	Message string `json:"message"`
	// Pods are the local endpoints isolated because of it (ReasonTooLarge,
	// ReasonWriteFailed); empty for ReasonInvalid.
	Pods []string `json:"pods,omitempty"`
}

// Reporter tells users about rejections where they look (the agent posts Events on
// the object). It is called once per object version and reason, with e's lock held:
// it must not block.
type Reporter interface {
	Rejected(r Rejection)
}

// SetReporter installs the reporter; rejections already known are reported to it.
func (e *Enforcer) SetReporter(r Reporter) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.reporter = r
	clear(e.reported)
	e.reportAll()
}

// RejectedPolicies lists what is not in force on this node, sorted by object.
func (e *Enforcer) RejectedPolicies() []Rejection {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.rejectionsLocked()
}

func (e *Enforcer) rejectionsLocked() []Rejection {
	var out []Rejection
	for key, err := range e.rejected {
		obj := e.objects[key]
		out = append(out, Rejection{Object: obj, Node: e.cfg.NodeName, Reason: ReasonInvalid,
			Message: fmt.Sprintf("not applied on node %s (its previous valid version, if any, stays in force): %v", e.cfg.NodeName, err)})
	}
	type group struct {
		reason string
		pods   []string
		msgs   []string
	}
	byRef := map[policy.Ref]*group{}
	for pod, f := range e.epFail {
		g := byRef[f.ref]
		if g == nil {
			g = &group{reason: f.reason}
			byRef[f.ref] = g
		}
		state := "isolated (deny-all)"
		if !f.isolated {
			state = "left at its previous policy (deny-all could not be written either)"
		}
		g.pods = append(g.pods, pod)
		g.msgs = append(g.msgs, fmt.Sprintf("pod %s %s: %v", pod, state, f.err))
	}
	for ref, g := range byRef {
		sort.Strings(g.pods)
		sort.Strings(g.msgs)
		obj, ok := e.objects[compile.PolicyKey(ref)]
		if !ok {
			obj = ObjectRef{Ref: ref}
		}
		out = append(out, Rejection{Object: obj, Node: e.cfg.NodeName, Reason: g.reason, Pods: g.pods,
			Message: fmt.Sprintf("not in force on node %s for %d pod(s): %s", e.cfg.NodeName, len(g.pods), strings.Join(g.msgs, "; "))})
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i].Object.Ref.String(), out[j].Object.Ref.String()
		if a != b {
			return a < b
		}
		return out[i].Reason < out[j].Reason
	})
	return out
}

// reportAll updates the gauge and reports each rejection not yet reported for its
// object version and reason (so a retry loop never repeats an Event).
func (e *Enforcer) reportAll() {
	rejs := e.rejectionsLocked()
	e.metrics.Rejected.Reset()
	current := map[string]bool{}
	for _, r := range rejs {
		e.metrics.Rejected.WithLabelValues(string(r.Object.Ref.Kind), r.Reason).Inc()
		key := compile.PolicyKey(r.Object.Ref) + "|" + r.Reason
		current[key] = true
		if e.reporter == nil || r.Object.Ref.Name == "" {
			continue
		}
		if v, ok := e.reported[key]; ok && v == r.Object.ResourceVersion {
			continue
		}
		e.reported[key] = r.Object.ResourceVersion
		e.reporter.Rejected(r)
	}
	for key := range e.reported {
		if !current[key] {
			delete(e.reported, key)
		}
	}
}

// RejectedPath is the agent API path listing this node's rejections (flatnetctl
// rejected).
const RejectedPath = "/v1/rejected"

// RejectedHandler serves GET RejectedPath: the node's rejections as JSON.
func (e *Enforcer) RejectedHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			http.Error(w, "GET only", http.StatusMethodNotAllowed)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		rejs := e.RejectedPolicies()
		if rejs == nil {
			rejs = []Rejection{}
		}
		_ = json.NewEncoder(w).Encode(rejs)
	})
}

func newRejectedGauge() *prometheus.GaugeVec {
	return prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "flatnet_policies_rejected",
		Help: "Policy objects not (fully) in force on this node, by kind and reason " +
			"(PolicyRejected: invalid; PolicyTooLarge / PolicyWriteFailed: endpoints isolated). " +
			"Which objects: `flatnetctl rejected` or the objects' Events.",
	}, []string{"kind", "reason"})
}

func (e *Enforcer) reject(obj ObjectRef, err error) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	key := compile.PolicyKey(obj.Ref)
	e.rejected[key] = err
	e.objects[key] = obj
	e.log.Warn("policy rejected; its previous valid version (if any) stays in force", "policy", obj.Ref.String(), "error", err)
	e.reportAll()
	return err
}

// Rejected lists the policy objects whose current version is not applied, and why.
func (e *Enforcer) Rejected() []error {
	e.mu.Lock()
	defer e.mu.Unlock()
	keys := make([]string, 0, len(e.rejected))
	for k := range e.rejected {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]error, len(keys))
	for i, k := range keys {
		out[i] = e.rejected[k]
	}
	return out
}
