package enforce

import (
	"unicode/utf8"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"
)

// EventReporter posts a Warning Event on each rejected policy object (kubectl
// describe shows it), from this node's agent.
type EventReporter struct {
	rec record.EventRecorder
}

// NewEventReporter starts an event broadcaster writing through kube; stop flushes
// and stops it.
func NewEventReporter(kube kubernetes.Interface, node string) (r *EventReporter, stop func()) {
	b := record.NewBroadcaster()
	b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: kube.CoreV1().Events("")})
	rec := b.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "flatnet-agent", Host: node})
	return &EventReporter{rec: rec}, b.Shutdown
}

// Rejected records the Event; the recorder queues it and never blocks the caller.
func (r *EventReporter) Rejected(rej Rejection) {
	r.rec.Event(eventObject(rej.Object), corev1.EventTypeWarning, rej.Reason, truncate(rej.Message, maxEventMessage))
}

// maxEventMessage keeps an Event within what the events API stores (events.k8s.io
// notes are limited to 1 kB); flatnetctl rejected shows the whole message.
const maxEventMessage = 1024

func truncate(s string, n int) string {
	const more = " ... (flatnetctl rejected shows all)"
	if len(s) <= n {
		return s
	}
	cut := n - len(more)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + more
}

// eventObject is the reference the Event is about (a cluster-wide policy's Events go
// to the default namespace, as for every cluster-scoped object).
func eventObject(o ObjectRef) runtime.Object {
	kind := string(o.Ref.Kind)
	api := o.APIVersion
	if api == "" {
		api = "cilium.io/v2"
		if kind == "NetworkPolicy" {
			api = "networking.k8s.io/v1"
		}
	}
	return &corev1.ObjectReference{Kind: kind, APIVersion: api, Namespace: o.Ref.Namespace, Name: o.Ref.Name,
		UID: types.UID(o.UID), ResourceVersion: o.ResourceVersion}
}
