package podnet_test

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/flatnet/flatnet/dataplane/podnet"
	"github.com/flatnet/flatnet/dataplane/podnet/podnettest"
)

// A node that came back with another MAC (Docker gives a restarted kind node a
// new one) leaves the other nodes with neighbour entries for its pods' addresses
// pointing at the old MAC: a new pod on such an address was unreachable from
// them until those entries failed and re-resolved (seen on kind as TIMEOUTs for
// ~15 s after a worker's restart). The pod's address is announced on the uplink
// once it is set up (by the agent, from an Announcer it keeps), and Setup itself
// sends nothing: the announcement is the Announcer's.
func TestAnnouncerUpdatesStaleNeighbours(t *testing.T) {
	n := newNode(t, "10.224.0.2/16")
	peer := podnettest.NewNS(t) // another node on the segment, holding stale entries
	var uplinkMAC net.HardwareAddr
	n.Do(func() error {
		up, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		uplinkMAC = up.Attrs().HardwareAddr
		br, err := netlink.LinkByName("bridge0")
		if err != nil {
			return err
		}
		return netlink.LinkSetNsFd(br, int(peer.Fd()))
	})
	old := net.HardwareAddr{0x02, 0, 0, 0, 0xde, 0xad}
	if err := peer.Do(func(ns.NetNS) error {
		if err := podnettest.AddrUp("bridge0", netip.MustParsePrefix("10.224.0.3/16")); err != nil {
			return err
		}
		br, err := netlink.LinkByName("bridge0")
		if err != nil {
			return err
		}
		// The addresses of a block of 30 from .32, the pod's among them.
		for a, i := netip.MustParseAddr("10.224.0.32"), 0; i < 30; a, i = a.Next(), i+1 {
			if err := netlink.NeighSet(&netlink.Neigh{LinkIndex: br.Attrs().Index, Family: unix.AF_INET,
				State: netlink.NUD_STALE, IP: a.AsSlice(), HardwareAddr: old}); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	macAtPeer := func(a netip.Addr) net.HardwareAddr {
		var mac net.HardwareAddr
		if err := peer.Do(func(ns.NetNS) error {
			ns, err := netlink.NeighList(0, unix.AF_INET)
			for _, e := range ns {
				if e.IP.Equal(a.AsSlice()) {
					mac = e.HardwareAddr
				}
			}
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return mac
	}

	ip := netip.MustParseAddr("10.224.0.40")
	n.setup("c1", podnettest.NewNS(t), ip)
	time.Sleep(200 * time.Millisecond)
	if got := macAtPeer(ip); got.String() != old.String() {
		t.Fatalf("Setup alone changed the other node's entry for %s to %s: the check below cannot tell the Announcer's work", ip, got)
	}
	up := n.uplink()
	n.Do(func() error {
		an, err := podnet.NewAnnouncer(up.Link)
		if err != nil {
			return err
		}
		defer an.Close()
		return an.Announce(ip)
	})
	deadline := time.Now().Add(2 * time.Second)
	for macAtPeer(ip).String() != uplinkMAC.String() && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if got := macAtPeer(ip); got.String() != uplinkMAC.String() {
		t.Errorf("the other node's entry for the new pod's %s: %s, want the uplink's %s (the stale MAC was %s)", ip, got, uplinkMAC, old)
	}
	if other := ip.Next(); macAtPeer(other).String() != old.String() {
		t.Errorf("%s (no pod) changed to %s: the check cannot tell an announcement from anything else", other, macAtPeer(other))
	}
}
