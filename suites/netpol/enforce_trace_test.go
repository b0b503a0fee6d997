//go:build e2e

package netpol

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/flatnet/flatnet/suites/internal/mapwatch"
	"github.com/flatnet/flatnet/suites/internal/policyset"
)

// The enforcement benchmark's breakdown (issue 20): where the time between the
// instant before the API call (t0) and the watches' CHANGED goes. Per round it
// takes, each as time after t0:
//   - the API call returned (the Applier's round trips);
//   - the policy object's watch event reached this process (the API server's
//     watch delivery, as every agent's informer gets it);
//   - with FLATNET_BENCH_TRACE=1, each server pod's policy map swapped on its
//     node (mapwatch: the agent's write in force; root on the machine running
//     kind);
//   - each watch's CHANGED (the figure the benchmark reports).

// roundTimes are one round's instants.
type roundTimes struct {
	t0, api time.Time
	changed map[string]time.Time // server pod ref -> CHANGED of its watch
}

// eventLog records when watch events of the benchmark's policy object arrive.
type eventLog struct {
	mu     sync.Mutex
	events []time.Time
}

// watchPolicy records every event of the NetworkPolicy and the CNP named name
// in ns until ctx ends. It returns once both watches are established.
func watchPolicy(ctx context.Context, typed kubernetes.Interface, dyn dynamic.Interface, ns, name string) (*eventLog, error) {
	opts := metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("metadata.name", name).String()}
	np, err := typed.NetworkingV1().NetworkPolicies(ns).Watch(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("watching NetworkPolicy %s/%s: %w", ns, name, err)
	}
	cnp, err := dyn.Resource(policyset.CNPResource).Namespace(ns).Watch(ctx, opts)
	if err != nil {
		np.Stop()
		return nil, fmt.Errorf("watching CiliumNetworkPolicy %s/%s: %w", ns, name, err)
	}
	l := &eventLog{}
	for _, w := range []watch.Interface{np, cnp} {
		go func() {
			defer w.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case ev, ok := <-w.ResultChan():
					if !ok {
						return
					}
					if ev.Type == watch.Added || ev.Type == watch.Deleted {
						l.mu.Lock()
						l.events = append(l.events, time.Now())
						l.mu.Unlock()
					}
				}
			}
		}()
	}
	return l, nil
}

// first is the first event at or after t.
func (l *eventLog) first(t time.Time) (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, at := range l.events {
		if !at.Before(t) {
			return at, true
		}
	}
	return time.Time{}, false
}

// breakdown collects the rounds of one direction (apply or delete).
type breakdown struct {
	stages []string
	values map[string][]time.Duration
	// lateSwaps counts rounds where a watch saw the change more than one
	// watch interval before the poll saw its node's swap (an attempt started
	// a hair before the swap may meet it): the poller ran late.
	lateSwaps int
}

func newBreakdown() *breakdown { return &breakdown{values: map[string][]time.Duration{}} }

func (b *breakdown) add(stage string, d time.Duration) {
	if _, ok := b.values[stage]; !ok {
		b.stages = append(b.stages, stage)
	}
	b.values[stage] = append(b.values[stage], d)
}

// record adds a round: its instants, the watch event (events) and, when maps
// is set, each server's policy map swap.
func (b *breakdown) record(r roundTimes, events *eventLog, maps *mapwatch.Watcher, pairs []benchPair) {
	b.add("API call returned", r.api.Sub(r.t0))
	if at, ok := events.first(r.t0); ok {
		b.add("watch event at the suite", at.Sub(r.t0))
	}
	var lastSwap time.Time
	var probeLag time.Duration
	late := false
	for _, p := range pairs {
		changed := r.changed[p.server.Ref()]
		if maps == nil {
			continue
		}
		s, ok := maps.FirstSwap(mapwatch.Target{Node: p.server.Node, IP: p.server.IP}, r.t0)
		if !ok {
			continue
		}
		b.add(fmt.Sprintf("policy map of pod %s swapped (%s)", p.server.Name, p.server.Node), s.At.Sub(r.t0))
		lastSwap = later(lastSwap, s.At)
		probeLag = max(probeLag, changed.Sub(s.At))
		late = late || changed.Before(s.At.Add(-watchInterval))
	}
	if late {
		b.lateSwaps++
	}
	if !lastSwap.IsZero() {
		b.add("policy map swapped on the last node", lastSwap.Sub(r.t0))
		b.add("CHANGED after its node's swap (worst pair)", probeLag)
	}
	b.add("CHANGED (last watch): the figure", r.latency())
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// table prints the stages' p50, p90 and max in ms after t0.
func (b *breakdown) table(title string) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "%s, ms after the instant before the API call:\n", title)
	tw := tabwriter.NewWriter(&sb, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "stage\trounds\tp50\tp90\tmax\t")
	for _, st := range b.stages {
		s := slices.Clone(b.values[st])
		slices.Sort(s)
		at := func(q float64) float64 {
			return float64(s[min(len(s)-1, int(q*float64(len(s))))].Microseconds()) / 1000
		}
		fmt.Fprintf(tw, "%s\t%d\t%.1f\t%.1f\t%.1f\t\n", st, len(s), at(0.5), at(0.9), at(1))
	}
	tw.Flush()
	if b.lateSwaps > 0 {
		fmt.Fprintf(&sb, "note: in %d round(s) a watch's CHANGED came over %s before its node's swap was seen: the poll ran late "+
			"(machine load), so those swap instants are upper bounds\n", b.lateSwaps, watchInterval)
	}
	return sb.String()
}

// traceMaps starts mapwatch on the servers' nodes when FLATNET_BENCH_TRACE=1.
func traceMaps(ctx context.Context, pairs []benchPair) (*mapwatch.Watcher, error) {
	switch os.Getenv("FLATNET_BENCH_TRACE") {
	case "", "0":
		return nil, nil
	case "1":
	default:
		return nil, fmt.Errorf("FLATNET_BENCH_TRACE=%q: must be 1 (trace the agents' map writes) or 0", os.Getenv("FLATNET_BENCH_TRACE"))
	}
	var targets []mapwatch.Target
	for _, p := range pairs {
		targets = append(targets, mapwatch.Target{Node: p.server.Node, IP: p.server.IP})
	}
	w, err := mapwatch.Start(ctx, targets, time.Millisecond)
	if err != nil {
		return nil, fmt.Errorf("FLATNET_BENCH_TRACE=1: %w", err)
	}
	return w, nil
}
