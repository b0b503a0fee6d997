package podnet

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
)

// The warm pool: veth pairs the agent creates on the node ahead of any pod, with
// the datapath's programs and per-interface maps already on the host side, so that
// an ADD does not wait for the kernel's grace periods. A pair is
//
//	host: fp<id>  down, no IPv6, proxy_arp=1 (programs attached by the agent)
//	peer: fq<id>  down, no IPv6, in the host netns
//
// and is free while the file <pool dir>/<id> exists. An ADD claims it by removing
// that file: unlink is atomic, so of two ADDs racing for one pair exactly one
// succeeds and the other tries the next; no lock and no round trip to the agent
// (the ADD's one round trip stays the endpoint PUT at its end). Neither name starts
// with HostVethPrefix, so GC and RemoveOrphanVeths never take a pool pair for a
// pod's, and the agent removes pairs claimed but never renamed.
const (
	PoolHostPrefix = "fp"
	PoolPeerPrefix = "fq"
)

// ErrPoolEmpty is ClaimPooled's answer when no pair is free.
var ErrPoolEmpty = errors.New("warm pool: no free veth pair")

// PoolDir is the pool directory under the plugin's data directory: the agent
// publishes there, the plugin claims there.
func PoolDir(dataDir string) string { return filepath.Join(dataDir, "pool") }

// NewPoolID is a fresh pair id (12 hex digits: the names fit IFNAMSIZ).
func NewPoolID() (string, error) {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("pool pair id: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// PoolIDOf returns the pair id of a pool interface name (either side).
func PoolIDOf(name string) (string, bool) {
	for _, p := range []string{PoolHostPrefix, PoolPeerPrefix} {
		if id, ok := strings.CutPrefix(name, p); ok && len(id) == 12 && isHex(id) {
			return id, true
		}
	}
	return "", false
}

func isHex(s string) bool {
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// CreatePoolPair makes pair id in the current netns with the pods' MTU and
// returns the host side's index. On error nothing of it is left.
func CreatePoolPair(id string, mtu int) (int, error) {
	host, peer := PoolHostPrefix+id, PoolPeerPrefix+id
	err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: host, MTU: mtu}, PeerName: peer, PeerMTU: uint32(mtu)})
	if err != nil {
		return 0, fmt.Errorf("create pool veth %s <-> %s: %w", host, peer, err)
	}
	l, err := netlinksafe.LinkByName(host)
	if err == nil {
		err = errors.Join(disableIPv6(host), disableIPv6(peer),
			// Answers the pod's ARP for 169.254.1.1 should its permanent entry be flushed.
			writeSysctl("net/ipv4/conf/"+host+"/proxy_arp", "1"))
	}
	if err != nil {
		return 0, errors.Join(err, deleteLink(host))
	}
	return l.Attrs().Index, nil
}

// DeletePoolPair removes pair id from the current netns (whichever side is
// left); a pair already gone is fine.
func DeletePoolPair(id string) error {
	return errors.Join(deleteLink(PoolHostPrefix+id), deleteLink(PoolPeerPrefix+id))
}

// PublishPoolPair makes pair id claimable: its file appears atomically (written
// aside, renamed into place), so a claimer never sees a pair half-published.
func PublishPoolPair(poolDir, id string) error {
	tmp := filepath.Join(poolDir, "."+id)
	if err := os.WriteFile(tmp, nil, 0o600); err != nil {
		return fmt.Errorf("publish pool pair %s: %w", id, err)
	}
	if err := os.Rename(tmp, filepath.Join(poolDir, id)); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("publish pool pair %s: %w", id, err)
	}
	return nil
}

// FreePoolPairs lists the ids of the published, unclaimed pairs.
func FreePoolPairs(poolDir string) ([]string, error) {
	ents, err := os.ReadDir(poolDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list the warm pool %s: %w", poolDir, err)
	}
	var ids []string
	for _, e := range ents {
		if len(e.Name()) == 12 && isHex(e.Name()) {
			ids = append(ids, e.Name())
		}
	}
	return ids, nil
}

// ClaimPoolPair claims one free pair for the attachment and returns its id, or
// ErrPoolEmpty. Concurrent ADDs start at different places (a hash of their
// container ID) so that they seldom race for the same file.
func ClaimPoolPair(poolDir, containerID string) (string, error) {
	ids, err := FreePoolPairs(poolDir)
	if err != nil {
		return "", err
	}
	if len(ids) == 0 {
		return "", ErrPoolEmpty
	}
	h := fnv.New32a()
	h.Write([]byte(containerID))
	start := int(h.Sum32() % uint32(len(ids)))
	for i := range ids {
		id := ids[(start+i)%len(ids)]
		err := os.Remove(filepath.Join(poolDir, id))
		if err == nil {
			return id, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("claim pool pair %s: %w", id, err)
		}
	}
	return "", ErrPoolEmpty
}

