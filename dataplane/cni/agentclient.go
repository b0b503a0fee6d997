package cni

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"

	"github.com/vishvananda/netlink"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
)

// PostObservation sends o to the agent listening on socket.
func PostObservation(ctx context.Context, socket string, o Observation) error {
	var d net.Dialer
	c := &http.Client{Transport: &http.Transport{
		DialContext:       func(ctx context.Context, _, _ string) (net.Conn, error) { return d.DialContext(ctx, "unix", socket) },
		DisableKeepAlives: true,
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://flatnet-agent"+ObservationPath, bytes.NewReader(EncodeObservation(o)))
	if err != nil {
		return fmt.Errorf("build observation request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("post observation to %s: %w", socket, err)
	}
	resp.Body.Close()
	return nil
}

// removeOrphanVeths deletes flatnet host veths that belong to no attachment
// in keep (e.g. left by a plugin killed between creating the veth and
// recording the address, or whose allocation was released elsewhere).
func removeOrphanVeths(keep map[string]bool) error {
	links, err := netlinksafe.LinkList()
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	var errs []error
	for _, l := range links {
		name := l.Attrs().Name
		if _, isVeth := l.(*netlink.Veth); !isVeth || keep[name] || !isHostVethName(name) {
			continue
		}
		if err := deleteLink(name); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("remove orphan veths: %v", errs)
	}
	return nil
}

func isHostVethName(name string) bool {
	if len(name) != len(HostVethPrefix)+12 || name[:len(HostVethPrefix)] != HostVethPrefix {
		return false
	}
	for _, c := range name[len(HostVethPrefix):] {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}
