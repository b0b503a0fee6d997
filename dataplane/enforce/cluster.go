package enforce

import (
	"context"
	"net/netip"

	corev1 "k8s.io/api/core/v1"

	"github.com/flatnet/flatnet/dataplane/compile"
)

// The exported methods here and in policies.go change the policy state and return
// once the change is in the datapath (commit); the informers' handlers make the
// same changes and leave the write to the writer (queue), which folds a burst of
// them into few writes (write.go).

// UpsertPod feeds a pod of any node.
func (e *Enforcer) UpsertPod(ctx context.Context, p *corev1.Pod) error {
	return e.commit(ctx, e.upsertPod(p))
}

func (e *Enforcer) upsertPod(p *corev1.Pod) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	key := p.Namespace + "/" + p.Name
	e.pods[key] = p
	cp := e.remotePod(p)
	if ep, ok := e.attached[key]; ok {
		cp.Local, cp.IP, cp.HostNetwork = true, ep.IP, false
	}
	e.changedLocked()
	return e.c.UpsertPod(cp)
}

// DeletePod forgets a pod. A still attached endpoint keeps its policy until Detach.
func (e *Enforcer) DeletePod(ctx context.Context, namespace, name string) error {
	return e.commit(ctx, e.deletePod(namespace, name))
}

func (e *Enforcer) deletePod(namespace, name string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	key := namespace + "/" + name
	delete(e.pods, key)
	if _, ok := e.attached[key]; ok {
		return nil
	}
	e.changedLocked()
	e.c.DeletePod(namespace, name)
	return nil
}

// UpsertNamespace feeds a namespace.
func (e *Enforcer) UpsertNamespace(ctx context.Context, ns *corev1.Namespace) error {
	return e.commit(ctx, e.upsertNamespace(ns))
}

func (e *Enforcer) upsertNamespace(ns *corev1.Namespace) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.changedLocked()
	return e.c.UpsertNamespace(compile.NamespaceFromCore(ns))
}

// DeleteNamespace forgets a namespace's labels.
func (e *Enforcer) DeleteNamespace(ctx context.Context, name string) error {
	return e.commit(ctx, e.deleteNamespace(name))
}

func (e *Enforcer) deleteNamespace(name string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.changedLocked()
	return e.c.DeleteNamespace(name)
}

// UpsertNode feeds a node's InternalIP/ExternalIP addresses.
func (e *Enforcer) UpsertNode(ctx context.Context, n *corev1.Node) error {
	return e.commit(ctx, e.upsertNode(n))
}

func (e *Enforcer) upsertNode(n *corev1.Node) error {
	var ips []netip.Addr
	for _, a := range n.Status.Addresses {
		if a.Type != corev1.NodeInternalIP && a.Type != corev1.NodeExternalIP {
			continue
		}
		if ip, err := netip.ParseAddr(a.Address); err == nil && ip.Is4() {
			ips = append(ips, ip)
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.changedLocked()
	e.c.UpsertNode(n.Name, ips, n.Name == e.cfg.NodeName)
	return nil
}

// SetAPIServer records the kube-apiserver's addresses (endpoints of default/kubernetes).
func (e *Enforcer) SetAPIServer(ctx context.Context, ips []netip.Addr) error {
	return e.commit(ctx, e.setAPIServer(ips))
}

func (e *Enforcer) setAPIServer(ips []netip.Addr) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.changedLocked()
	e.c.SetAPIServer(ips)
	return nil
}

// DeleteNode forgets a node.
func (e *Enforcer) DeleteNode(ctx context.Context, name string) error {
	return e.commit(ctx, e.deleteNode(name))
}

func (e *Enforcer) deleteNode(name string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.changedLocked()
	e.c.DeleteNode(name)
	return nil
}
