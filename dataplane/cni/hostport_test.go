package cni_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/flatnet/flatnet/dataplane/podnet/podnettest"
)

// hostPort is the mapping the tests ask for: node port 18080 to the pod's 8080.
var hostPort = map[string]any{"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"}

// rtWithHostPort is rt with the pod's hostPorts, as the runtime passes them on
// ADD, CHECK and DEL (capability portMappings).
func rtWithHostPort(id string, podNS ns.NetNS) *libcni.RuntimeConf {
	r := rt(id, podNS)
	r.CapabilityArgs = map[string]any{"portMappings": []any{hostPort}}
	return r
}

// serve answers every connection to the pod's port 8080 with greeting.
func serve(t *testing.T, podNS ns.NetNS, greeting string) {
	t.Helper()
	var l net.Listener
	if err := podNS.Do(func(ns.NetNS) (err error) {
		l, err = net.Listen("tcp4", ":8080") // the socket stays in the pod's netns
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, greeting)
			c.Close()
		}
	}()
}

// dialHostPort connects from the node to its own address on the hostPort and
// returns what the other end said.
func (n *node) dialHostPort() (string, error) {
	var got string
	var err error
	n.Do(func() error {
		var c net.Conn
		c, err = net.DialTimeout("tcp4", fmt.Sprintf("%s:%v", n.IP.Addr(), hostPort["hostPort"]), 3*time.Second)
		if err != nil {
			return nil
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		var b []byte
		b, err = io.ReadAll(c)
		got = string(b)
		return nil
	})
	return got, err
}

// natRulesFor lists the node's NAT rules that name the pod's address or one
// of portmap's per-container chains (CNI-DN-...).
func (n *node) natRulesFor(ip netip.Addr) []string {
	n.T.Helper()
	var out []byte
	n.Do(func() error {
		var err error
		out, err = exec.Command("iptables", "-w", "-t", "nat", "-S").CombinedOutput()
		if err != nil {
			return fmt.Errorf("iptables -t nat -S: %v: %s", err, out)
		}
		return nil
	})
	var rules []string
	for _, r := range strings.Split(string(out), "\n") {
		if strings.Contains(r, ip.String()+":") || strings.Contains(r, "CNI-DN-") {
			rules = append(rules, r)
		}
	}
	return rules
}

// TestHostPortIsMappedOnlyForPodsThatAskForIt: flatnet runs CNI's portmap for
// a pod with a hostPort (the node's port reaches the pod, CHECK verifies the
// mapping, DEL removes it) and not for a pod without one.
func TestHostPortIsMappedOnlyForPodsThatAskForIt(t *testing.T) {
	n := newNode(t, "node-a", "10.224.0.2/16", blockA)
	plain, mapped := podnettest.NewNS(t), podnettest.NewNS(t)
	serve(t, mapped, "hello from the mapped pod")

	n.mustAdd("plain", plain)
	if rules := n.natRulesFor(netip.Addr{}); len(rules) != 0 {
		t.Fatalf("a pod without hostPorts left NAT rules: %q", rules)
	}

	r, err := n.addRuntime(n.conflist(nil), rtWithHostPort("mapped", mapped))
	if err != nil {
		t.Fatalf("ADD with a hostPort: %v", err)
	}
	ip := resultIP(t, r)
	if got, err := n.dialHostPort(); err != nil || got != "hello from the mapped pod" {
		t.Fatalf("node port %v after ADD: %q, %v; want the pod's greeting", hostPort["hostPort"], got, err)
	}
	if rules := n.natRulesFor(ip); len(rules) == 0 {
		t.Fatalf("no NAT rule names the pod %s or a CNI-DN chain after ADD", ip)
	}
	n.Do(func() error {
		return n.cniConfig().CheckNetworkList(context.Background(), n.conflist(nil), rtWithHostPort("mapped", mapped))
	})

	for i := range 2 { // DEL is idempotent
		n.Do(func() error {
			return n.cniConfig().DelNetworkList(context.Background(), n.conflist(nil), rtWithHostPort("mapped", mapped))
		})
		if rules := n.natRulesFor(ip); len(rules) != 0 {
			t.Fatalf("NAT rules left after DEL %d: %q", i+1, rules)
		}
	}
	if got, err := n.dialHostPort(); err == nil {
		t.Fatalf("node port %v still answers after DEL: %q", hostPort["hostPort"], got)
	}
	if err := n.del("plain", plain.Path()); err != nil {
		t.Fatal(err)
	}
	n.requireClean("after DEL of both pods")
}

// TestPodsOfTheOldConflistAreDeletedCleanly: pods set up while portmap and
// loopback were chained after flatnet are deleted by the runtime with the
// conflist the agent writes now (the runtime reloads it and passes the pod's
// hostPorts on DEL): portmap's rules, the plumbing and the addresses go.
func TestPodsOfTheOldConflistAreDeletedCleanly(t *testing.T) {
	n := newNode(t, "node-a", "10.224.0.2/16", blockA)
	plain, mapped := podnettest.NewNS(t), podnettest.NewNS(t)
	serve(t, mapped, "hello from the old pod")
	if _, err := n.add(n.oldConflist(), "plain", plain); err != nil {
		t.Fatalf("ADD through the old conflist: %v", err)
	}
	r, err := n.addRuntime(n.oldConflist(), rtWithHostPort("mapped", mapped))
	if err != nil {
		t.Fatalf("ADD with a hostPort through the old conflist: %v", err)
	}
	ip := resultIP(t, r)
	if got, err := n.dialHostPort(); err != nil || got != "hello from the old pod" {
		t.Fatalf("node port through the old conflist: %q, %v", got, err)
	}

	n.Do(func() error {
		if err := n.cniConfig().DelNetworkList(context.Background(), n.conflist(nil), rtWithHostPort("mapped", mapped)); err != nil {
			return fmt.Errorf("DEL with the new conflist of a pod the old one set up: %w", err)
		}
		return n.cniConfig().DelNetworkList(context.Background(), n.conflist(nil), rt("plain", plain))
	})
	if rules := n.natRulesFor(ip); len(rules) != 0 {
		t.Fatalf("NAT rules of the old pod left after DEL: %q", rules)
	}
	n.requireClean("DEL of the old conflist's pods")
}
