package enforce

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/flatnet/flatnet/dataplane/policy"
)

// The Cilium policy resources (CRDs in dataplane/manifests/crds).
var (
	CNPResource  = schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumnetworkpolicies"}
	CCNPResource = schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumclusterwidenetworkpolicies"}
)

// Watch registers the Enforcer's handlers before anything is started: on the pods,
// namespaces, nodes, Services and NetworkPolicies of factory, the informer factory the
// whole agent shares (every pod's address and labels matter to policy), and on
// informers of its own for what only it watches (the API server's EndpointSlices,
// CNPs and CCNPs), which Run starts. The handlers change the policy state and leave
// its writing to Run, which folds a burst of changes into few writes (write.go); ctx
// bounds the Service writes they make themselves. The caller starts factory once
// every user has registered, then calls Run.
func (e *Enforcer) Watch(ctx context.Context, factory informers.SharedInformerFactory, kube kubernetes.Interface, dyn dynamic.Interface) error {
	for _, gvr := range []schema.GroupVersionResource{CNPResource, CCNPResource} {
		if _, err := dyn.Resource(gvr).List(ctx, metav1ListOne); err != nil {
			return fmt.Errorf("listing %s (are the CRDs of dataplane/manifests/crds installed?): %w", gvr.Resource, err)
		}
	}
	e.mu.Lock()
	e.getPod = func(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
		return kube.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
	}
	e.mu.Unlock()
	// The API server's addresses: the EndpointSlices of default/kubernetes.
	apif := informers.NewSharedInformerFactoryWithOptions(kube, 0, informers.WithNamespace("default"),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = discoveryv1.LabelServiceName + "=kubernetes" }))
	apiSlices := apif.Discovery().V1().EndpointSlices()
	df := dynamicinformer.NewDynamicSharedInformerFactory(dyn, 0)
	report := e.logUpdateFailure
	handlers := []struct {
		inf cache.SharedIndexInformer
		h   cache.ResourceEventHandlerFuncs
	}{
		{factory.Core().V1().Pods().Informer(), funcs(
			func(o any) { p := o.(*corev1.Pod); report("pod "+p.Namespace+"/"+p.Name, e.queue(e.upsertPod(p))) },
			func(o any) {
				p := o.(*corev1.Pod)
				report("pod "+p.Namespace+"/"+p.Name, e.queue(e.deletePod(p.Namespace, p.Name)))
			})},
		{factory.Core().V1().Namespaces().Informer(), funcs(
			func(o any) { n := o.(*corev1.Namespace); report("namespace "+n.Name, e.queue(e.upsertNamespace(n))) },
			func(o any) {
				n := o.(*corev1.Namespace)
				report("namespace "+n.Name, e.queue(e.deleteNamespace(n.Name)))
			})},
		{factory.Core().V1().Nodes().Informer(), funcs(
			func(o any) { n := o.(*corev1.Node); report("node "+n.Name, e.queue(e.upsertNode(n))) },
			func(o any) { n := o.(*corev1.Node); report("node "+n.Name, e.queue(e.deleteNode(n.Name))) })},
		{factory.Core().V1().Services().Informer(), funcs(
			func(o any) {
				s := o.(*corev1.Service)
				report("service "+s.Namespace+"/"+s.Name, e.UpsertService(ctx, s))
			},
			func(o any) {
				s := o.(*corev1.Service)
				report("service "+s.Namespace+"/"+s.Name, e.DeleteService(ctx, s.Namespace, s.Name))
			})},
		{factory.Networking().V1().NetworkPolicies().Informer(), funcs(
			func(o any) { _ = e.queue(e.upsertNetworkPolicy(o.(*networkingv1.NetworkPolicy))) }, // rejections are reported (Events, /v1/rejected)
			func(o any) {
				np := o.(*networkingv1.NetworkPolicy)
				report("networkpolicy", e.queue(e.deletePolicy(policy.Ref{Kind: policy.KindNetworkPolicy, Namespace: np.Namespace, Name: np.Name})))
			})},
		{apiSlices.Informer(), funcs(
			func(any) {
				report("kube-apiserver endpoints", e.queue(e.setAPIServer(apiServerIPs(apiSlices.Lister()))))
			},
			func(any) {
				report("kube-apiserver endpoints", e.queue(e.setAPIServer(apiServerIPs(apiSlices.Lister()))))
			})},
		{df.ForResource(CNPResource).Informer(), ciliumFuncs(e, policy.KindCNP)},
		{df.ForResource(CCNPResource).Informer(), ciliumFuncs(e, policy.KindCCNP)},
	}
	for _, h := range handlers {
		if _, err := h.inf.AddEventHandler(h.h); err != nil {
			return fmt.Errorf("watching: %w", err)
		}
		e.watching.synced = append(e.watching.synced, h.inf.HasSynced)
	}
	e.watching.own = []ownFactory{apif, df}
	return nil
}

