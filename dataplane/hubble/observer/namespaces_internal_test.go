package observer

import (
	"testing"
	"time"
)

// TestNamespacesForgetAfterAnHour: as Cilium's namespace manager, a namespace
// is listed for an hour after its last flow and then forgotten, so the set
// stays bounded by the namespaces of the last hour.
func TestNamespacesForgetAfterAnHour(t *testing.T) {
	n := newNamespaces()
	t0 := time.Now()
	n.observe("default", "a", t0)
	n.observe("default", "b", t0.Add(30*time.Second))
	n.observe("default", "a", t0.Add(50*time.Minute)) // refreshes a
	if got := n.list(t0.Add(70 * time.Minute)); len(got) != 1 || got[0].GetNamespace() != "a" {
		t.Fatalf("70 min on: %v, want a alone (b's last flow is over an hour old)", got)
	}
	n.observe("default", "c", t0.Add(3*time.Hour)) // a new namespace prunes
	if _, ok := n.lastSeen[namespaceKey{"default", "a"}]; ok || len(n.lastSeen) != 1 {
		t.Fatalf("after 3 h the set holds %v, want c alone", n.lastSeen)
	}
}
