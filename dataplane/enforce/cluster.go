package enforce

import (
	"context"
	"net/netip"

	corev1 "k8s.io/api/core/v1"

	"github.com/flatnet/flatnet/dataplane/compile"
)

// UpsertPod feeds a pod of any node.
func (e *Enforcer) UpsertPod(ctx context.Context, p *corev1.Pod) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	key := p.Namespace + "/" + p.Name
	e.pods[key] = p
	cp := e.remotePod(p)
	if ep, ok := e.attached[key]; ok {
		cp.Local, cp.IP, cp.HostNetwork = true, ep.IP, false
	}
	if err := e.c.UpsertPod(cp); err != nil {
		return err
	}
	return e.applyLocked(ctx)
}

// DeletePod forgets a pod. A still attached endpoint keeps its policy until Detach.
func (e *Enforcer) DeletePod(ctx context.Context, namespace, name string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	key := namespace + "/" + name
	delete(e.pods, key)
	if _, ok := e.attached[key]; ok {
		return nil
	}
	e.c.DeletePod(namespace, name)
	return e.applyLocked(ctx)
}

// UpsertNamespace feeds a namespace.
func (e *Enforcer) UpsertNamespace(ctx context.Context, ns *corev1.Namespace) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.c.UpsertNamespace(compile.NamespaceFromCore(ns)); err != nil {
		return err
	}
	return e.applyLocked(ctx)
}

// DeleteNamespace forgets a namespace's labels.
func (e *Enforcer) DeleteNamespace(ctx context.Context, name string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.c.DeleteNamespace(name); err != nil {
		return err
	}
	return e.applyLocked(ctx)
}

// UpsertNode feeds a node's InternalIP/ExternalIP addresses.
func (e *Enforcer) UpsertNode(ctx context.Context, n *corev1.Node) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	var ips []netip.Addr
	for _, a := range n.Status.Addresses {
		if a.Type != corev1.NodeInternalIP && a.Type != corev1.NodeExternalIP {
			continue
		}
		if ip, err := netip.ParseAddr(a.Address); err == nil && ip.Is4() {
			ips = append(ips, ip)
		}
	}
	e.c.UpsertNode(n.Name, ips, n.Name == e.cfg.NodeName)
	return e.applyLocked(ctx)
}

// SetAPIServer records the kube-apiserver's addresses (endpoints of default/kubernetes).
func (e *Enforcer) SetAPIServer(ctx context.Context, ips []netip.Addr) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.c.SetAPIServer(ips)
	return e.applyLocked(ctx)
}

// DeleteNode forgets a node.
func (e *Enforcer) DeleteNode(ctx context.Context, name string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.c.DeleteNode(name)
	return e.applyLocked(ctx)
}
