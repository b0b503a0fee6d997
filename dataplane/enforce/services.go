package enforce

import (
	"context"
	"net/netip"

	corev1 "k8s.io/api/core/v1"

	"github.com/flatnet/flatnet/dataplane/ipv4"
)

// UpsertService records the addresses kube-proxy DNATs for a Service on every node:
// its ClusterIPs, externalIPs and LoadBalancer IPs. Egress to them is judged on the
// backend. (Every DNATed connection is judged on its backend anyway, see
// dataplane/POLICY.md; marking the address also spares it the judgment as world
// before the DNAT, so a pod allowed to the backend but not to world gets through.)
func (e *Enforcer) UpsertService(ctx context.Context, s *corev1.Service) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.services[s.Namespace+"/"+s.Name] = serviceAddrs(s)
	return e.writeServicesLocked(ctx)
}

// DeleteService forgets a Service's addresses.
func (e *Enforcer) DeleteService(ctx context.Context, namespace, name string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.services, namespace+"/"+name)
	return e.writeServicesLocked(ctx)
}

func (e *Enforcer) writeServicesLocked(ctx context.Context) error {
	if !e.synced {
		return nil // Synced writes them
	}
	return e.d.SetServices(ctx, e.servicePrefixesLocked())
}

// servicePrefixesLocked is every Service address: the configured ranges and each
// Service's own addresses.
func (e *Enforcer) servicePrefixesLocked() []ipv4.Prefix {
	out := append([]ipv4.Prefix(nil), e.cfg.ServiceCIDRs...)
	for _, addrs := range e.services {
		out = append(out, addrs...)
	}
	return out
}

// serviceAddrs lists the IPv4 addresses kube-proxy DNATs for s.
func serviceAddrs(s *corev1.Service) []ipv4.Prefix {
	var out []ipv4.Prefix
	add := func(a string) {
		if ip, err := netip.ParseAddr(a); err == nil {
			if p, err := ipv4.HostPrefix(ip); err == nil {
				out = append(out, p)
			}
		}
	}
	add(s.Spec.ClusterIP) // "None" (headless) and "" parse as nothing
	for _, a := range s.Spec.ClusterIPs {
		add(a)
	}
	for _, a := range s.Spec.ExternalIPs {
		add(a)
	}
	for _, in := range s.Status.LoadBalancer.Ingress {
		add(in.IP)
	}
	return out
}