// ownFactory is an informer factory only the Enforcer uses.
type ownFactory interface {
	Start(stop <-chan struct{})
	Shutdown()
}

// Run starts the Enforcer's own informers, waits until every informer it watches
// (Watch) has synced, calls Synced, then writes the handlers' changes and retries
// failed datapath writes until ctx
// ends.
func (e *Enforcer) Run(ctx context.Context) error {
	for _, f := range e.watching.own {
		f.Start(ctx.Done())
	}
	if !cache.WaitForCacheSync(ctx.Done(), e.watching.synced...) {
		return fmt.Errorf("syncing policy informers: %w", ctx.Err())
	}
	if err := e.Synced(ctx); err != nil {
		return fmt.Errorf("writing the synced policy state: %w", err)
	}
	t := time.NewTicker(10 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			for _, f := range e.watching.own {
				f.Shutdown()
			}
			return nil
		case <-e.kick:
			e.logUpdateFailure("writing the informers' changes", e.writePending(ctx, false))
		case <-t.C:
			e.logUpdateFailure("retrying a failed datapath write", e.retry(ctx))
		}
	}
}

// logUpdateFailure logs a failed update of the policy state (what: the object).
func (e *Enforcer) logUpdateFailure(what string, err error) {
	if err != nil {
		e.log.Error("policy state update failed", "object", what, "error", err)
	}
}

// apiServerIPs collects the ready IPv4 addresses of the kubernetes Service's slices.
func apiServerIPs(l discoverylisters.EndpointSliceLister) []netip.Addr {
	slices, err := l.List(labels.Everything())
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, s := range slices {
		for _, ep := range s.Endpoints {
			if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
				continue
			}
			for _, a := range ep.Addresses {
				if ip, err := netip.ParseAddr(a); err == nil && ip.Is4() {
					out = append(out, ip)
				}
			}
		}
	}
	return out
}

// funcs builds handlers from an upsert and a delete, unwrapping tombstones.
func funcs(upsert, del func(any)) cache.ResourceEventHandlerFuncs {
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    upsert,
		UpdateFunc: func(_, o any) { upsert(o) },
		DeleteFunc: func(o any) {
			if t, ok := o.(cache.DeletedFinalStateUnknown); ok {
				o = t.Obj
			}
			del(o)
		},
	}
}

func ciliumFuncs(e *Enforcer, kind policy.Kind) cache.ResourceEventHandlerFuncs {
	return funcs(
		func(o any) {
			u := o.(*unstructured.Unstructured)
			if u.GetKind() == "" { // list items may come without kind
				u.SetKind(string(kind))
			}
			_ = e.queue(e.upsertCiliumPolicy(u)) // rejections are reported (Events, /v1/rejected)
		},
		func(o any) {
			u := o.(*unstructured.Unstructured)
			ref := policy.Ref{Kind: kind, Namespace: u.GetNamespace(), Name: u.GetName()}
			if kind == policy.KindCCNP {
				ref.Namespace = ""
			}
			if err := e.queue(e.deletePolicy(ref)); err != nil {
				e.log.Error("policy state update failed", "policy", ref.String(), "error", err)
			}
		})
}

var metav1ListOne = metav1.ListOptions{Limit: 1}
