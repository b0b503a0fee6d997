package metrics

import (
	"fmt"
	"slices"
	"strings"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"github.com/prometheus/client_golang/prometheus"
)

// contextID is one way of naming a flow's source or destination in a label value
// (Hubble's ContextIdentifier).
type contextID string

// The identifiers of sourceContext/destinationContext, as Hubble spells them.
const (
	ctxIdentity         contextID = "identity"          // every identity label, comma-joined
	ctxNamespace        contextID = "namespace"         // namespace
	ctxPod              contextID = "pod"               // namespace/pod
	ctxPodName          contextID = "pod-name"          // pod
	ctxDNS              contextID = "dns"               // the flow's DNS names (none until flatnet has DNS visibility)
	ctxIP               contextID = "ip"                // the address
	ctxReservedIdentity contextID = "reserved-identity" // reserved:kube-apiserver, else the first reserved: label
	ctxWorkload         contextID = "workload"          // namespace/workload-name
	ctxWorkloadName     contextID = "workload-name"     // the first workload's name
	ctxApp              contextID = "app"               // app.kubernetes.io/name, k8s-app or app label
)

var contextIDs = []contextID{ctxIdentity, ctxNamespace, ctxPod, ctxPodName, ctxDNS, ctxIP,
	ctxReservedIdentity, ctxWorkload, ctxWorkloadName, ctxApp}

// labelsContextNames are labelsContext's labels in Hubble's order, which is the
// order of the label names (whatever order the option lists them in).
var labelsContextNames = []string{
	"source_ip", "source_pod", "source_namespace", "source_workload", "source_workload_kind", "source_app",
	"destination_ip", "destination_pod", "destination_namespace", "destination_workload", "destination_workload_kind", "destination_app",
	"traffic_direction",
}

// appLabels are the pod labels the app context reads, as Hubble lists them.
var appLabels = []string{"k8s:app.kubernetes.io/name=", "k8s:k8s-app=", "k8s:app="}

const kubeAPIServerLabel = "reserved:kube-apiserver"

// contexts is a metric's context options: which labels it adds after its own,
// and how their values come from a flow.
type contexts struct {
	// source, destination: the identifiers tried in order, the first non-empty
	// value wins; the egress and ingress ones replace them for that direction.
	source, sourceEgress, sourceIngress                   []contextID
	destination, destEgress, destIngress                  []contextID
	labels                                                []string // labelsContext, in labelsContextNames order
	podSource, podDestination, podLabelsSrc, podLabelsDst bool     // which series name a pod (for deletion)
}

// parseContexts reads the context options of a metric (the others were checked by
// ParseSpecs and belong to the metric).
func parseContexts(metric string, opts []Option) (*contexts, error) {
	c := &contexts{}
	for _, o := range opts {
		var dst *[]contextID
		switch strings.ToLower(o.Name) {
		case "sourcecontext":
			dst = &c.source
		case "sourceegresscontext":
			dst = &c.sourceEgress
		case "sourceingresscontext":
			dst = &c.sourceIngress
		case "destinationcontext":
			dst = &c.destination
		case "destinationegresscontext":
			dst = &c.destEgress
		case "destinationingresscontext":
			dst = &c.destIngress
		case "labelscontext":
			for _, v := range o.Values {
				if !slices.Contains(labelsContextNames, v) {
					return nil, fmt.Errorf("metric %q, option %q: unknown label %q; want some of %s",
						metric, o.Name, v, strings.Join(labelsContextNames, ", "))
				}
			}
			c.labels = nil
			for _, l := range labelsContextNames {
				if slices.Contains(o.Values, l) {
					c.labels = append(c.labels, l)
				}
			}
			continue
		default:
			continue // the metric's own option
		}
		ids := make([]contextID, 0, len(o.Values))
		for _, v := range o.Values {
			id := contextID(strings.ToLower(v))
			if !slices.Contains(contextIDs, id) {
				names := make([]string, len(contextIDs))
				for i, c := range contextIDs {
					names[i] = string(c)
				}
				return nil, fmt.Errorf("metric %q, option %q: unknown context %q; want one of %s (several: a|b, the first non-empty wins)",
					metric, o.Name, v, strings.Join(names, ", "))
			}
			ids = append(ids, id)
		}
		*dst = ids
	}
	for _, ids := range [][]contextID{c.source, c.sourceEgress, c.sourceIngress} {
		c.podSource = c.podSource || slices.Contains(ids, ctxPod)
	}
	for _, ids := range [][]contextID{c.destination, c.destEgress, c.destIngress} {
		c.podDestination = c.podDestination || slices.Contains(ids, ctxPod)
	}
	c.podLabelsSrc = slices.Contains(c.labels, "source_pod") && slices.Contains(c.labels, "source_namespace")
	c.podLabelsDst = slices.Contains(c.labels, "destination_pod") && slices.Contains(c.labels, "destination_namespace")
	return c, nil
}

func (c *contexts) hasSource() bool {
	return len(c.source)+len(c.sourceEgress)+len(c.sourceIngress) > 0
}

func (c *contexts) hasDestination() bool {
	return len(c.destination)+len(c.destEgress)+len(c.destIngress) > 0
}

