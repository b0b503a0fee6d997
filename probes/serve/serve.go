// Package serve answers with the hostname over raw TCP, UDP or HTTP, as agnhost's
// serve-hostname does: the server end of every connectivity probe.
package serve

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"strconv"
	"sync"
)

// Config selects what the server answers on.
type Config struct {
	TCP, UDP, HTTP bool
	// Close asks HTTP clients to close the connection after each request.
	Close    bool
	Port     int
	Hostname string
	// Log receives one line per request, like agnhost's log output.
	Log *log.Logger
}

// Validate reports a configuration agnhost refuses.
func (c Config) Validate() error {
	if c.HTTP && (c.TCP || c.UDP) {
		// agnhost's wording, typo included, so logs grep the same.
		return errors.New("Can't server TCP/UDP mode and HTTP mode at the same time")
	}
	if c.Port < 0 || c.Port > 65535 {
		return fmt.Errorf("port %d out of range: --port must be 0-65535", c.Port)
	}
	return nil
}

// Server is a running serve-hostname server.
type Server struct {
	cfg  Config
	tcp  net.Listener
	udp  net.PacketConn
	http *http.Server
	hl   net.Listener
	errs chan error
	wg   sync.WaitGroup
	once sync.Once
	done chan struct{}
}

// Start listens on every selected transport and serves until Close. Listening
// errors are returned; errors while serving arrive on Err.
func Start(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Log == nil {
		cfg.Log = log.New(discard{}, "", 0)
	}
	s := &Server{cfg: cfg, errs: make(chan error, 3), done: make(chan struct{})}
	addr := ":" + strconv.Itoa(cfg.Port)
	var err error
	if cfg.TCP {
		if s.tcp, err = net.Listen("tcp", addr); err != nil {
			return nil, fmt.Errorf("Error from net.Listen(): %w", err)
		}
		s.run(s.serveTCP)
	}
	if cfg.UDP {
		if s.udp, err = net.ListenPacket("udp", addr); err != nil {
			s.Close()
			return nil, fmt.Errorf("Error from ListenUDP(): %w", err)
		}
		s.run(s.serveUDP)
	}
	if cfg.HTTP {
		if s.hl, err = net.Listen("tcp", addr); err != nil {
			s.Close()
			return nil, fmt.Errorf("listen http %s: %w", addr, err)
		}
		s.http = &http.Server{Handler: http.HandlerFunc(s.serveHTTP)}
		s.run(func() error {
			if err := s.http.Serve(s.hl); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
	}
	return s, nil
}

func (s *Server) run(fn func() error) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := fn(); err != nil {
			select {
			case <-s.done:
			default:
				s.errs <- err
			}
		}
	}()
}

// TCPAddr, UDPAddr and HTTPAddr return the bound addresses (nil when not serving).
func (s *Server) TCPAddr() net.Addr  { return addrOf(s.tcp) }
func (s *Server) HTTPAddr() net.Addr { return addrOf(s.hl) }
func (s *Server) UDPAddr() net.Addr {
	if s.udp == nil {
		return nil
	}
	return s.udp.LocalAddr()
}

func addrOf(l net.Listener) net.Addr {
	if l == nil {
		return nil
	}
	return l.Addr()
}

// Err delivers a fatal serving error (agnhost exits on these).
func (s *Server) Err() <-chan error { return s.errs }

// Close stops every listener and waits for the serving goroutines.
func (s *Server) Close() error {
	s.once.Do(func() {
		close(s.done)
		if s.tcp != nil {
			s.tcp.Close()
		}
		if s.udp != nil {
			s.udp.Close()
		}
		if s.http != nil {
			s.http.Shutdown(context.Background())
		} else if s.hl != nil {
			s.hl.Close()
		}
	})
	s.wg.Wait()
	return nil
}

func (s *Server) serveTCP() error {
	for {
		conn, err := s.tcp.Accept()
		if err != nil {
			return fmt.Errorf("Error from Accept(): %w", err)
		}
		s.cfg.Log.Printf("TCP request from %s", conn.RemoteAddr())
		conn.Write([]byte(s.cfg.Hostname))
		conn.Close()
	}
}

func (s *Server) serveUDP() error {
	// agnhost reads into 16 bytes and answers any datagram with the hostname.
	var buf [16]byte
	for {
		_, from, err := s.udp.ReadFrom(buf[:])
		if err != nil {
			return fmt.Errorf("Error from ReadFrom(): %w", err)
		}
		s.cfg.Log.Printf("UDP request from %s", from)
		s.udp.WriteTo([]byte(s.cfg.Hostname), from)
	}
}

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	s.cfg.Log.Printf("HTTP request from %s", r.RemoteAddr)
	if s.cfg.Close {
		w.Header().Add("Connection", "close")
	}
	fmt.Fprint(w, s.cfg.Hostname)
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
