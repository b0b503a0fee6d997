package framework

import (
	"context"
	"maps"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"

	"github.com/flatnet/flatnet/suites/internal/runenv"
)

// Pod Security: the suites' namespaces enforce the `restricted` level unless a
// suite asks for another (Options.PodSecurity), so the probes are known to run
// where a cluster's policy allows only restricted pods.
const (
	PodSecurityEnforceLabel = "pod-security.kubernetes.io/enforce"
	PodSecurityRestricted   = "restricted"
	PodSecurityBaseline     = "baseline"
	PodSecurityPrivileged   = "privileged"
)

// nobody is the user and group pods run as when they name none: the probe
// image runs as root by default.
const nobody = int64(65534)

// podDefaults are what every pod a suite creates through Framework.Clientset
// gets: the restricted Pod Security settings when the pod sets no security of
// its own, and the run's placement.
type podDefaults struct {
	placement runenv.Placement
}

// apply sets p's defaults in place.
//
// Security, as Kubernetes' e2epod.MixinRestrictedPodSecurity: not root, no
// privilege escalation, every capability dropped, the runtime's seccomp
// profile; the probes' servers bind ports 80 and 81, so the pod's own network
// namespace lets unprivileged users bind every port
// (net.ipv4.ip_unprivileged_port_start=0) and open ICMP echo sockets
// (net.ipv4.ping_group_range), sysctls that Pod Security allows at every
// level and the kubelet allows by default. A pod that sets a security context
// itself (a spoofer holding NET_ADMIN) keeps exactly what it asked for, and
// needs a namespace that admits it.
//
// Placement: the node selector goes to pods not pinned to a node (a suite that
// sets nodeName chose its node), the tolerations to every pod.
func (d podDefaults) apply(p *corev1.Pod) {
	if !ownsSecurity(p) {
		yes, no := true, false
		p.Spec.SecurityContext = &corev1.PodSecurityContext{
			RunAsNonRoot:   &yes,
			RunAsUser:      ptr(nobody),
			RunAsGroup:     ptr(nobody),
			SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
			Sysctls: []corev1.Sysctl{
				{Name: "net.ipv4.ip_unprivileged_port_start", Value: "0"},
				{Name: "net.ipv4.ping_group_range", Value: "0 2147483647"},
			},
		}
		for _, cs := range [][]corev1.Container{p.Spec.InitContainers, p.Spec.Containers} {
			for i := range cs {
				cs[i].SecurityContext = &corev1.SecurityContext{
					AllowPrivilegeEscalation: &no,
					Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
				}
			}
		}
	}
	if len(d.placement.NodeSelector) > 0 && p.Spec.NodeName == "" {
		sel := maps.Clone(d.placement.NodeSelector)
		maps.Copy(sel, p.Spec.NodeSelector) // the pod's own keys win
		p.Spec.NodeSelector = sel
	}
	p.Spec.Tolerations = append(p.Spec.Tolerations, d.placement.Tolerations...)
}

// ownsSecurity says whether the pod sets any security itself.
func ownsSecurity(p *corev1.Pod) bool {
	if p.Spec.SecurityContext != nil || p.Spec.HostNetwork || p.Spec.HostPID || p.Spec.HostIPC {
		return true
	}
	for _, cs := range [][]corev1.Container{p.Spec.InitContainers, p.Spec.Containers} {
		for _, c := range cs {
			if c.SecurityContext != nil {
				return true
			}
		}
	}
	return false
}

func ptr[T any](v T) *T { return &v }

// defaultingClientset is a clientset whose pod creations get the run's pod
// defaults; everything else is the wrapped clientset's.
type defaultingClientset struct {
	kubernetes.Interface
	d podDefaults
}

func (c defaultingClientset) CoreV1() typedcorev1.CoreV1Interface {
	return defaultingCoreV1{CoreV1Interface: c.Interface.CoreV1(), d: c.d}
}

type defaultingCoreV1 struct {
	typedcorev1.CoreV1Interface
	d podDefaults
}

func (c defaultingCoreV1) Pods(namespace string) typedcorev1.PodInterface {
	return defaultingPods{PodInterface: c.CoreV1Interface.Pods(namespace), d: c.d}
}

type defaultingPods struct {
	typedcorev1.PodInterface
	d podDefaults
}

func (p defaultingPods) Create(ctx context.Context, pod *corev1.Pod, opts metav1.CreateOptions) (*corev1.Pod, error) {
	pod = pod.DeepCopy()
	p.d.apply(pod)
	return p.PodInterface.Create(ctx, pod, opts)
}
