// Package policyset moves the cluster under test from one set of policies to
// the next, as a user would with kubectl apply and kubectl delete:
// NetworkPolicies through the typed client, CiliumNetworkPolicies and
// CiliumClusterwideNetworkPolicies (cilium.io/v2 CRDs) through the dynamic
// client, and only the objects that change.
package policyset

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"

	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/flatnet/flatnet/fixtures/oracle"
	"github.com/flatnet/flatnet/fixtures/policies"
)

// The Cilium policy resources, as the CRDs in dataplane/manifests/crds name them.
var (
	CNPResource  = schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumnetworkpolicies"}
	CCNPResource = schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumclusterwidenetworkpolicies"}
)

// ManagedBy labels every policy the suites create.
const (
	managedByLabel = "app.kubernetes.io/managed-by"
	managedByValue = "flatnet-e2e"
)

// CheckCiliumCRDs says whether the API server serves the cilium.io/v2 policy
// kinds; when it does not, the error says how they get installed. kinds lists
// what is needed (KindCNP, KindCCNP).
func CheckCiliumCRDs(disc discovery.DiscoveryInterface, kinds ...oracle.PolicyKind) error {
	list, err := disc.ServerResourcesForGroupVersion("cilium.io/v2")
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("asking the API server for cilium.io/v2 resources: %w", err)
	}
	served := map[string]bool{}
	if list != nil {
		for _, r := range list.APIResources {
			served[r.Kind] = true
		}
	}
	var missing []string
	for _, k := range kinds {
		if !served[string(k)] {
			missing = append(missing, string(k))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("the cluster does not serve %v (apiVersion cilium.io/v2): the CRDs are not installed. "+
			"flatnet ships them in dataplane/manifests/crds and scripts/deploy.sh applies them (kubectl apply -f dataplane/manifests/crds); "+
			"on a cluster without them, run only NetworkPolicy cases: --label-filter='!cilium'", missing)
	}
	return nil
}

// KindsIn lists the Cilium kinds a set uses, for CheckCiliumCRDs.
func KindsIn(ps oracle.PolicySet) []oracle.PolicyKind {
	var out []oracle.PolicyKind
	for _, cp := range ps.CiliumPolicies {
		if !slices.Contains(out, cp.Kind) {
			out = append(out, cp.Kind)
		}
	}
	return out
}

// Applier holds the policy set in force and moves the cluster to the next.
type Applier struct {
	typed   kubernetes.Interface
	dynamic dynamic.Interface
	disc    discovery.DiscoveryInterface
	current oracle.PolicySet
	// touched is every object ever written, so Reset cleans up after a
	// failed step too.
	touched []oracle.PolicyRef
}

// New returns an Applier that believes no policy of the suite is in force.
func New(typed kubernetes.Interface, dyn dynamic.Interface) *Applier {
	return &Applier{typed: typed, dynamic: dyn, disc: typed.Discovery()}
}

// Current is the set last applied in full.
func (a *Applier) Current() oracle.PolicySet { return a.current }

// Apply makes to the set in force: objects that are new or differ are created
// or replaced, objects no longer in the set are deleted (creations first, so
// a replaced allow never leaves a gap wider than the old and new sets).
// Missing CRDs and Cilium policies that cannot be rendered fail before
// anything is written.
func (a *Applier) Apply(ctx context.Context, to oracle.PolicySet) (changed []string, err error) {
	if kinds := KindsIn(to); len(kinds) > 0 {
		if err := CheckCiliumCRDs(a.disc, kinds...); err != nil {
			return nil, err
		}
	}
	for _, cp := range to.CiliumPolicies {
		if _, err := cp.Unstructured(); err != nil {
			return nil, err
		}
	}
	apply, remove := policies.Changes(a.current, to)
	for _, np := range apply.NetworkPolicies {
		a.touch(oracle.PolicyRef{Kind: oracle.KindNetworkPolicy, Namespace: np.Namespace, Name: np.Name})
		verb, err := a.putNetworkPolicy(ctx, np)
		if err != nil {
			return changed, err
		}
		changed = append(changed, fmt.Sprintf("%s NetworkPolicy %s/%s", verb, np.Namespace, np.Name))
	}
	for _, cp := range apply.CiliumPolicies {
		a.touch(cp.Ref())
		verb, err := a.putCilium(ctx, cp)
		if err != nil {
			return changed, err
		}
		changed = append(changed, fmt.Sprintf("%s %s", verb, cp.Ref()))
	}
	for _, r := range remove {
		if err := a.delete(ctx, r); err != nil {
			return changed, err
		}
		changed = append(changed, "deleted "+r.String())
	}
	a.current = to
	return changed, nil
}

// Reset deletes every policy this Applier ever wrote.
func (a *Applier) Reset(ctx context.Context) error {
	var errs []error
	for _, r := range a.touched {
		errs = append(errs, a.delete(ctx, r))
	}
	a.current, a.touched = oracle.PolicySet{}, nil
	return errors.Join(errs...)
}

