package perf

import (
	"context"
	"net"
	"testing"
	"time"
)

// Connections the client closes first stay in TIME_WAIT on its side: the count
// read from /proc/net/sockstat must see them, and the wait must give up at its
// bound while they are there.
func TestTimeWaitSocketsCounted(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { b := make([]byte, 1); c.Read(b); c.Close() }()
		}
	}()
	before, err := timeWaitSockets()
	if err != nil {
		t.Fatal(err)
	}
	const n = 50
	for i := 0; i < n; i++ {
		c, err := net.Dial("tcp4", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.Close() // client first: the client's side goes to TIME_WAIT
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		after, err := timeWaitSockets()
		if err != nil {
			t.Fatal(err)
		}
		if after >= before+n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("TIME_WAIT sockets %d -> %d after %d client-closed connections", before, after, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
	ports, err := ephemeralPorts()
	if err != nil || ports < 1 {
		t.Fatalf("ephemeral port range: %d, %v", ports, err)
	}
	if waited, err := drainTimeWait(context.Background(), 0); err != nil || waited > time.Second {
		t.Fatalf("drainTimeWait with no time to wait: waited %s, %v", waited, err)
	}
}
