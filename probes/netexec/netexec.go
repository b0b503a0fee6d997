// Package netexec serves the HTTP and UDP endpoints of agnhost's netexec that the
// upstream network e2e tests use (/hostname, /echo, /clientip, /dial, /healthz and
// their neighbours), with agnhost's texts and status codes. /shell and /upload are
// deliberately absent: they would let any peer that reaches the pod run commands or
// write files in it, and a policy tester must not turn a policy bug into that.
package netexec

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ishidawataru/sctp"
)

// Config selects ports and options, as agnhost netexec's flags do.
type Config struct {
	HTTPPort int
	// UDPPort -1 disables the UDP server; SCTPPort -1 (the default) the SCTP one.
	UDPPort, SCTPPort int
	// UDPListenAddresses limits the UDP server to these IPs (empty: all).
	UDPListenAddresses []string
	// HTTPOverride answers every request as a GET of this path and query.
	HTTPOverride string
	TLSCertFile  string
	TLSKeyFile   string
	Hostname     string
	Log          *log.Logger
}

// Validate reports a configuration agnhost would fail on, naming the flag.
func (c Config) Validate() error {
	if c.HTTPPort < 0 || c.HTTPPort > 65535 {
		return fmt.Errorf("--http-port=%d: must be 0-65535", c.HTTPPort)
	}
	if c.UDPPort < -1 || c.UDPPort > 65535 {
		return fmt.Errorf("--udp-port=%d: must be 0-65535, or -1 to disable", c.UDPPort)
	}
	if c.SCTPPort < -1 || c.SCTPPort > 65535 {
		return fmt.Errorf("--sctp-port=%d: must be 0-65535, or -1 to disable", c.SCTPPort)
	}
	for _, a := range c.UDPListenAddresses {
		if net.ParseIP(a) == nil {
			return fmt.Errorf("parseAddress: invalid address %s (--udp-listen-addresses takes comma-separated IPs)", a)
		}
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		return errors.New("--tls-cert-file and --tls-private-key-file must be given together")
	}
	return nil
}

// Server is a running netexec.
type Server struct {
	cfg      Config
	http     *http.Server
	hl       net.Listener
	udp      []*net.UDPConn
	sctp     *sctp.SCTPListener
	ready    atomic.Bool
	draining atomic.Bool
	// exits carries /exit and /shutdown requests to the owner (exit code, grace).
	exits chan Exit
	errs  chan error
	wg    sync.WaitGroup
	once  sync.Once
}

// Exit is a request, made over HTTP, to end the process.
type Exit struct {
	Code int
	// Grace is how long in-flight requests get; 0 means exit at once.
	Grace time.Duration
}

// Start listens on every configured port and serves until Close.
func Start(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Log == nil {
		cfg.Log = log.New(io.Discard, "", 0)
	}
	s := &Server{cfg: cfg, exits: make(chan Exit, 1), errs: make(chan error, 4)}
	var err error
	if s.hl, err = net.Listen("tcp", fmt.Sprintf(":%d", cfg.HTTPPort)); err != nil {
		return nil, fmt.Errorf("listen tcp :%d (--http-port): %w", cfg.HTTPPort, err)
	}
	if cfg.UDPPort != -1 {
		addrs := cfg.UDPListenAddresses
		if len(addrs) == 0 {
			addrs = []string{""}
		}
		for _, a := range addrs {
			ua, err := net.ResolveUDPAddr("udp", net.JoinHostPort(a, strconv.Itoa(cfg.UDPPort)))
			if err == nil {
				var c *net.UDPConn
				if c, err = net.ListenUDP("udp", ua); err == nil {
					s.udp = append(s.udp, c)
					continue
				}
			}
			s.Close()
			return nil, fmt.Errorf("Error occurred: failed to create listener for UDP address %s (--udp-port): %w", net.JoinHostPort(a, strconv.Itoa(cfg.UDPPort)), err)
		}
	}
	if cfg.SCTPPort != -1 {
		s.sctp, err = sctp.ListenSCTP("sctp", &sctp.SCTPAddr{Port: cfg.SCTPPort})
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("Error occurred: failed to create listener for SCTP port %d (--sctp-port): %w", cfg.SCTPPort, err)
		}
	}
	mux := http.NewServeMux()
	s.routes(mux)
	var h http.Handler = mux
	if cfg.HTTPOverride != "" {
		h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			o, err := http.NewRequestWithContext(r.Context(), "GET", cfg.HTTPOverride, nil)
			if err != nil {
				http.Error(w, fmt.Sprintf("override request failed: %v", err), http.StatusInternalServerError)
				return
			}
			o.RemoteAddr = r.RemoteAddr
			mux.ServeHTTP(w, o)
		})
	}
	s.http = &http.Server{Handler: h}
	s.run(func() error {
		var err error
		if cfg.TLSCertFile != "" {
			err = s.http.ServeTLS(s.hl, cfg.TLSCertFile, cfg.TLSKeyFile)
		} else {
			err = s.http.Serve(s.hl)
		}
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	})
	for _, c := range s.udp {
		s.run(func() error { return s.serveUDP(c) })
	}
	if s.sctp != nil {
		s.run(s.serveSCTP)
	}
	// agnhost is ready once a UDP or SCTP server runs; with neither it never is.
	s.ready.Store(len(s.udp) > 0 || s.sctp != nil)
	cfg.Log.Printf("Started HTTP server on port %d", cfg.HTTPPort)
	return s, nil
}

