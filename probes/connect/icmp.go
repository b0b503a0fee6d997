package connect

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
)

// icmpHost takes the host of an ICMP target: "host" or "host:0" (ICMP has no
// ports; batch targets are always host:port).
func icmpHost(dest string) (string, error) {
	host, port, err := net.SplitHostPort(dest)
	if err != nil {
		return dest, nil //nolint:nilerr // a bare host is the usual ping target
	}
	if port != "0" {
		return "", fmt.Errorf("port %q: ICMP has no ports: write the host alone or host:0", port)
	}
	return host, nil
}

// probeICMP sends one echo request and waits for its reply, as ping -c 1 -W
// does: a reply is connected, silence until the deadline TIMEOUT, an ICMP error
// about the request (unreachable, prohibited) OTHER with its type. It uses an
// unprivileged ping socket (net.ipv4.ping_group_range) when the kernel allows
// one, else a raw socket (CAP_NET_RAW, which container runtimes grant by
// default), matching replies by identifier, sequence and source.
func probeICMP(ctx context.Context, req Request) Outcome {
	host, err := icmpHost(req.Dest)
	if err != nil {
		o := fail(Unknown, err)
		o.Hint = "an icmp target is a host, e.g. 10.224.0.57 or 10.224.0.57:0"
		return o
	}
	wait := req.Timeout
	if wait <= 0 {
		wait = UDPNoDeadlineWait
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	var addr *net.IPAddr
	if err := resolveCtx(ctx, net.JoinHostPort(host, "0"), func() error {
		var err error
		addr, err = net.ResolveIPAddr("ip4", host)
		return err
	}); err != nil {
		return dnsFailure(err)
	}
	conn, raw, err := listenICMP()
	if err != nil {
		return fail(Other, err)
	}
	defer conn.Close()
	defer bindDeadline(ctx, conn)()

	id, seq := rand.IntN(0xffff), rand.IntN(0xffff)
	msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: id, Seq: seq, Data: []byte("flatnet-probe")}}
	b, err := msg.Marshal(nil)
	if err != nil {
		return fail(Unknown, err)
	}
	var to net.Addr = addr
	if !raw {
		to = &net.UDPAddr{IP: addr.IP}
	}
	if _, err := conn.WriteTo(b, to); err != nil {
		return fail(Other, err)
	}
	want, _ := netip.AddrFromSlice(addr.IP.To4())
	buf := make([]byte, 1500)
	for {
		n, from, err := conn.ReadFrom(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return Outcome{Verdict: Timeout, Message: "TIMEOUT", Detail: fmt.Sprintf("no echo reply from %s: %v", host, err)}
			}
			return fail(Other, err)
		}
		got, err := icmp.ParseMessage(1, buf[:n])
		if err != nil {
			continue
		}
		switch body := got.Body.(type) {
		case *icmp.Echo:
			// A ping socket rewrites the identifier and filters replies itself.
			if got.Type == ipv4.ICMPTypeEchoReply && body.Seq == seq && (!raw || body.ID == id) && sourceIs(from, want) {
				return Outcome{Verdict: Connected}
			}
		case *icmp.DstUnreach, *icmp.TimeExceeded:
			if !raw || errorAbout(body, want) {
				err := fmt.Errorf("ICMP %v from %s", got.Type, from)
				return fail(Other, err)
			}
		}
	}
}

// listenICMP opens a ping socket, or a raw socket when the ping group range
// leaves this process out (raw reports which).
func listenICMP() (conn *icmp.PacketConn, raw bool, err error) {
	if c, err := icmp.ListenPacket("udp4", "0.0.0.0"); err == nil {
		return c, false, nil
	}
	c, err := icmp.ListenPacket("ip4:icmp", "0.0.0.0")
	if err != nil {
		if errors.Is(err, os.ErrPermission) {
			return nil, true, fmt.Errorf("no ICMP socket: ping sockets are off for this group (net.ipv4.ping_group_range) and raw sockets need CAP_NET_RAW: %w", err)
		}
		return nil, true, fmt.Errorf("opening an ICMP socket: %w", err)
	}
	return c, true, nil
}

func sourceIs(from net.Addr, want netip.Addr) bool {
	var ip net.IP
	switch a := from.(type) {
	case *net.IPAddr:
		ip = a.IP
	case *net.UDPAddr:
		ip = a.IP
	}
	got, ok := netip.AddrFromSlice(ip.To4())
	return ok && got == want
}

// errorAbout: an ICMP error quotes the offending IPv4 header; on a raw socket
// every error of the host arrives, so only one about a packet to want counts.
func errorAbout(body icmp.MessageBody, want netip.Addr) bool {
	var data []byte
	switch b := body.(type) {
	case *icmp.DstUnreach:
		data = b.Data
	case *icmp.TimeExceeded:
		data = b.Data
	}
	h, err := ipv4.ParseHeader(data)
	if err != nil {
		return false
	}
	dst, ok := netip.AddrFromSlice(h.Dst.To4())
	return ok && dst == want && h.Protocol == 1
}
