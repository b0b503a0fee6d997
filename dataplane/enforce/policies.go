package enforce

import (
	"context"

	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/flatnet/flatnet/dataplane/compile"
	"github.com/flatnet/flatnet/dataplane/policy"
)

// UpsertNetworkPolicy feeds a NetworkPolicy. An invalid one is returned as a
// *policy.Error (and kept in Rejected); its last valid version stays in force.
func (e *Enforcer) UpsertNetworkPolicy(ctx context.Context, np *networkingv1.NetworkPolicy) error {
	return e.commit(ctx, e.upsertNetworkPolicy(np))
}

func (e *Enforcer) upsertNetworkPolicy(np *networkingv1.NetworkPolicy) error {
	ref := policy.Ref{Kind: policy.KindNetworkPolicy, Namespace: np.Namespace, Name: np.Name}
	obj := ObjectRef{Ref: ref, APIVersion: "networking.k8s.io/v1", UID: string(np.UID), ResourceVersion: np.ResourceVersion}
	p, err := policy.FromNetworkPolicy(np)
	if err != nil {
		return e.reject(obj, err)
	}
	return e.upsertPolicy(obj, []*policy.Policy{p})
}

// UpsertCiliumPolicy feeds a CNP or CCNP as the dynamic informer delivers it.
func (e *Enforcer) UpsertCiliumPolicy(ctx context.Context, u *unstructured.Unstructured) error {
	return e.commit(ctx, e.upsertCiliumPolicy(u))
}

func (e *Enforcer) upsertCiliumPolicy(u *unstructured.Unstructured) error {
	ref := policy.Ref{Kind: policy.KindCNP, Namespace: u.GetNamespace(), Name: u.GetName()}
	if u.GetKind() == string(policy.KindCCNP) {
		ref = policy.Ref{Kind: policy.KindCCNP, Name: u.GetName()}
	}
	obj := ObjectRef{Ref: ref, APIVersion: u.GetAPIVersion(), UID: string(u.GetUID()), ResourceVersion: u.GetResourceVersion()}
	c, err := policy.CiliumFromUnstructured(u)
	if err != nil {
		return e.reject(obj, err)
	}
	pols, err := policy.FromCilium(c)
	if err != nil {
		return e.reject(obj, err)
	}
	return e.upsertPolicy(obj, pols)
}

// DeletePolicy removes a policy object of any kind.
func (e *Enforcer) DeletePolicy(ctx context.Context, ref policy.Ref) error {
	return e.commit(ctx, e.deletePolicy(ref))
}

func (e *Enforcer) deletePolicy(ref policy.Ref) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	key := compile.PolicyKey(ref)
	delete(e.rejected, key)
	delete(e.objects, key)
	delete(e.reported, key)
	e.changedLocked()
	e.c.DeletePolicy(key)
	return nil
}

func (e *Enforcer) upsertPolicy(obj ObjectRef, pols []*policy.Policy) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	key := compile.PolicyKey(obj.Ref)
	delete(e.rejected, key)
	e.objects[key] = obj
	e.changedLocked()
	return e.c.UpsertPolicy(key, pols)
}