func (s *Server) run(fn func() error) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := fn(); err != nil {
			select {
			case s.errs <- err:
			default:
			}
		}
	}()
}

// HTTPAddr is the bound HTTP address; UDPAddrs the bound UDP ones.
func (s *Server) HTTPAddr() net.Addr { return s.hl.Addr() }
func (s *Server) UDPAddrs() []net.Addr {
	var out []net.Addr
	for _, c := range s.udp {
		out = append(out, c.LocalAddr())
	}
	return out
}

// Exits delivers /exit and /shutdown requests; Err a fatal serving error.
func (s *Server) Exits() <-chan Exit { return s.exits }
func (s *Server) Err() <-chan error  { return s.errs }

// Drain makes /readyz answer 503 (SIGTERM received) while /healthz stays 200.
func (s *Server) Drain() { s.draining.Store(true) }

// Shutdown stops the HTTP server gracefully within ctx, then closes the rest.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.http.Shutdown(ctx)
	s.Close()
	return err
}

// Close stops every listener and waits for the serving goroutines.
func (s *Server) Close() error {
	s.once.Do(func() {
		s.ready.Store(false)
		if s.http != nil {
			s.http.Close()
		} else if s.hl != nil {
			s.hl.Close()
		}
		for _, c := range s.udp {
			c.Close()
		}
		if s.sctp != nil {
			s.sctp.Close()
		}
	})
	s.wg.Wait()
	return nil
}

func (s *Server) routes(mux *http.ServeMux) {
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.cfg.Log.Printf("GET /")
		fmt.Fprintf(w, "NOW: %v", time.Now())
	})
	mux.HandleFunc("/clientip", func(w http.ResponseWriter, r *http.Request) {
		s.cfg.Log.Printf("GET /clientip")
		fmt.Fprint(w, r.RemoteAddr)
	})
	mux.HandleFunc("/serverport", func(w http.ResponseWriter, r *http.Request) {
		s.cfg.Log.Printf("GET /serverport")
		fmt.Fprint(w, s.cfg.HTTPPort)
	})
	mux.HandleFunc("/header", s.header)
	mux.HandleFunc("/dial", s.dial)
	mux.HandleFunc("/echo", s.echo)
	mux.HandleFunc("/exit", s.exit)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		s.cfg.Log.Printf("GET /healthz")
		if s.ready.Load() {
			w.WriteHeader(http.StatusOK)
			return
		}
		w.WriteHeader(http.StatusPreconditionFailed)
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		s.cfg.Log.Printf("GET /readyz")
		switch {
		case s.draining.Load():
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte("shutting down"))
		case s.ready.Load():
			w.Write([]byte("ok"))
		default:
			w.WriteHeader(http.StatusPreconditionFailed)
		}
	})
	hostname := func(w http.ResponseWriter, r *http.Request) {
		s.cfg.Log.Printf("GET %s", r.URL.Path)
		fmt.Fprint(w, s.cfg.Hostname)
	}
	mux.HandleFunc("/hostname", hostname)
	mux.HandleFunc("/hostName", hostname)
	mux.HandleFunc("/redirect", s.redirect)
	mux.HandleFunc("/shutdown", func(w http.ResponseWriter, r *http.Request) {
		s.cfg.Log.Printf("GET /shutdown")
		s.requestExit(Exit{Code: 0})
	})
	refuse := func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, r.URL.Path+" is not served by flatnet's probe: it would let any peer run commands or write files in this pod. Use kubectl exec.", http.StatusNotImplemented)
	}
	mux.HandleFunc("/shell", refuse)
	mux.HandleFunc("/upload", refuse)
}

