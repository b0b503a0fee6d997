package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/flatnet/flatnet/dataplane/ipam"
	"github.com/flatnet/flatnet/dataplane/ipam/cluster"
	"github.com/flatnet/flatnet/dataplane/ipam/nodealloc"
	"github.com/flatnet/flatnet/dataplane/podnet"
)

// BlockSizeFor decides the block size: the flag when set, else the Node's
// status.capacity.pods (the kubelet's maxPods), which must then lie in
// 10..250. It also says whether the two disagree, and how.
func BlockSizeFor(flag int, capacityPods int64) (size int, mismatch string, err error) {
	if flag != 0 {
		if flag < ipam.MinBlockSize || flag > ipam.MaxBlockSize {
			return 0, "", fmt.Errorf("--block-size %d: must be between %d and %d", flag, ipam.MinBlockSize, ipam.MaxBlockSize)
		}
		return flag, maxPodsMismatch(flag, capacityPods), nil
	}
	if capacityPods < ipam.MinBlockSize || capacityPods > ipam.MaxBlockSize {
		return 0, "", fmt.Errorf("node capacity.pods (the kubelet's maxPods) is %d, outside %d..%d, so no block size can match it; set maxPods in the KubeletConfiguration (flatnet's kind configs set 30) or run the agent with --block-size",
			capacityPods, ipam.MinBlockSize, ipam.MaxBlockSize)
	}
	return int(capacityPods), "", nil
}

// maxPodsMismatch describes a disagreement between block size and maxPods,
// or returns "" when they agree.
func maxPodsMismatch(blockSize int, capacityPods int64) string {
	switch {
	case capacityPods == int64(blockSize):
		return ""
	case capacityPods > int64(blockSize):
		return fmt.Sprintf("the kubelet's maxPods is %d but this node's address block holds %d: the scheduler may place pods this node cannot address (their CNI ADD fails with an exhaustion error); set maxPods to %d or the agent's --block-size to %d",
			capacityPods, blockSize, blockSize, capacityPods)
	default:
		return fmt.Sprintf("the kubelet's maxPods is %d, below this node's block of %d addresses: %d addresses stay unused; set maxPods to %d to use them",
			capacityPods, blockSize, int64(blockSize)-capacityPods, blockSize)
	}
}

// nodeInternalIP returns the Node's first IPv4 InternalIP.
func nodeInternalIP(n *corev1.Node) (netip.Addr, bool) {
	for _, a := range n.Status.Addresses {
		if a.Type != corev1.NodeInternalIP {
			continue
		}
		if ip, err := netip.ParseAddr(a.Address); err == nil && ip.Is4() {
			return ip, true
		}
	}
	return netip.Addr{}, false
}

// podHoldsIP reports whether a live pod (not terminated) claims ip.
func podHoldsIP(p *corev1.Pod, ip netip.Addr) bool {
	if terminated(p) {
		return false
	}
	for _, pip := range p.Status.PodIPs {
		if pip.IP == ip.String() {
			return true
		}
	}
	return p.Status.PodIP == ip.String()
}

func terminated(p *corev1.Pod) bool {
	return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
}

// LeakFinder decides which allocations no pod holds any more. An allocation
// is explained by a live pod carrying its address, or by its endpoint's pod
// (same namespace/name, no other address yet), or by being young: an ADD in
// flight holds an address long before any pod status shows it. An
// unexplained allocation is only a leak after being seen unexplained for the
// grace period, so a slow ADD or a lagging informer never loses its address.
type LeakFinder struct {
	Grace   time.Duration
	suspect map[nodealloc.Attachment]time.Time
}

// Find returns the leaked allocations at now.
func (f *LeakFinder) Find(now time.Time, allocs []nodealloc.Allocation, pods []*corev1.Pod, endpoint func(containerID string) (Record, bool)) []nodealloc.Allocation {
	if f.suspect == nil {
		f.suspect = map[nodealloc.Attachment]time.Time{}
	}
	byName := map[string]*corev1.Pod{}
	for _, p := range pods {
		byName[p.Namespace+"/"+p.Name] = p
	}
	var leaked []nodealloc.Allocation
	seen := map[nodealloc.Attachment]bool{}
	for _, a := range allocs {
		seen[a.Attachment] = true
		explained := slices.ContainsFunc(pods, func(p *corev1.Pod) bool { return podHoldsIP(p, a.IP) })
		if r, ok := endpoint(a.ContainerID); ok && !explained {
			p := byName[r.PodNamespace+"/"+r.PodName]
			explained = p != nil && !terminated(p) && p.Status.PodIP == "" || now.Sub(r.Created) < f.Grace
		}
		if explained {
			delete(f.suspect, a.Attachment)
			continue
		}
		first, ok := f.suspect[a.Attachment]
		if !ok {
			f.suspect[a.Attachment] = now
			continue
		}
		if now.Sub(first) >= f.Grace {
			leaked = append(leaked, a)
		}
	}
	for att := range f.suspect {
		if !seen[att] {
			delete(f.suspect, att)
		}
	}
	return leaked
}

// releaseLeaks tears down and frees leaked allocations and forgets their endpoints.
func (a *Agent) releaseLeaks(ctx context.Context, leaked []nodealloc.Allocation) error {
	var errs []error
	store := nodealloc.New(a.allocDir())
	for _, l := range leaked {
		if err := podnet.Teardown(l.ContainerID, l.IfName, l.IP, a.uplink); err != nil {
			errs = append(errs, fmt.Errorf("tear down leaked %s (%s): %w", l.IP, l.ContainerID, err))
			continue
		}
		if err := a.endpoints.DeleteEndpoint(ctx, l.ContainerID); err != nil {
			// Keep the address while its endpoint may still be attached:
			// freed, it could go to a pod that would share the entries.
			errs = append(errs, err)
			continue
		}
		if _, _, err := store.Release(ctx, l.Attachment); err != nil {
			errs = append(errs, fmt.Errorf("release leaked %s: %w", l.IP, err))
			continue
		}
		a.metrics.leaks.Inc()
		a.log.Info("released leaked address", "ip", l.IP, "containerID", l.ContainerID)
	}
	return errors.Join(errs...)
}

// blockStatus builds the IPBlock status from the allocations and endpoints.
func (a *Agent) blockStatus(allocs []nodealloc.Allocation, maxPods int64) cluster.IPBlockStatus {
	st := cluster.IPBlockStatus{Used: len(allocs), MaxPods: int(maxPods)}
	for _, al := range allocs {
		e := cluster.Allocation{IP: al.IP.String(), ContainerID: al.ContainerID}
		if r, ok := a.endpoints.Get(al.ContainerID); ok {
			e.PodNamespace, e.PodName = r.PodNamespace, r.PodName
		}
		st.Allocations = append(st.Allocations, e)
	}
	return st
}

func sameStatus(x, y cluster.IPBlockStatus) bool {
	return x.Used == y.Used && x.MaxPods == y.MaxPods && slices.Equal(x.Allocations, y.Allocations)
}
