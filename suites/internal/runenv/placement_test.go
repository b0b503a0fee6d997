package runenv

import (
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

func TestReadPlacement(t *testing.T) {
	env := map[string]string{
		"FLATNET_NODE_SELECTOR": "kubernetes.io/os=linux, pool=e2e",
		"FLATNET_TOLERATIONS":   "dedicated=e2e:NoSchedule, node-role.kubernetes.io/control-plane:NoSchedule,gpu",
	}
	p, err := ReadPlacement(func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{"kubernetes.io/os": "linux", "pool": "e2e"}; !reflect.DeepEqual(p.NodeSelector, want) {
		t.Errorf("node selector %v, want %v", p.NodeSelector, want)
	}
	want := []corev1.Toleration{
		{Key: "dedicated", Operator: corev1.TolerationOpEqual, Value: "e2e", Effect: corev1.TaintEffectNoSchedule},
		{Key: "node-role.kubernetes.io/control-plane", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule},
		{Key: "gpu", Operator: corev1.TolerationOpExists},
	}
	if !reflect.DeepEqual(p.Tolerations, want) {
		t.Errorf("tolerations\n got %+v\nwant %+v", p.Tolerations, want)
	}

	none, err := ReadPlacement(func(string) (string, bool) { return "", false })
	if err != nil || none.NodeSelector != nil || none.Tolerations != nil {
		t.Errorf("unset: %+v, %v; want no placement", none, err)
	}
}

func TestReadPlacementRefusesBadInput(t *testing.T) {
	for name, tc := range map[string]struct{ k, v, want string }{
		"selector not k=v": {"FLATNET_NODE_SELECTOR", "pool", "FLATNET_NODE_SELECTOR"},
		"bad effect":       {"FLATNET_TOLERATIONS", "dedicated=e2e:NoRun", `effect "NoRun"`},
		"bad key":          {"FLATNET_TOLERATIONS", "-bad-:NoSchedule", `key "-bad-"`},
		"bad value":        {"FLATNET_TOLERATIONS", "k=a b:NoSchedule", `value "a b"`},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := ReadPlacement(func(k string) (string, bool) {
				if k == tc.k {
					return tc.v, true
				}
				return "", false
			})
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.k) {
				t.Errorf("error %v, want one naming %s and %s", err, tc.k, tc.want)
			}
		})
	}
}