func (s *Server) requestExit(e Exit) {
	select {
	case s.exits <- e:
	default: // one is already pending
	}
}

func (s *Server) header(w http.ResponseWriter, r *http.Request) {
	key := r.FormValue("key")
	if key != "" {
		s.cfg.Log.Printf("GET /header?key=%s", key)
		fmt.Fprintf(w, "%s", r.Header.Get(key))
		return
	}
	s.cfg.Log.Printf("GET /header")
	data, err := json.Marshal(r.Header)
	if err != nil {
		fmt.Fprintf(w, "error marshalling header, err: %v", err)
		return
	}
	w.Write(data)
}

func (s *Server) echo(w http.ResponseWriter, r *http.Request) {
	msg := r.FormValue("msg")
	codeString := r.FormValue("code")
	s.cfg.Log.Printf("GET /echo?msg=%s&code=%s", msg, codeString)
	if codeString != "" {
		code, err := strconv.Atoi(codeString)
		if err != nil {
			fmt.Fprintf(w, "argument 'code' must be an integer or empty, got %q\n", codeString)
			return
		}
		w.WriteHeader(code)
	}
	fmt.Fprintf(w, "%s", msg)
}

func (s *Server) exit(w http.ResponseWriter, r *http.Request) {
	waitString, timeoutString, codeString := r.FormValue("wait"), r.FormValue("timeout"), r.FormValue("code")
	s.cfg.Log.Printf("GET /exit?code=%s&timeout=%s&wait=%s", codeString, timeoutString, waitString)
	timeout, err := time.ParseDuration(timeoutString)
	if err != nil && timeoutString != "" {
		fmt.Fprintf(w, "argument 'timeout' must be a valid golang duration or empty, got %q\n", timeoutString)
		return
	}
	wait, err := time.ParseDuration(waitString)
	if err != nil && waitString != "" {
		fmt.Fprintf(w, "argument 'wait' must be a valid golang duration or empty, got %q\n", waitString)
		return
	}
	code, err := strconv.Atoi(codeString)
	if err != nil && codeString != "" {
		fmt.Fprintf(w, "argument 'code' must be an integer [0-127] or empty, got %q\n", codeString)
		return
	}
	s.cfg.Log.Printf("Will begin shutdown in %s, allowing %s for connections to close, then will exit with %d", wait, timeout, code)
	time.Sleep(wait)
	s.requestExit(Exit{Code: code, Grace: timeout})
}

func (s *Server) redirect(w http.ResponseWriter, r *http.Request) {
	location, codeString := r.FormValue("location"), r.FormValue("code")
	s.cfg.Log.Printf("%s /redirect?msg=%s&code=%s", r.Method, location, codeString)
	code := http.StatusFound
	if codeString != "" {
		var err error
		if code, err = strconv.Atoi(codeString); err != nil {
			fmt.Fprintf(w, "argument 'code' must be an integer or empty, got %q\n", codeString)
			return
		}
	}
	http.Redirect(w, r, location, code)
}

// dial makes `tries` requests from this pod to host:port and reports the
// responses and errors as JSON, with agnhost's status codes and texts.
func (s *Server) dial(w http.ResponseWriter, r *http.Request) {
	values, err := url.Parse(r.URL.RequestURI())
	if err != nil {
		http.Error(w, fmt.Sprintf("%v", err), http.StatusBadRequest)
		return
	}
	q := values.Query()
	host, port, request, protocol, tryParam := q.Get("host"), q.Get("port"), q.Get("request"), q.Get("protocol"), q.Get("tries")
	s.cfg.Log.Printf("GET /dial?host=%s&protocol=%s&port=%s&request=%s&tries=%s", host, protocol, port, request, tryParam)
	tries := 1
	if len(tryParam) > 0 {
		tries, err = strconv.Atoi(tryParam)
	}
	if err != nil {
		http.Error(w, fmt.Sprintf("tries parameter is invalid. %v", err), http.StatusBadRequest)
		return
	}
	if len(request) == 0 {
		http.Error(w, fmt.Sprintf("request parameter not specified. %v", err), http.StatusBadRequest)
		return
	}
	hostPort := net.JoinHostPort(host, port)
	var dialer func(string, net.Addr) (string, error)
	var addr net.Addr
	switch strings.ToLower(protocol) {
	case "", "http":
		dialer = dialHTTP
		addr, err = net.ResolveTCPAddr("tcp", hostPort)
	case "udp":
		dialer = dialUDP
		addr, err = net.ResolveUDPAddr("udp", hostPort)
	case "sctp":
		dialer = dialSCTP
		addr, err = sctp.ResolveSCTPAddr("sctp", hostPort)
	default:
		http.Error(w, fmt.Sprintf("unsupported protocol. %s", protocol), http.StatusBadRequest)
		return
	}
	if err != nil {
		http.Error(w, fmt.Sprintf("host and/or port param are invalid. %v", err), http.StatusBadRequest)
		return
	}
	errs, responses := []string{}, []string{}
	var response string
	for range tries {
		response, err = dialer(request, addr)
		if err != nil {
			errs = append(errs, err.Error())
		} else {
			responses = append(responses, response)
		}
	}
	// agnhost lists responses only when the last try answered, and always
	// answers 200: callers read the JSON.
	output := map[string][]string{}
	if len(response) > 0 {
		output["responses"] = responses
	}
	if len(errs) > 0 {
		output["errors"] = errs
	}
	data, err := json.Marshal(output)
	if err != nil {
		http.Error(w, fmt.Sprintf("response could not be serialized. %v", err), http.StatusExpectationFailed)
		return
	}
	w.Write(data)
}

