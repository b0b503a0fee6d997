package policy

import (
	"fmt"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// fromLabelSelector converts a Kubernetes/Cilium label selector. Keys pass through
// keyFn (which adds prefixes or strips Cilium sources); an unknown operator or a
// malformed value list is reported at path.
func fromLabelSelector(ls *metav1.LabelSelector, path *field.Path, keyFn func(string) string) (Selector, field.ErrorList) {
	var s Selector
	var errs field.ErrorList
	if ls == nil {
		return s, nil
	}
	for k, v := range ls.MatchLabels {
		if k == "" {
			errs = append(errs, field.Invalid(path.Child("matchLabels"), k, "label key must not be empty"))
			continue
		}
		s.Requirements = append(s.Requirements, Eq(keyFn(k), v))
	}
	for i, e := range ls.MatchExpressions {
		p := path.Child("matchExpressions").Index(i)
		if e.Key == "" {
			errs = append(errs, field.Required(p.Child("key"), "label key must not be empty"))
			continue
		}
		r := Requirement{Key: keyFn(e.Key), Values: append([]string(nil), e.Values...)}
		switch e.Operator {
		case metav1.LabelSelectorOpIn, metav1.LabelSelectorOpNotIn:
			if len(e.Values) == 0 {
				errs = append(errs, field.Required(p.Child("values"), "must be non-empty for operator "+string(e.Operator)))
				continue
			}
			r.Operator = Operator(e.Operator)
		case metav1.LabelSelectorOpExists, metav1.LabelSelectorOpDoesNotExist:
			if len(e.Values) != 0 {
				errs = append(errs, field.Invalid(p.Child("values"), e.Values, "must be empty for operator "+string(e.Operator)))
				continue
			}
			r.Operator = Operator(e.Operator)
		default:
			errs = append(errs, field.NotSupported(p.Child("operator"), e.Operator,
				[]string{"In", "NotIn", "Exists", "DoesNotExist"}))
			continue
		}
		s.Requirements = append(s.Requirements, r)
	}
	s.normalize()
	return s, errs
}

func identityKey(k string) string { return k }

func namespaceKey(k string) string { return NamespaceLabelPrefix + k }

// ciliumKey drops Cilium's label source ("k8s:", "any:"); other sources (e.g.
// "reserved:") stay and then match only what carries them.
func ciliumKey(k string) string {
	for _, src := range []string{"k8s:", "any:"} {
		if strings.HasPrefix(k, src) {
			return k[len(src):]
		}
	}
	return k
}

// IdentityLabels builds the label set an identity stands for. Pod labels that would
// impersonate the reserved namespace keys are dropped, so a pod cannot claim another
// namespace.
func IdentityLabels(namespace string, podLabels, namespaceLabels map[string]string, serviceAccount string) map[string]string {
	out := make(map[string]string, len(podLabels)+len(namespaceLabels)+2)
	for k, v := range podLabels {
		if k == NamespaceLabel || strings.HasPrefix(k, NamespaceLabelPrefix) || k == ServiceAccountLabel || k == ClusterLabel {
			continue
		}
		out[k] = v
	}
	for k, v := range namespaceLabels {
		out[NamespaceLabelPrefix+k] = v
	}
	out[NamespaceLabel] = namespace
	out[ClusterLabel] = ClusterName
	if serviceAccount != "" {
		out[ServiceAccountLabel] = serviceAccount
	}
	return out
}

// Error is a rejected policy: the object and every offending field.
type Error struct {
	Ref  Ref
	Errs field.ErrorList
}

func (e *Error) Error() string {
	msgs := make([]string, len(e.Errs))
	for i, fe := range e.Errs {
		msgs[i] = fe.Error()
	}
	return fmt.Sprintf("%s rejected (nothing of it applied): %s", e.Ref, strings.Join(msgs, "; "))
}
