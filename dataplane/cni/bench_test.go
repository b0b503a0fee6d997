package cni_test

import (
	"context"
	"fmt"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/flatnet/flatnet/dataplane/podnet/podnettest"
)

// BenchmarkAddDel runs the real plugin binaries through libcni, as a runtime
// does (process start, chained loopback, netns entry, allocator lock), and
// reports ADD and DEL latency percentiles. Run with:
//
//	go test -run XXX -bench AddDel -benchtime 200x ./dataplane/cni
func BenchmarkAddDel(b *testing.B) {
	n := newNode(b, "node-bench", "10.224.0.2/16", blockA)
	list := n.conflist(nil)
	pod := podnettest.NewNS(b)
	var adds, dels []time.Duration
	cpu0 := childCPU()
	b.ResetTimer()
	for i := range b.N {
		id := fmt.Sprintf("bench-%d", i)
		err := n.NS.Do(func(ns.NetNS) error {
			c := n.cniConfig()
			start := time.Now()
			if _, err := c.AddNetworkList(context.Background(), list, rt(id, pod)); err != nil {
				return fmt.Errorf("ADD: %w", err)
			}
			adds = append(adds, time.Since(start))
			start = time.Now()
			if err := c.DelNetworkList(context.Background(), list, &libcni.RuntimeConf{ContainerID: id, NetNS: pod.Path(), IfName: "eth0"}); err != nil {
				return fmt.Errorf("DEL: %w", err)
			}
			dels = append(dels, time.Since(start))
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	// CPU the plugin processes used per ADD+DEL: unlike wall time, it does not
	// grow with the machine's load.
	b.ReportMetric(ms(childCPU()-cpu0)/float64(b.N), "plugin-cpu-ms/op")
	reportPercentiles(b, "add", adds)
	reportPercentiles(b, "del", dels)
}

// reportPercentiles reports d's p50 and p99 as <name>-p50-ms and <name>-p99-ms.
func reportPercentiles(b *testing.B, name string, d []time.Duration) {
	slices.Sort(d)
	b.ReportMetric(ms(pct(d, 50)), name+"-p50-ms")
	b.ReportMetric(ms(pct(d, 99)), name+"-p99-ms")
}

func pct(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	return d[min(len(d)-1, len(d)*p/100)]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// childCPU is the user+system time of every waited-for child process so far.
func childCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_CHILDREN, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
