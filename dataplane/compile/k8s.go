package compile

import (
	"net/netip"

	corev1 "k8s.io/api/core/v1"

	"github.com/flatnet/flatnet/dataplane/policy"
)

// PodFromCore converts a Pod as informers deliver it; local says whether it runs on
// this node. The IP is the pod's first IPv4 address (node-subnet pods have one).
func PodFromCore(p *corev1.Pod, local bool) Pod {
	out := Pod{
		Namespace:      p.Namespace,
		Name:           p.Name,
		Labels:         p.Labels,
		ServiceAccount: p.Spec.ServiceAccountName,
		Local:          local,
		HostNetwork:    p.Spec.HostNetwork,
	}
	ips := p.Status.PodIPs
	if len(ips) == 0 && p.Status.PodIP != "" {
		ips = []corev1.PodIP{{IP: p.Status.PodIP}}
	}
	for _, ip := range ips {
		if a, err := netip.ParseAddr(ip.IP); err == nil && a.Is4() {
			out.IP = a
			break
		}
	}
	for _, c := range append(append([]corev1.Container(nil), p.Spec.InitContainers...), p.Spec.Containers...) {
		for _, cp := range c.Ports {
			if cp.Name == "" || cp.ContainerPort < 1 || cp.ContainerPort > 65535 {
				continue
			}
			proto := policy.ProtoTCP
			switch cp.Protocol {
			case corev1.ProtocolUDP:
				proto = policy.ProtoUDP
			case corev1.ProtocolSCTP:
				proto = policy.ProtoSCTP
			}
			out.Ports = append(out.Ports, NamedPort{Name: cp.Name, Protocol: proto, Port: uint16(cp.ContainerPort)})
		}
	}
	return out
}

// NamespaceFromCore converts a Namespace.
func NamespaceFromCore(ns *corev1.Namespace) Namespace {
	return Namespace{Name: ns.Name, Labels: ns.Labels}
}

// PolicyKey is the key UpsertPolicy/DeletePolicy expect for a source object.
func PolicyKey(ref policy.Ref) string {
	switch ref.Kind {
	case policy.KindNetworkPolicy:
		return "np/" + ref.Namespace + "/" + ref.Name
	case policy.KindCNP:
		return "cnp/" + ref.Namespace + "/" + ref.Name
	}
	return "ccnp/" + ref.Name
}
