package bpf

import (
	"context"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"
)

// BenchmarkNetnsServiceHook is the netfilter FORWARD program's own cost per packet
// (BPF run time statistics: hook-ns/run), on TCP request/response between two pods
// routed through the host stack (host routing), with kube-proxy-like NAT rules so
// that netfilter tracks every packet: dst=pod is traffic the program only has to
// recognise as not its business (not marked, not DNATed), dst=service a connection
// to a ClusterIP it judges on the backend.
func BenchmarkNetnsServiceHook(b *testing.B) {
	n := newTestNode(b)
	ctx := context.Background()
	server := n.addPod("default", "server", "10.224.1.10", map[string]string{"app": "server"})
	client := n.addPod("default", "client", "10.224.2.20", map[string]string{"app": "client"})
	const port = 5001
	server.serveBench(b, port)
	must(b, n.d.SetHostRouting(ctx, true))
	must(b, n.d.SetFlowEvents(ctx, false))
	must(b, n.node.Do(func(ns.NetNS) error { return n.d.AttachServiceHook(ctx) }))
	vip := [4]byte{10, 96, 0, 10}
	n.iptables("-t", "nat", "-A", "PREROUTING", "-d", "10.96.0.10", "-p", "tcp", "--dport", "5001", "-j", "DNAT", "--to-destination", server.ip.String()+":5001")
	n.iptables("-t", "nat", "-A", "POSTROUTING", "-m", "mark", "--mark", "0x4000/0x4000", "-j", "MASQUERADE")
	must(b, n.d.UpsertService(ctx, netip.AddrFrom4(vip)))
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	must(b, err)
	b.Cleanup(func() { stats.Close() })
	for _, dst := range []struct {
		name string
		addr [4]byte
	}{{"pod", server.ip.As4()}, {"service", vip}} {
		b.Run("dst="+dst.name, func(b *testing.B) {
			s0, err := n.d.objs.ServiceEgress.Stats()
			must(b, err)
			addr := unix.SockaddrInet4{Port: port, Addr: dst.addr}
			b.ResetTimer()
			if err := client.inNetns(func() error { return rr(b, &addr) }); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			s1, err := n.d.objs.ServiceEgress.Stats()
			must(b, err)
			if runs := s1.RunCount - s0.RunCount; runs > 0 {
				b.ReportMetric(float64((s1.Runtime-s0.Runtime).Nanoseconds())/float64(runs), "hook-ns/run")
				b.ReportMetric(float64(runs)/float64(b.N), "hook-runs/op")
			}
		})
	}
}
