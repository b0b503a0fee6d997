package policy

import (
	"fmt"
	"strings"
	"testing"
)

// TestIPv4MappedCIDRRejected: an IPv4-mapped IPv6 block (::ffff:a.b.c.d[/n]) is
// rejected with its field path, as the API server's strict CIDR validation does
// (k8s.io/apimachinery validation.IsValidCIDR: "must not have an IPv4-mapped IPv6
// address"). Unmapped but kept at /104, it used to become an invalid prefix that
// stopped every datapath write on the node.
func TestIPv4MappedCIDRRejected(t *testing.T) {
	for _, c := range []struct{ cidr, field string }{
		{"::ffff:10.0.0.0/104", "toCIDR[0]"},
		{"::ffff:10.1.2.3", "toCIDR[0]"},
		{"::ffff:0:0/96", "toCIDR[0]"},
	} {
		_, err := cnp(t, fmt.Sprintf(`
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: m, namespace: ns}
spec:
  endpointSelector: {}
  egress: [{toCIDR: ["%s"]}]
`, c.cidr))
		if err == nil || !strings.Contains(err.Error(), "spec.egress[0]."+c.field) || !strings.Contains(err.Error(), "IPv4-mapped") {
			t.Errorf("toCIDR %s: got %v, want a rejection naming spec.egress[0].%s and the IPv4-mapped form", c.cidr, err, c.field)
		}
	}
	_, err := cnp(t, `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: m, namespace: ns}
spec:
  endpointSelector: {}
  egressDeny: [{toCIDRSet: [{cidr: 10.0.0.0/8, except: ["::ffff:10.1.0.0/112"]}]}]
`)
	if err == nil || !strings.Contains(err.Error(), "spec.egressDeny[0].toCIDRSet[0].except[0]") {
		t.Errorf("mapped except: got %v, want a rejection naming the except entry", err)
	}
	_, err = np(t, `
metadata: {name: m, namespace: ns}
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress: [{from: [{ipBlock: {cidr: "::ffff:192.168.0.0/120"}}]}]
`)
	if err == nil || !strings.Contains(err.Error(), "spec.ingress[0].from[0].ipBlock.cidr") || !strings.Contains(err.Error(), "192.168.0.0/24") {
		t.Errorf("mapped ipBlock: got %v, want a rejection naming the field and the IPv4 form to write", err)
	}
}
