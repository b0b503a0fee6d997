package agent

import (
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// podsByNode indexes pods by spec.nodeName: the agent's leak finder and status
// report are about this node's pods, whether the factory holds the whole cluster's
// (the enforcer needs every pod's address and labels) or only this node's.
const podsByNode = "spec.nodeName"

// watch registers the agent's use of factory's pod and node informers.
func (a *Agent) watch(factory informers.SharedInformerFactory) error {
	nodes := factory.Core().V1().Nodes()
	a.nodes = nodes.Lister()
	pods := factory.Core().V1().Pods().Informer()
	if err := pods.AddIndexers(cache.Indexers{podsByNode: func(o any) ([]string, error) {
		return []string{o.(*corev1.Pod).Spec.NodeName}, nil
	}}); err != nil {
		return fmt.Errorf("index pods by node: %w", err)
	}
	a.pods = pods.GetIndexer()
	// A pod of this node went away: its address may be free to collect.
	if _, err := pods.AddEventHandler(cache.FilteringResourceEventHandler{
		FilterFunc: func(o any) bool {
			if t, ok := o.(cache.DeletedFinalStateUnknown); ok {
				o = t.Obj
			}
			p, ok := o.(*corev1.Pod)
			return !ok || p.Spec.NodeName == a.cfg.NodeName
		},
		Handler: cache.ResourceEventHandlerFuncs{DeleteFunc: func(any) { a.poke() }},
	}); err != nil {
		return fmt.Errorf("watch pods: %w", err)
	}
	a.synced = []cache.InformerSynced{nodes.Informer().HasSynced, pods.HasSynced}
	return nil
}

// localPods lists the pods the informer knows on this node.
func (a *Agent) localPods() ([]*corev1.Pod, error) {
	objs, err := a.pods.ByIndex(podsByNode, a.cfg.NodeName)
	if err != nil {
		return nil, err
	}
	out := make([]*corev1.Pod, len(objs))
	for i, o := range objs {
		out[i] = o.(*corev1.Pod)
	}
	return out, nil
}

// watchNodePodsOnly makes factory's pod informer hold this node's pods only, for an
// agent whose pods nothing else in the process needs (no policy enforcer): each
// agent then watches its own node's pods rather than the whole cluster's. It must
// come before anything asks factory for the pod informer.
func watchNodePodsOnly(factory informers.SharedInformerFactory, node string) {
	factory.InformerFor(&corev1.Pod{}, func(kube kubernetes.Interface, resync time.Duration) cache.SharedIndexInformer {
		return coreinformers.NewFilteredPodInformer(kube, metav1.NamespaceAll, resync,
			cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc},
			func(o *metav1.ListOptions) {
				o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", node).String()
			})
	})
}
