package runenv

import (
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
)

// Placement is where the suites' pods may run, as cilium-cli's connectivity
// test takes it: a node selector (FLATNET_NODE_SELECTOR, "k=v,k2=v2") and
// tolerations (FLATNET_TOLERATIONS, "key=value:Effect,key:Effect,key", as
// `kubectl taint` writes taints; no value tolerates any value, no effect every
// effect).
type Placement struct {
	NodeSelector map[string]string
	Tolerations  []corev1.Toleration
}

// ReadPlacement reads FLATNET_NODE_SELECTOR and FLATNET_TOLERATIONS.
func ReadPlacement(lookup Lookup) (Placement, error) {
	var p Placement
	if v, _ := lookup("FLATNET_NODE_SELECTOR"); strings.TrimSpace(v) != "" {
		sel, err := labels.ConvertSelectorToLabelsMap(strings.TrimSpace(v))
		if err != nil {
			return Placement{}, fmt.Errorf("FLATNET_NODE_SELECTOR=%q: %v: write labels as k=v,k2=v2", v, err)
		}
		p.NodeSelector = sel
	}
	if v, _ := lookup("FLATNET_TOLERATIONS"); strings.TrimSpace(v) != "" {
		for _, item := range strings.Split(v, ",") {
			t, err := parseToleration(strings.TrimSpace(item))
			if err != nil {
				return Placement{}, fmt.Errorf("FLATNET_TOLERATIONS=%q: %q: %v: write key=value:Effect, key:Effect or key, comma-separated", v, item, err)
			}
			p.Tolerations = append(p.Tolerations, t)
		}
	}
	return p, nil
}

func parseToleration(s string) (corev1.Toleration, error) {
	kv, effect, _ := strings.Cut(s, ":")
	key, value, hasValue := strings.Cut(kv, "=")
	if errs := validation.IsQualifiedName(key); len(errs) > 0 {
		return corev1.Toleration{}, fmt.Errorf("key %q: %s", key, strings.Join(errs, "; "))
	}
	t := corev1.Toleration{Key: key, Operator: corev1.TolerationOpExists}
	if hasValue {
		if errs := validation.IsValidLabelValue(value); len(errs) > 0 {
			return corev1.Toleration{}, fmt.Errorf("value %q: %s", value, strings.Join(errs, "; "))
		}
		t.Operator, t.Value = corev1.TolerationOpEqual, value
	}
	switch e := corev1.TaintEffect(effect); e {
	case "", corev1.TaintEffectNoSchedule, corev1.TaintEffectPreferNoSchedule, corev1.TaintEffectNoExecute:
		t.Effect = e
	default:
		return corev1.Toleration{}, fmt.Errorf("effect %q: want NoSchedule, PreferNoSchedule or NoExecute", effect)
	}
	return t, nil
}
