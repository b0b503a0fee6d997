package cni

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/flatnet/flatnet/dataplane/endpointapi"
)

// schedStats is how this process has been scheduled so far, summed over its
// threads from the kernel's per-thread /proc/self/task/*/schedstat (time on a
// CPU, time runnable and waiting for one, in ns): "oncpu" and "runqueue" for the
// agent's metrics (endpointapi.AddSchedHeader). nil if the kernel keeps no such
// statistics (CONFIG_SCHED_INFO off).
func schedStats() []endpointapi.AddPhase {
	tasks, err := filepath.Glob("/proc/self/task/*/schedstat")
	if err != nil || len(tasks) == 0 {
		return nil
	}
	var onCPU, waited int64
	for _, p := range tasks {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // a thread that exited meanwhile
		}
		var run, wait, slices int64
		if _, err := fmt.Sscanf(string(b), "%d %d %d", &run, &wait, &slices); err != nil {
			return nil
		}
		onCPU += run
		waited += wait
	}
	return []endpointapi.AddPhase{
		{Name: "oncpu", Took: time.Duration(onCPU)},
		{Name: "runqueue", Took: time.Duration(waited)},
	}
}