// SetupPooled is Setup on the claimed pool pair id: the host side renamed to the
// attachment's name (HostVethName, so DEL and GC find it as they find Setup's) and
// brought up, the peer moved into the pod netns as ifName, both configured exactly
// as Setup configures them. The host side keeps its index, and with it the programs
// and maps the agent prepared. On error the pair is deleted (it cannot go back to
// the pool: the agent refills) and the caller falls back to Setup.
func SetupPooled(podNS ns.NetNS, id, containerID, ifName string, addr netip.Addr, mtu int, up *Uplink) (*Veth, error) {
	v, err := setupPooled(podNS, id, containerID, ifName, addr, mtu, up)
	if err != nil {
		hostName := HostVethName(containerID, ifName)
		undo := errors.Join(DeletePoolPair(id), deleteLink(hostName), deleteProxyNeigh(up.Link, addr))
		_ = podNS.Do(func(ns.NetNS) error { return deleteLink(ifName) })
		if undo != nil {
			err = errors.Join(err, fmt.Errorf("undo: %w", undo))
		}
		return nil, err
	}
	return v, nil
}

func setupPooled(podNS ns.NetNS, id, containerID, ifName string, addr netip.Addr, mtu int, up *Uplink) (*Veth, error) {
	hostName := HostVethName(containerID, ifName)
	if mtu == 0 {
		mtu = up.Link.Attrs().MTU
	}
	host, err := netlinksafe.LinkByName(PoolHostPrefix + id)
	if err != nil {
		return nil, fmt.Errorf("pool pair %s: host side: %w", id, err)
	}
	peer, err := netlinksafe.LinkByName(PoolPeerPrefix + id)
	if err != nil {
		return nil, fmt.Errorf("pool pair %s: peer: %w", id, err)
	}
	// Left by an earlier ADD of the same attachment that died half-way, as in Setup.
	if err := deleteLink(hostName); err != nil {
		return nil, err
	}
	// A device must be down to be renamed: the pool keeps both sides down.
	if err := netlink.LinkSetName(host, hostName); err != nil {
		return nil, fmt.Errorf("rename pool veth %s to %s: %w", host.Attrs().Name, hostName, err)
	}
	if host.Attrs().MTU != mtu {
		if err := errors.Join(netlink.LinkSetMTU(host, mtu), netlink.LinkSetMTU(peer, mtu)); err != nil {
			return nil, fmt.Errorf("set MTU %d on pool pair %s: %w", mtu, id, err)
		}
	}
	if err := netlink.LinkSetNsFd(peer, int(podNS.Fd())); err != nil {
		return nil, fmt.Errorf("move pool veth %s into the pod netns: %w", peer.Attrs().Name, err)
	}
	v := &Veth{IP: addr, HostVeth: hostName, PodIfName: ifName, HostIf: iface(host, hostName, mtu)}
	err = podNS.Do(func(ns.NetNS) error {
		pl, err := netlinksafe.LinkByName(peer.Attrs().Name)
		if err != nil {
			return fmt.Errorf("look up pool veth %s in the pod netns: %w", peer.Attrs().Name, err)
		}
		if err := netlink.LinkSetName(pl, ifName); err != nil {
			return fmt.Errorf("rename pool veth %s to %s in the pod netns: %w", peer.Attrs().Name, ifName, err)
		}
		v.PodIf = iface(pl, ifName, mtu)
		v.PodIf.Flags |= net.FlagUp
		// IPv6 settings are per netns: the move reset them.
		return configurePodSide(ifName, addr, v.HostIf.HardwareAddr)
	})
	if err != nil {
		return nil, err
	}
	if err := netlink.LinkSetUp(host); err != nil {
		return nil, fmt.Errorf("set host veth %s up: %w", hostName, err)
	}
	v.HostIf.Flags |= net.FlagUp
	if err := configureHostSide(v, up); err != nil {
		return nil, err
	}
	return v, nil
}

// iface is l as a net.Interface under its new name.
func iface(l netlink.Link, name string, mtu int) net.Interface {
	a := l.Attrs()
	return net.Interface{Index: a.Index, MTU: mtu, Name: name, HardwareAddr: a.HardwareAddr, Flags: a.Flags}
}
