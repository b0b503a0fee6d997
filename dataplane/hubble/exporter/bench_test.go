package exporter

import (
	"syscall"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
)

// BenchmarkWrite is one exporter's writer throughput (encode, batch, write to a
// file on the test's disk), fed as fast as it takes flows: flows/s is what an
// exporter sustains before its queue fills and it drops.
func BenchmarkWrite(b *testing.B) {
	for _, bc := range []struct{ name, extra string }{
		{"whole", ""},
		{"masked", ", fieldMask: [time, verdict, source.namespace, source.pod_name, destination.namespace, destination.pod_name, l4]"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			m, _ := newTestManager(b, 4096)
			apply(b, m, "flowLogs: [{name: bench, filePath: bench.log, fileMaxSizeMb: 50, fileMaxBackups: 1"+bc.extra+"}]")
			e := m.running()[0]
			flows := benchFlows()
			b.ResetTimer()
			cpu := cpuTime(b)
			for i := range b.N {
				e.queue <- flows[i%len(flows)]
			}
			m.stopAll() // returns once everything queued is written
			b.StopTimer()
			report(b, cpu)
			if w := counter(m, "written", "bench"); w != float64(b.N) {
				b.Fatalf("%v written of %d", w, b.N)
			}
		})
	}
}

// BenchmarkExport is what the flow path pays per flow with four exporters
// configured (the observer's side: filters and queueing, never the disk).
func BenchmarkExport(b *testing.B) {
	m, _ := newTestManager(b, 1<<16)
	apply(b, m, `
flowLogs:
- {name: all, filePath: all.log, fileMaxSizeMb: 50, fileMaxBackups: 1}
- {name: drops, filePath: drops.log, includeFilters: [{verdict: [DROPPED]}]}
- {name: ns, filePath: ns.log, includeFilters: [{source_pod: ["ns-b/"]}, {destination_pod: ["ns-b/"]}]}
- {name: notcp, filePath: notcp.log, excludeFilters: [{protocol: [TCP]}], fieldMask: [verdict]}
`)
	flows := benchFlows()
	b.ResetTimer()
	cpu := cpuTime(b)
	for i := range b.N {
		m.Export(flows[i%len(flows)])
	}
	b.StopTimer()
	report(b, cpu)
	m.stopAll()
}

func benchFlows() []*flowpb.Flow {
	out := make([]*flowpb.Flow, 1024)
	for i := range out {
		out[i] = flowOf(i, []string{"ns-a", "ns-b"}[i%2], []string{"FORWARDED", "DROPPED"}[i%3/2])
	}
	return out
}

// cpuTime is the process's CPU time so far (user + system, every thread).
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// report adds flows/s (wall time) and the CPU time each flow took since start:
// on a shared machine the CPU time is the steadier figure.
func report(b *testing.B, start time.Duration) {
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "flows/s")
	b.ReportMetric(float64(cpuTime(b)-start)/float64(b.N), "cpu-ns/flow")
}
