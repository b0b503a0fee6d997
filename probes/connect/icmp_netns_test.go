package connect_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/flatnet/flatnet/probes/connect"
	"github.com/flatnet/flatnet/probes/internal/netnstest"
)

// TestICMPEcho pings through real namespaces: the server's kernel answers, the
// drop filter swallows the request, a port other than 0 is refused as input.
// Both socket kinds run: the raw socket (the namespace's default
// ping_group_range lets no group ping) and the ping socket (range opened).
func TestICMPEcho(t *testing.T) {
	n := netnstest.New(t)
	for _, sockets := range []struct{ name, groups string }{{"raw socket", "1\t0"}, {"ping socket", "0\t2147483647"}} {
		t.Run(sockets.name, func(t *testing.T) {
			n.InClient(t, func() {
				if err := os.WriteFile("/proc/sys/net/ipv4/ping_group_range", []byte(sockets.groups), 0o644); err != nil {
					t.Fatalf("setting ping_group_range: %v", err)
				}
			})
			for _, tc := range []struct {
				dest string
				want connect.Verdict
			}{
				{netnstest.ServerIP.String(), connect.Connected},
				{netnstest.ServerIP.String() + ":0", connect.Connected},
				{netnstest.DropIP.String(), connect.Timeout},
				{netnstest.ServerIP.String() + ":80", connect.Unknown},
			} {
				var out connect.Outcome
				n.InClient(t, func() {
					out = connect.Probe(context.Background(), connect.Request{Dest: tc.dest, Protocol: connect.ICMP, Timeout: 500 * time.Millisecond})
				})
				if out.Verdict != tc.want {
					t.Errorf("ping %s: %s (%s), want %s", tc.dest, out.Verdict, out.Line(), tc.want)
				}
				if out.Latency > 3*time.Second {
					t.Errorf("ping %s took %v, past its 500ms timeout by seconds", tc.dest, out.Latency)
				}
			}
		})
	}
}
