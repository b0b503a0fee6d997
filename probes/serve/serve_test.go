package serve_test

import (
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/flatnet/flatnet/probes/serve"
)

func TestServesHostname(t *testing.T) {
	raw, err := serve.Start(serve.Config{TCP: true, UDP: true, Port: 0, Hostname: "raw-host"})
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()

	c, err := net.DialTimeout("tcp", raw.TCPAddr().String(), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c) // the server writes the hostname and closes
	c.Close()
	if err != nil || string(b) != "raw-host" {
		t.Errorf("tcp: %q, %v; want the hostname, then EOF", b, err)
	}

	u, err := net.Dial("udp", raw.UDPAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	u.SetDeadline(time.Now().Add(5 * time.Second))
	// Any datagram, even one longer than agnhost's 16-byte buffer, gets the hostname.
	u.Write([]byte(strings.Repeat("x", 40) + "\n"))
	buf := make([]byte, 64)
	n, err := u.Read(buf)
	if err != nil || string(buf[:n]) != "raw-host" {
		t.Errorf("udp: %q, %v; want the hostname", buf[:n], err)
	}
}

func TestHTTPClose(t *testing.T) {
	for _, closeConn := range []bool{false, true} {
		srv, err := serve.Start(serve.Config{HTTP: true, Close: closeConn, Port: 0, Hostname: "http-host"})
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.Get("http://" + srv.HTTPAddr().String() + "/anything")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		srv.Close()
		if string(body) != "http-host" {
			t.Errorf("--close=%v: body %q, want the hostname", closeConn, body)
		}
		if resp.Close != closeConn {
			t.Errorf("--close=%v: response asks to close the connection: %v", closeConn, resp.Close)
		}
	}
}

func TestValidate(t *testing.T) {
	for _, c := range []struct {
		cfg   serve.Config
		names string
	}{
		{serve.Config{HTTP: true, TCP: true, Port: 80}, "HTTP mode"},
		{serve.Config{UDP: true, Port: 70000}, "--port"},
		{serve.Config{TCP: true, Port: -1}, "--port"},
	} {
		if _, err := serve.Start(c.cfg); err == nil || !strings.Contains(err.Error(), c.names) {
			t.Errorf("%+v: %v, want an error naming %s", c.cfg, err, c.names)
		}
	}
}