func (a *Applier) touch(r oracle.PolicyRef) {
	if !slices.Contains(a.touched, r) {
		a.touched = append(a.touched, r)
	}
}

func label(m map[string]string) map[string]string {
	out := map[string]string{managedByLabel: managedByValue}
	for k, v := range m {
		out[k] = v
	}
	return out
}

// putNetworkPolicy creates np, or replaces the object of that name: a create
// first (the common case, one round trip: the benchmark's t0 is before the
// call), then, when it exists, a read for its resourceVersion and an update.
func (a *Applier) putNetworkPolicy(ctx context.Context, np networkingv1.NetworkPolicy) (string, error) {
	np = *np.DeepCopy()
	np.Labels = label(np.Labels)
	c := a.typed.NetworkingV1().NetworkPolicies(np.Namespace)
	_, err := c.Create(ctx, &np, metav1.CreateOptions{})
	switch {
	case err == nil:
		return "created", nil
	case !apierrors.IsAlreadyExists(err):
		return "", fmt.Errorf("creating NetworkPolicy %s/%s: %w", np.Namespace, np.Name, err)
	}
	old, err := c.Get(ctx, np.Name, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("reading NetworkPolicy %s/%s: %w", np.Namespace, np.Name, err)
	}
	np.ResourceVersion = old.ResourceVersion
	if _, err := c.Update(ctx, &np, metav1.UpdateOptions{}); err != nil {
		return "", fmt.Errorf("replacing NetworkPolicy %s/%s: %w", np.Namespace, np.Name, err)
	}
	return "replaced", nil
}

func (a *Applier) resource(r oracle.PolicyRef) (dynamic.ResourceInterface, error) {
	switch r.Kind {
	case oracle.KindCNP:
		return a.dynamic.Resource(CNPResource).Namespace(r.Namespace), nil
	case oracle.KindCCNP:
		return a.dynamic.Resource(CCNPResource), nil
	}
	return nil, fmt.Errorf("%s: kind %q is not a Cilium policy kind", r, r.Kind)
}

func (a *Applier) putCilium(ctx context.Context, cp oracle.CiliumPolicy) (string, error) {
	obj, err := cp.Unstructured()
	if err != nil {
		return "", err
	}
	obj.SetLabels(label(obj.GetLabels()))
	res, err := a.resource(cp.Ref())
	if err != nil {
		return "", err
	}
	// As putNetworkPolicy: a create first, a replacement when it exists.
	_, err = res.Create(ctx, obj, metav1.CreateOptions{})
	switch {
	case err == nil:
		return "created", nil
	case !apierrors.IsAlreadyExists(err):
		return "", fmt.Errorf("creating %s: %w", cp.Ref(), err)
	}
	old, err := res.Get(ctx, obj.GetName(), metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", cp.Ref(), err)
	}
	obj.SetResourceVersion(old.GetResourceVersion())
	if _, err := res.Update(ctx, obj, metav1.UpdateOptions{}); err != nil {
		return "", fmt.Errorf("replacing %s: %w", cp.Ref(), err)
	}
	return "replaced", nil
}

func (a *Applier) delete(ctx context.Context, r oracle.PolicyRef) error {
	var err error
	if r.Kind == oracle.KindNetworkPolicy {
		err = a.typed.NetworkingV1().NetworkPolicies(r.Namespace).Delete(ctx, r.Name, metav1.DeleteOptions{})
	} else {
		var res dynamic.ResourceInterface
		if res, err = a.resource(r); err == nil {
			err = res.Delete(ctx, r.Name, metav1.DeleteOptions{})
		}
	}
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deleting %s: %w", r, err)
	}
	return nil
}

// Get reads a Cilium policy back as the API server stores it, for checks
// that the CRD kept every field.
func Get(ctx context.Context, dyn dynamic.Interface, r oracle.PolicyRef) (*unstructured.Unstructured, error) {
	gvr := CNPResource
	if r.Kind == oracle.KindCCNP {
		gvr = CCNPResource
	}
	var res dynamic.ResourceInterface = dyn.Resource(gvr)
	if r.Kind == oracle.KindCNP {
		res = dyn.Resource(gvr).Namespace(r.Namespace)
	}
	obj, err := res.Get(ctx, r.Name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", r, err)
	}
	return obj, nil
}

// SameSpec compares two object specs as JSON values: numbers that came back
// from the API server as int64 and numbers rendered from YAML as float64 are
// the same field.
func SameSpec(a, b any) (bool, error) {
	norm := func(v any) (any, error) {
		data, err := json.Marshal(v)
		if err != nil {
			return nil, err
		}
		var out any
		return out, json.Unmarshal(data, &out)
	}
	x, err := norm(a)
	if err != nil {
		return false, fmt.Errorf("comparing specs: %w", err)
	}
	y, err := norm(b)
	if err != nil {
		return false, fmt.Errorf("comparing specs: %w", err)
	}
	return reflect.DeepEqual(x, y), nil
}
