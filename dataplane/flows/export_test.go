package flows

// For the tests of package flows_test (netns_test.go, flood_bench_test.go),
// which import packages that import flows (metrics, agent).
var (
	Must = must
	Dump = dump
)
