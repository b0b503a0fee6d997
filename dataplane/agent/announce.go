package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"

	"github.com/vishvananda/netlink"

	"github.com/flatnet/flatnet/dataplane/podnet"
)

// announceQueue bounds the addresses waiting to be announced; past it a burst's
// announcements are dropped (they are best effort: see podnet.Announce).
const announceQueue = 1024

// startAnnouncer announces pod addresses on the uplink from one packet socket
// until ctx ends, off the ADD's path: the returned func queues an address and
// never blocks. Call it in the host network namespace.
func startAnnouncer(ctx context.Context, uplink string, log *slog.Logger) (func(netip.Addr), error) {
	link, err := netlink.LinkByName(uplink)
	if err != nil {
		return nil, fmt.Errorf("announcer on uplink %s: %w", uplink, err)
	}
	an, err := podnet.NewAnnouncer(link)
	if err != nil {
		return nil, err
	}
	q := make(chan netip.Addr, announceQueue)
	go func() {
		defer an.Close()
		for {
			select {
			case <-ctx.Done():
				return
			case a := <-q:
				if err := an.Announce(a); err != nil {
					log.Warn("gratuitous ARP for a pod", "ip", a, "err", err)
				}
			}
		}
	}()
	return func(a netip.Addr) {
		select {
		case q <- a:
		default:
			log.Warn("gratuitous ARP for a pod dropped: queue full", "ip", a)
		}
	}, nil
}
