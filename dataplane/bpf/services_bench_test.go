package bpf

import (
	"context"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

// BenchmarkNetnsServiceHook is the netfilter FORWARD program's own cost per packet
// (BPF run time statistics: hook-ns/run), on TCP request/response between two pods
// routed through the host stack (host routing), with kube-proxy-like NAT rules so
// that netfilter tracks every packet: dst=pod is traffic the program only has to
// recognise as not its business (not marked, not DNATed), dst=service a connection
// to a ClusterIP it judges on the backend.
func BenchmarkNetnsServiceHook(b *testing.B) {
	n, server, client := newBenchNode(b)
	ctx := context.Background()
	must(b, n.d.SetHostRouting(ctx, true))
	must(b, n.d.SetFlowEvents(ctx, false))
	n.attachServiceHook()
	vip := [4]byte{10, 96, 0, 10}
	n.dnatTCP(netip.AddrFrom4(vip), benchPort, netip.AddrPortFrom(server.ip, benchPort).String())
	n.masqueradeMarked()
	must(b, n.d.UpsertService(ctx, netip.AddrFrom4(vip)))
	enableRunTimeStats(b)
	for _, dst := range []struct {
		name string
		addr [4]byte
	}{{"pod", server.ip.As4()}, {"service", vip}} {
		b.Run("dst="+dst.name, func(b *testing.B) {
			s0, err := n.d.objs.ServiceEgress.Stats()
			must(b, err)
			addr := unix.SockaddrInet4{Port: benchPort, Addr: dst.addr}
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
