package netexec_test

import (
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flatnet/flatnet/probes/netexec"
)

func udpAsk(t *testing.T, addr net.Addr, msg string) string {
	t.Helper()
	c, err := net.Dial("udp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 256)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("udp %q: %v", msg, err)
	}
	return string(buf[:n])
}

func TestUDPCommands(t *testing.T) {
	s, err := netexec.Start(netexec.Config{HTTPPort: 0, UDPPort: 0, SCTPPort: -1, UDPListenAddresses: []string{"127.0.0.1"}, Hostname: "nx"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	addr := s.UDPAddrs()[0]
	if got := udpAsk(t, addr, "hostname\n"); got != "nx" {
		t.Errorf("hostname: %q", got)
	}
	if got := udpAsk(t, addr, "echo Hello There"); got != "hello there" {
		t.Errorf("echo: %q, want agnhost's lower-cased echo", got)
	}
	if got := udpAsk(t, addr, "clientip"); !strings.HasPrefix(got, "127.0.0.1:") {
		t.Errorf("clientip: %q", got)
	}
	// serverport answers the configured port (0 here: agnhost reports the flag).
	if got := udpAsk(t, addr, "serverport"); got != strconv.Itoa(0) {
		t.Errorf("serverport: %q", got)
	}
}

func TestValidate(t *testing.T) {
	for _, c := range []struct {
		cfg   netexec.Config
		names string
	}{
		{netexec.Config{HTTPPort: 70000, UDPPort: -1, SCTPPort: -1}, "--http-port"},
		{netexec.Config{HTTPPort: 0, UDPPort: -2, SCTPPort: -1}, "--udp-port"},
		{netexec.Config{HTTPPort: 0, UDPPort: -1, SCTPPort: 70000}, "--sctp-port"},
		{netexec.Config{HTTPPort: 0, UDPPort: 0, SCTPPort: -1, UDPListenAddresses: []string{"nope"}}, "--udp-listen-addresses"},
		{netexec.Config{HTTPPort: 0, UDPPort: -1, SCTPPort: -1, TLSCertFile: "c.pem"}, "--tls-private-key-file"},
	} {
		if _, err := netexec.Start(c.cfg); err == nil || !strings.Contains(err.Error(), c.names) {
			t.Errorf("%+v: %v, want an error naming %s", c.cfg, err, c.names)
		}
	}
}
