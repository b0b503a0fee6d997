package compile_test

import (
	"testing"

	"github.com/flatnet/flatnet/dataplane/compile"
	"github.com/flatnet/flatnet/dataplane/compile/compiletest"
	"github.com/flatnet/flatnet/dataplane/identity"
	"github.com/flatnet/flatnet/dataplane/policy"
)

// BenchmarkPolicyChange measures the compiler's share of issue 20's policy apply ->
// enforced path with 1,000 policies and 500 pods present (compiletest.Issue20): the
// informer's NetworkPolicy converted (policy.FromNetworkPolicy), upserted and
// flushed (change=apply), and deleted and flushed (change=delete), as the agent's
// handlers do for the cluster benchmark's default-deny policy on one namespace.
// endpoints/op is how many endpoint policies each Flush emitted.
func BenchmarkPolicyChange(b *testing.B) {
	c := compile.New(identity.NewAllocator())
	if err := compiletest.Build(c, compiletest.Issue20); err != nil {
		b.Fatal(err)
	}
	np := compiletest.DenyIngress(compiletest.Namespace(0))
	key := compiletest.Key(np)
	apply := func() int {
		p, err := policy.FromNetworkPolicy(np)
		if err != nil {
			b.Fatal(err)
		}
		if err := c.UpsertPolicy(key, []*policy.Policy{p}); err != nil {
			b.Fatal(err)
		}
		return len(c.Flush().Endpoints)
	}
	remove := func() int {
		c.DeletePolicy(key)
		return len(c.Flush().Endpoints)
	}
	for _, v := range []struct {
		name       string
		timed, set func() int
	}{{"apply", apply, remove}, {"delete", remove, apply}} {
		b.Run("change="+v.name, func(b *testing.B) {
			if v.name == "delete" {
				apply()
			}
			eps := 0
			for i := 0; i < b.N; i++ {
				eps += v.timed()
				b.StopTimer()
				v.set()
				b.StartTimer()
			}
			b.StopTimer()
			if v.name == "apply" {
				remove()
			}
			b.ReportMetric(float64(eps)/float64(b.N), "endpoints/op")
		})
	}
}
