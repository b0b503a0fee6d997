package agent

import (
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flatnet/flatnet/dataplane/bpf"
	"github.com/flatnet/flatnet/dataplane/compile"
	"github.com/flatnet/flatnet/dataplane/policy"
)

// blockingExplainer hangs in Explain until released, counting how many run at once.
type blockingExplainer struct {
	release       chan struct{}
	running, most atomic.Int32
}

func (b *blockingExplainer) Explain(string, string, policy.Direction, netip.Addr, policy.Protocol, uint16) (compile.Decision, compile.RuleInfo, error) {
	n := b.running.Add(1)
	for {
		m := b.most.Load()
		if n <= m || b.most.CompareAndSwap(m, n) {
			break
		}
	}
	<-b.release
	b.running.Add(-1)
	return compile.Decision{Allowed: true}, compile.RuleInfo{}, nil
}
func (b *blockingExplainer) DefaultDenyBy(string, string, policy.Direction) []policy.Ref { return nil }
func (b *blockingExplainer) LookupMaps(string, string, policy.Direction, netip.Addr, policy.Protocol, uint16) (bpf.MapDecision, compile.RuleInfo, error) {
	return bpf.MapDecision{Decision: compile.Decision{Allowed: true}}, compile.RuleInfo{}, nil
}

const explainQuery = "?namespace=default&pod=server&direction=INGRESS&remote=10.224.0.41&protocol=TCP&port=80"

// TestExplainIsBounded: each explain reads the datapath's maps; a flood of them
// must neither run unbounded at once nor keep a client waiting forever.
func TestExplainIsBounded(t *testing.T) {
	ex := &blockingExplainer{release: make(chan struct{})}
	srv := httptest.NewServer(ExplainHandler(ex, "node-a"))
	defer srv.Close()
	defer close(ex.release)
	const n = 40
	codes := make([]int, n)
	var wg sync.WaitGroup
	client := http.Client{Timeout: 20 * time.Second}
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := client.Get(srv.URL + ExplainPath + explainQuery)
			if err != nil {
				codes[i] = -1
				return
			}
			resp.Body.Close()
			codes[i] = resp.StatusCode
		}()
	}
	wg.Wait()
	count := map[int]int{}
	for _, c := range codes {
		count[c]++
	}
	t.Logf("answers with a hung explainer: %v; at most %d explains ran at once", count, ex.most.Load())
	if count[-1] > 0 {
		t.Errorf("%d of %d explains got no answer within 20s while the explainer hung: want a timeout answer", count[-1], n)
	}
	if count[http.StatusTooManyRequests] == 0 {
		t.Errorf("no explain was refused with 429 while %d ran at once: want a concurrency limit", ex.most.Load())
	}
	if m := ex.most.Load(); m >= n/2 {
		t.Errorf("%d explains ran at once: want a small bound", m)
	}
}
