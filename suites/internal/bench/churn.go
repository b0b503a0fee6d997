package bench

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
)

// Churn creates and deletes NetworkPolicies in namespace at Rate changes per
// second, keeping at most Live of them, each selecting the namespace's pods
// and allowing them one more port from each other: every change reaches every
// agent that runs one of those pods.
type Churn struct {
	Namespace string
	Rate      float64
	Live      int
}

// Run churns until ctx ends and returns the changes made; the policies it
// made are deleted before it returns.
func (c Churn) Run(ctx context.Context, cs kubernetes.Interface) (int, error) {
	if c.Rate <= 0 || c.Live <= 0 {
		return 0, fmt.Errorf("churn: Rate (%v) and Live (%d) must be positive", c.Rate, c.Live)
	}
	nps := cs.NetworkingV1().NetworkPolicies(c.Namespace)
	tick := time.NewTicker(time.Duration(float64(time.Second) / c.Rate))
	defer tick.Stop()
	var live []string
	changes := 0
	defer func() {
		bg, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for _, n := range live {
			_ = nps.Delete(bg, n, metav1.DeleteOptions{})
		}
	}()
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			return changes, nil
		case <-tick.C:
		}
		if len(live) >= c.Live {
			if err := nps.Delete(ctx, live[0], metav1.DeleteOptions{}); err != nil {
				if ctx.Err() != nil {
					return changes, nil
				}
				return changes, fmt.Errorf("churn: deleting NetworkPolicy %s/%s: %w", c.Namespace, live[0], err)
			}
			live = live[1:]
			changes++
			continue
		}
		np := churnPolicy(fmt.Sprintf("churn-%d", i), int32(2000+i%60000))
		if _, err := nps.Create(ctx, np, metav1.CreateOptions{}); err != nil {
			if ctx.Err() != nil {
				return changes, nil
			}
			return changes, fmt.Errorf("churn: creating NetworkPolicy %s/%s: %w", c.Namespace, np.Name, err)
		}
		live = append(live, np.Name)
		changes++
	}
}

func churnPolicy(name string, port int32) *networkingv1.NetworkPolicy {
	tcp := corev1.ProtocolTCP
	p := intstr.FromInt32(port)
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"bench": "churn"}},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"bench": "churn"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"bench": "churn"}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &p}},
			}},
		},
	}
}
