package enforce

import (
	"net/netip"

	"github.com/flatnet/flatnet/dataplane/compile"
	"github.com/flatnet/flatnet/dataplane/policy"
)

// PeerOf names the owner of an address (flow enrichment).
func (e *Enforcer) PeerOf(ip netip.Addr) (compile.Peer, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.c.PeerOf(ip)
}

// DefaultDenyBy lists the policies putting a pod in default deny for dir.
func (e *Enforcer) DefaultDenyBy(namespace, name string, dir policy.Direction) []policy.Ref {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.c.DefaultDenyBy(namespace, name, dir)
}

// NodeName is the node this enforcer runs on.
func (e *Enforcer) NodeName() string { return e.cfg.NodeName }
