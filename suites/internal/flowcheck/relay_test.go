package flowcheck

import (
	"context"
	"strings"
	"testing"

	"k8s.io/client-go/kubernetes/fake"
)

// Without the relay's Service the default is off, said so; asked for, off
// needs nothing; a malformed relay names its variable. (Connecting is the
// suites' part: it needs a cluster.)
func TestSetupDefaultsToOffWithoutARelay(t *testing.T) {
	ctx := context.Background()
	cs := fake.NewClientset()
	c, r, note, err := Setup(ctx, nil, cs, "", "", nil)
	if err != nil || c != nil || r != nil || !strings.Contains(note, "flow validation off: no Hubble relay Service flatnet-system/hubble-relay:80") {
		t.Errorf("no relay, no mode asked: checker %v, relay %v, note %q, err %v; want off, said so", c, r, note, err)
	}
	if c, _, note, err := Setup(ctx, nil, cs, Off, "kube-system/hubble-relay:80", nil); c != nil || err != nil || !strings.Contains(note, "off") {
		t.Errorf("off asked: checker %v, note %q, err %v", c, note, err)
	}
	if _, _, _, err := Setup(ctx, nil, cs, Strict, "hubble-relay", nil); err == nil || !strings.Contains(err.Error(), RelayEnv) {
		t.Errorf("malformed relay: %v; want an error naming %s", err, RelayEnv)
	}
}
