package flows

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// follow opens GET /v1/flows?follow=true and returns the response once its
// headers (and the history) arrived.
func follow(t *testing.T, ctx context.Context, base string) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, "GET", base+FlowsPath+"?follow=true", nil)
	must(t, err)
	resp, err := http.DefaultClient.Do(req)
	must(t, err)
	return resp
}

// TestFollowersAreCapped: every follow stream holds a subscription and a
// goroutine; beyond the cap a client gets a clear 429, and a freed slot is
// taken again.
func TestFollowersAreCapped(t *testing.T) {
	srv := httptest.NewServer(Handler(NewStore(8)))
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var open []context.CancelFunc
	const tries = 200
	refused := -1
	for i := 0; i < tries; i++ {
		cctx, ccancel := context.WithCancel(ctx)
		resp := follow(t, cctx, srv.URL)
		if resp.StatusCode == http.StatusOK {
			open = append(open, ccancel)
			continue
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		ccancel()
		if resp.StatusCode != http.StatusTooManyRequests || !strings.Contains(string(body), "followers") {
			t.Fatalf("follower %d: %d %q; want 200 or 429 naming the follower limit", i+1, resp.StatusCode, body)
		}
		refused = i
		break
	}
	if refused < 0 {
		t.Fatalf("%d concurrent followers all accepted: want a 429 beyond a bounded number", tries)
	}
	t.Logf("%d followers accepted, the next refused", refused)
	// Closing one frees its slot (the server notices the client went away).
	open[0]()
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp := follow(t, ctx, srv.URL)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a closed follower's slot was never freed: still %d", resp.StatusCode)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, c := range open[1:] {
		c()
	}
}

// TestStalledFollowerIsDropped: a follower that sends its request and never
// reads must not keep its subscription, goroutine and slot: the write deadline
// ends it while the flows keep coming, and the slot is taken again.
func TestStalledFollowerIsDropped(t *testing.T) {
	store := NewStore(64)
	srv := httptest.NewServer(NewHandler(store, Limits{MaxFollowers: 1, WriteTimeout: 300 * time.Millisecond}))
	defer srv.Close()
	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	must(t, err)
	defer conn.Close()
	must(t, conn.(*net.TCPConn).SetReadBuffer(4096))
	_, err = fmt.Fprintf(conn, "GET %s?follow=true HTTP/1.1\r\nHost: agent\r\n\r\n", FlowsPath)
	must(t, err)
	subs := func() int {
		store.mu.Lock()
		defer store.mu.Unlock()
		return len(store.subs)
	}
	deadline := time.Now().Add(5 * time.Second)
	for subs() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the stalled follower never subscribed")
		}
		time.Sleep(10 * time.Millisecond)
	}
	stopFlood := make(chan struct{})
	flooded := make(chan int)
	go func() {
		n := 0
		pad := strings.Repeat("x", 2000) // fills the socket buffers sooner
		for {
			select {
			case <-stopFlood:
				flooded <- n
				return
			default:
			}
			store.Add(resp(VerdictForwarded, Ingress, "a", pad, "b", "q", nil, "TCP", uint16(n), 80, time.Now()))
			n++
		}
	}()
	deadline = time.Now().Add(20 * time.Second)
	for subs() != 0 {
		if time.Now().After(deadline) {
			close(stopFlood)
			t.Fatalf("a follower that reads nothing still holds its subscription after %d flows", <-flooded)
		}
		time.Sleep(20 * time.Millisecond)
	}
	close(stopFlood)
	t.Logf("stalled follower dropped after %d flows", <-flooded)
	resp := follow(t, context.Background(), srv.URL)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("the stalled follower's slot is still taken: %d", resp.StatusCode)
	}
}