// labelNames are the labels the contexts add: labelsContext's, then "source",
// then "destination" (Hubble's order).
func (c *contexts) labelNames() []string {
	names := slices.Clone(c.labels)
	if c.hasSource() {
		names = append(names, "source")
	}
	if c.hasDestination() {
		names = append(names, "destination")
	}
	return names
}

// appendValues appends the values of labelNames for f to vals.
func (c *contexts) appendValues(vals []string, f *flowpb.Flow) []string {
	for _, l := range c.labels {
		vals = append(vals, labelsContextValue(l, f))
	}
	if c.hasSource() {
		vals = append(vals, firstValue(f, true, c.source, c.sourceEgress, c.sourceIngress))
	}
	if c.hasDestination() {
		vals = append(vals, firstValue(f, false, c.destination, c.destEgress, c.destIngress))
	}
	return vals
}

// firstValue is the first non-empty value of one side of f named by ids, or by
// the egress or ingress ones for a flow of that direction when they are set.
func firstValue(f *flowpb.Flow, source bool, ids, egress, ingress []contextID) string {
	switch f.GetTrafficDirection() {
	case flowpb.TrafficDirection_INGRESS:
		if ingress != nil {
			ids = ingress
		}
	case flowpb.TrafficDirection_EGRESS:
		if egress != nil {
			ids = egress
		}
	}
	for _, id := range ids {
		if v := contextValue(id, f, source); v != "" {
			return v
		}
	}
	return ""
}

func contextValue(id contextID, f *flowpb.Flow, source bool) string {
	ep, ip, names := f.GetDestination(), f.GetIP().GetDestination(), f.GetDestinationNames()
	if source {
		ep, ip, names = f.GetSource(), f.GetIP().GetSource(), f.GetSourceNames()
	}
	switch id {
	case ctxIdentity:
		return strings.Join(ep.GetLabels(), ",")
	case ctxNamespace:
		return ep.GetNamespace()
	case ctxPod:
		if ns := ep.GetNamespace(); ns != "" {
			return ns + "/" + ep.GetPodName()
		}
		return ep.GetPodName()
	case ctxPodName:
		return ep.GetPodName()
	case ctxDNS:
		return strings.Join(names, ",")
	case ctxIP:
		return ip
	case ctxReservedIdentity:
		return reservedIdentity(ep.GetLabels())
	case ctxWorkload:
		w := workloadName(ep)
		if w != "" && ep.GetNamespace() != "" {
			return ep.GetNamespace() + "/" + w
		}
		return w
	case ctxWorkloadName:
		return workloadName(ep)
	case ctxApp:
		return appName(ep.GetLabels())
	}
	return ""
}

func labelsContextValue(label string, f *flowpb.Flow) string {
	side, field, _ := strings.Cut(label, "_")
	var ep *flowpb.Endpoint
	var ip string
	switch side {
	case "source":
		ep, ip = f.GetSource(), f.GetIP().GetSource()
	case "destination":
		ep, ip = f.GetDestination(), f.GetIP().GetDestination()
	default: // traffic_direction
		if d := f.GetTrafficDirection(); d != flowpb.TrafficDirection_TRAFFIC_DIRECTION_UNKNOWN {
			return strings.ToLower(d.String())
		}
		return "unknown"
	}
	switch field {
	case "ip":
		return ip
	case "pod":
		return ep.GetPodName()
	case "namespace":
		return ep.GetNamespace()
	case "workload":
		return workloadName(ep)
	case "workload_kind":
		if ws := ep.GetWorkloads(); len(ws) > 0 {
			return ws[0].GetKind()
		}
	case "app":
		return appName(ep.GetLabels())
	}
	return ""
}

func workloadName(ep *flowpb.Endpoint) string {
	if ws := ep.GetWorkloads(); len(ws) > 0 {
		return ws[0].GetName()
	}
	return ""
}

func reservedIdentity(labels []string) string {
	if slices.Contains(labels, kubeAPIServerLabel) {
		return kubeAPIServerLabel
	}
	for _, l := range labels {
		if strings.HasPrefix(l, "reserved:") {
			return l
		}
	}
	return ""
}

// appName is the value of the first of the endpoint's labels (in its order) that
// is one of appLabels, skipping empty values, as Hubble reads it.
func appName(labels []string) string {
	for _, l := range labels {
		for _, prefix := range appLabels {
			if v, ok := strings.CutPrefix(l, prefix); ok && v != "" {
				return v
			}
		}
	}
	return ""
}

// deletePod removes the series of vec that name the pod namespace/name, for the
// contexts that name pods unambiguously (as Hubble does: pod, and labelsContext
// with both the pod and its namespace).
func (c *contexts) deletePod(vec *prometheus.MetricVec, namespace, name string) {
	if c.podSource {
		vec.DeletePartialMatch(prometheus.Labels{"source": namespace + "/" + name})
	}
	if c.podDestination {
		vec.DeletePartialMatch(prometheus.Labels{"destination": namespace + "/" + name})
	}
	if c.podLabelsSrc {
		vec.DeletePartialMatch(prometheus.Labels{"source_namespace": namespace, "source_pod": name})
	}
	if c.podLabelsDst {
		vec.DeletePartialMatch(prometheus.Labels{"destination_namespace": namespace, "destination_pod": name})
	}
}

// namesPods says whether any series can name a pod (so deletions matter).
func (c *contexts) namesPods() bool {
	return c.podSource || c.podDestination || c.podLabelsSrc || c.podLabelsDst
}
