package perf

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// headerTimeout bounds how long a new connection may take to say what it is.
const headerTimeout = 10 * time.Second

// Stats counts what a server has answered.
type Stats struct {
	Connections, Transactions, StreamBytes, Refused int64
}

// Server answers perf clients over TCP and UDP. The zero value is ready to use.
type Server struct {
	// Log, when set, gets one line per refused connection or datagram.
	Log                                             *log.Logger
	connections, transactions, streamBytes, refused atomic.Int64
}

// Listen opens the TCP listener and the UDP socket of port on every address.
func Listen(port int) (net.Listener, net.PacketConn, error) {
	addr := fmt.Sprintf(":%d", port)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("listening on TCP %s: %w", addr, err)
	}
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		ln.Close()
		return nil, nil, fmt.Errorf("listening on UDP %s: %w", addr, err)
	}
	return ln, pc, nil
}

// Stats returns the counts so far.
func (s *Server) Stats() Stats {
	return Stats{
		Connections:  s.connections.Load(),
		Transactions: s.transactions.Load(),
		StreamBytes:  s.streamBytes.Load(),
		Refused:      s.refused.Load(),
	}
}

// Serve answers on ln and pc until ctx ends (then it closes both and returns nil)
// or one of them fails.
func (s *Server) Serve(ctx context.Context, ln net.Listener, pc net.PacketConn) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		<-ctx.Done()
		ln.Close()
		pc.Close()
	}()
	errs := make(chan error, 2)
	var conns sync.WaitGroup
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				errs <- fmt.Errorf("accepting TCP connections: %w", err)
				return
			}
			s.connections.Add(1)
			conns.Go(func() { s.serveConn(ctx, c) })
		}
	}()
	go func() { errs <- s.serveUDP(pc) }()
	err := <-errs
	if ctx.Err() != nil {
		err = nil
	}
	cancel()
	conns.Wait()
	return err
}

func (s *Server) refuse(what string, peer net.Addr, err error) {
	s.refused.Add(1)
	if s.Log != nil {
		s.Log.Printf("refused %s from %s: %v", what, peer, err)
	}
}

func (s *Server) serveConn(ctx context.Context, c net.Conn) {
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	hb := make([]byte, tcpHeaderLen)
	c.SetReadDeadline(time.Now().Add(headerTimeout))
	if _, err := io.ReadFull(c, hb); err != nil {
		s.refuse("connection", c.RemoteAddr(), fmt.Errorf("reading the header: %w", err))
		return
	}
	h, err := parseTCPHeader(hb)
	if err != nil {
		s.refuse("connection", c.RemoteAddr(), err)
		return
	}
	c.SetReadDeadline(time.Time{})
	if h.test == TCPStream {
		n, _ := io.Copy(io.Discard, c)
		s.streamBytes.Add(n)
		// The count tells the client how much arrived before its half-close.
		c.Write(binary.BigEndian.AppendUint64(nil, uint64(n)))
		return
	}
	req, resp := make([]byte, h.requestSize), make([]byte, h.responseSize)
	for {
		if _, err := io.ReadFull(c, req); err != nil {
			if !errors.Is(err, io.EOF) && ctx.Err() == nil {
				s.refuse("request", c.RemoteAddr(), err)
			}
			return
		}
		if _, err := c.Write(resp); err != nil {
			return
		}
		s.transactions.Add(1)
	}
}

func (s *Server) serveUDP(pc net.PacketConn) error {
	buf := make([]byte, maxUDPSize+udpHeaderLen)
	answer := make([]byte, maxUDPSize)
	for {
		n, peer, err := pc.ReadFrom(buf)
		if err != nil {
			return fmt.Errorf("reading UDP requests: %w", err)
		}
		seq, size, err := parseUDPRequest(buf[:n])
		if err != nil {
			s.refuse("datagram", peer, err)
			continue
		}
		size = max(size, udpAnswerLen)
		binary.BigEndian.PutUint32(answer, seq)
		if _, err := pc.WriteTo(answer[:size], peer); err == nil {
			s.transactions.Add(1)
		}
	}
}