func dialHTTP(request string, addr net.Addr) (string, error) {
	transport := &http.Transport{Proxy: http.ProxyFromEnvironment, TLSHandshakeTimeout: 10 * time.Second}
	defer transport.CloseIdleConnections()
	client := &http.Client{Transport: transport, Timeout: 5 * time.Second}
	resp, err := client.Get(fmt.Sprintf("http://%s/%s", addr.String(), request))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	return string(body), nil
}

func dialUDP(request string, addr net.Addr) (string, error) {
	conn, err := net.DialUDP("udp", nil, addr.(*net.UDPAddr))
	if err != nil {
		return "", fmt.Errorf("udp dial failed. err:%v", err)
	}
	return exchange(conn, "udp", request, 2048)
}

func dialSCTP(request string, addr net.Addr) (string, error) {
	conn, err := sctp.DialSCTP("sctp", nil, addr.(*sctp.SCTPAddr))
	if err != nil {
		return "", fmt.Errorf("sctp dial failed. err:%v", err)
	}
	return exchange(conn, "sctp", request, 1024)
}

// exchange sends request on conn and returns the one reply (at most size
// bytes, within 5s), closing conn; errors are worded as agnhost's are.
func exchange(conn net.Conn, proto, request string, size int) (string, error) {
	defer conn.Close()
	if _, err := conn.Write([]byte(request)); err != nil {
		return "", fmt.Errorf("%s connection write failed. err:%v", proto, err)
	}
	buf := make([]byte, size)
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := conn.Read(buf)
	if err != nil || n == 0 {
		return "", fmt.Errorf("reading from %s connection failed. err:'%v'", proto, err)
	}
	return string(buf[:n]), nil
}

// answer is the reply of the UDP and SCTP servers to one command, and whether to
// send one at all.
func (s *Server) answer(text string, client string, port int) (string, bool) {
	text = strings.ToLower(strings.TrimSpace(text))
	switch {
	case text == "hostname":
		return s.cfg.Hostname, true
	case strings.HasPrefix(text, "echo "):
		return strings.SplitN(text, " ", 2)[1], true
	case text == "clientip":
		return client, true
	case text == "serverport":
		return strconv.Itoa(port), true
	case text != "":
		s.cfg.Log.Printf("Unknown command received from %s: %v", client, text)
	}
	return "", false
}

func (s *Server) serveUDP(c *net.UDPConn) error {
	buf := make([]byte, 2048)
	for {
		n, from, err := c.ReadFromUDP(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("Error occurred: failed accepting UDP connections:%w", err)
		}
		if reply, ok := s.answer(string(buf[:n]), from.String(), s.cfg.UDPPort); ok {
			if _, err := c.WriteToUDP([]byte(reply), from); err != nil {
				s.cfg.Log.Printf("failed to answer UDP client %s: %v", from, err)
			}
		}
	}
}

func (s *Server) serveSCTP() error {
	buf := make([]byte, 1024)
	for {
		conn, err := s.sctp.AcceptSCTP()
		if err != nil {
			return nil // closed
		}
		client := "unknown"
		if ra, err := conn.SCTPRemoteAddr(0); err == nil {
			client = ra.String()
		}
		if n, err := conn.Read(buf); err == nil {
			if reply, ok := s.answer(string(buf[:n]), client, s.cfg.SCTPPort); ok {
				conn.Write([]byte(reply))
			}
		}
		conn.Close()
	}
}
