package enforce

import (
	"context"
	"errors"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flatnet/flatnet/dataplane/compile"
	"github.com/flatnet/flatnet/dataplane/policy"
)

// delays reads flatnet_policy_enforce_delay_seconds: how many changes it
// observed and their summed delay.
func delays(tb testing.TB, e *Enforcer) (uint64, time.Duration) {
	var m dto.Metric
	must(tb, e.Metrics().EnforceDelay.Write(&m))
	h := m.GetHistogram()
	return h.GetSampleCount(), time.Duration(h.GetSampleSum() * float64(time.Second))
}

// flatnet_policy_enforce_delay_seconds, on an agent fed by real informers and
// writing real maps: the first sync's list is no change's delay; each policy
// of a burst is observed once, with a delay inside the time the test saw from
// before its creation to it in force; the changes of a write that failed as a
// whole are observed once, by the write that succeeded, with their delay from
// their arrival (the failed write's time included).
func TestEnforceDelayPerChange(t *testing.T) {
	bn := newBurstNode(t)
	ctx := context.Background()
	n0, sum0 := delays(t, bn.e)
	// Synced took in every pod, namespace, node and the base policy (more than
	// burstPods changes); only the attaches after it count.
	if n0 > uint64(len(bn.local)) {
		t.Fatalf("%d delays observed after the start, want at most the %d attaches (the first sync is no change's delay)", n0, len(bn.local))
	}

	const n = 20
	t0 := time.Now()
	bn.feed(t, 0, n, false)
	bn.waitInForce(t, fillerPeer(n-1), true)
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(time.Millisecond) {
		if c, _ := delays(t, bn.e); c >= n0+n || time.Now().After(deadline) {
			break
		}
	}
	elapsed := time.Since(t0)
	n1, sum1 := delays(t, bn.e)
	if n1-n0 != n {
		t.Fatalf("%d delays observed for a burst of %d policies, want one each", n1-n0, n)
	}
	if d := sum1 - sum0; d <= 0 || d > n*elapsed {
		t.Errorf("%d changes delayed %s in all, outside 0..%d x %s (the burst's whole time)", n, d, n, elapsed)
	}

	// A write that fails as a whole: its change waits for the next write.
	bn.e.wmu.Lock()
	created := time.Now()
	_, err := bn.kube.NetworkingV1().NetworkPolicies(burstNS).Create(ctx, filler(n, fillerPeer(n)), metav1.CreateOptions{})
	must(t, err)
	key := compile.PolicyKey(policy.Ref{Kind: policy.KindNetworkPolicy, Namespace: burstNS, Name: filler(n, fillerPeer(n)).Name})
	var fed time.Time // the change arrived before this
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(time.Millisecond) {
		bn.e.mu.Lock()
		_, ok := bn.e.objects[key]
		bn.e.mu.Unlock()
		if ok {
			fed = time.Now()
			break
		}
		if time.Now().After(deadline) {
			bn.e.wmu.Unlock()
			t.Fatalf("the informer did not deliver %s within a minute", key)
		}
	}
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	err = bn.e.writePendingLocked(canceled, false)
	failed := time.Now()
	nFailed, _ := delays(t, bn.e)
	bn.e.wmu.Unlock() // the writer (Run) rewrites everything now
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("write with an ended context: %v, want it to fail", err)
	}
	if nFailed != n1 {
		t.Errorf("%d delays observed by a write that failed as a whole, want none", nFailed-n1)
	}
	bn.waitInForce(t, fillerPeer(n), true)
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(time.Millisecond) {
		if c, _ := delays(t, bn.e); c > n1 || time.Now().After(deadline) {
			break
		}
	}
	n2, sum2 := delays(t, bn.e)
	if n2-n1 != 1 {
		t.Fatalf("%d delays observed for one change written after a failed write, want 1", n2-n1)
	}
	if d := sum2 - sum1; d < failed.Sub(fed) || d > time.Since(created) {
		t.Errorf("the change was delayed %s, want from its arrival past the failed write to the write that succeeded (%s..%s)",
			d, failed.Sub(fed), time.Since(created))
	}
}
