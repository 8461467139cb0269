// Package proxy is tlsproxy's server: it accepts mutual-TLS client
// connections, reads RESP commands and forwards them, as the bytes the client
// sent, over pooled connections to Redis.
package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"github.com/tlsproxy/tlsproxy/proxy/config"
	"github.com/tlsproxy/tlsproxy/proxy/tlsconf"
	"github.com/tlsproxy/tlsproxy/proxy/upstream"
)

// Server is a running proxy. Build it with New.
type Server struct {
	cfg config.Config
	log zerolog.Logger
	// The material a reload swaps: new handshakes take what is current.
	serverTLS atomic.Pointer[tls.Config]
	adminTLS  atomic.Pointer[tls.Config] // nil: the admin endpoint speaks plain HTTP
	certs     atomic.Pointer[[]certInfo]
	limits    atomic.Pointer[config.Limits]
	tlsPolicy atomic.Pointer[config.TLS]
	// Expiry monitoring (expiry.go).
	upstreamCert atomic.Pointer[certInfo] // the certificate Redis presented last
	clientCerts  *clientCerts
	loadedAt     atomic.Pointer[time.Time] // when the material in use was loaded
	reloadMu     sync.Mutex                // one reload at a time
	target       config.Target
	pool         *upstream.Pool // as the configured upstream user
	users        sync.Map       // user name -> *upstream.Pool, made for clients' AUTH
	ids          sync.Map       // session id -> *session (see sessionIDBase)
	lastID       atomic.Int64
	defaultDB    int
	rejects      *rejectLog
	stats        *stats
	health       upstreamHealth
	version      string
	started      time.Time

	listening  atomic.Bool
	listenAddr atomic.Pointer[string]
	draining   atomic.Bool
	drained    chan struct{} // closed when the drain begins
	listenOK   chan struct{} // closed when Serve accepts connections

	mu       sync.Mutex
	conns    map[*clientConn]struct{}
	closed   bool
	sessions sync.WaitGroup
}

// New builds a server from cfg (see Resolve) and prepares the upstream
// pool. It opens no connection yet.
func New(cfg config.Config, log zerolog.Logger) (*Server, error) {
	st, err := Resolve(cfg)
	if err != nil {
		return nil, err
	}
	return newServer(st, log), nil
}

func newServer(set *Settings, log zerolog.Logger) *Server {
	cfg := set.cfg
	switch cfg.Listen.TLS.ClientAuth {
	case "none":
		log.Warn().Str("key", "listen.tls.client_auth").Str("value", "none").
			Msg("WARNING: client certificates are not required: any client that can reach the port can use Redis")
	case "verify-if-given":
		log.Warn().Str("key", "listen.tls.client_auth").Str("value", "verify-if-given").
			Msg("WARNING: client certificates are not required: any client that can reach the port can use Redis (a certificate is verified only when a client sends one)")
	}
	warnOpenSecrets(cfg, log)
	st := newStats()
	s := &Server{
		cfg:       cfg,
		log:       log,
		target:    set.target,
		defaultDB: set.target.DB,
		rejects:   newRejectLog(log),
		stats:     st,
		version:   "dev",
		started:   time.Now(),
		drained:   make(chan struct{}),
		listenOK:  make(chan struct{}),
		conns:     make(map[*clientConn]struct{}),
	}
	opts := set.upstream
	opts.Hooks = st.hooks()
	opts.Hooks.PeerCertificate = s.noteUpstreamCert
	p := cfg.Upstream.Pool
	limits := upstream.Limits{MaxShared: p.MaxSize, MinIdle: p.MinIdle, MaxIdle: p.MaxIdle, MaxPinned: p.MaxPinned}
	s.pool = upstream.NewPool(opts, limits, log.With().Str("component", "upstream").Logger())
	s.adminTLS.Store(set.admin)
	s.clientCerts = newClientCerts()
	s.swap(set)
	return s
}

// Listening is closed once the proxy accepts client connections.
func (s *Server) Listening() <-chan struct{} { return s.listenOK }

// SetVersion sets the version /status, the status page and
// tlsproxy_build_info report.
func (s *Server) SetVersion(v string) { s.version = v }

// ListenAndServe listens on listen.address (and admin.address, unless
// empty) and serves until ctx is done; see Serve.
func (s *Server) ListenAndServe(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.cfg.Listen.Address)
	if err != nil {
		return fmt.Errorf("listen.address: %w", err)
	}
	if a := s.cfg.Admin.Address; a != "" {
		aln, err := net.Listen("tcp", a)
		if err != nil {
			ln.Close()
			return fmt.Errorf("admin.address: %w", err)
		}
		if !isLoopbackAddr(aln.Addr()) {
			s.log.Warn().Str("address", a).Bool("tls", s.adminTLS.Load() != nil).Bool("client_certificates", s.cfg.Admin.TLS.ClientCAFile != "").
				Msg("WARNING: the admin endpoint listens beyond loopback: protect it (admin.tls, a firewall)")
		}
		// The admin endpoint stays up through the drain (readyz says so)
		// and stops with the proxy.
		actx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go func() {
			if err := s.ServeAdmin(actx, aln); err != nil {
				s.log.Error().Err(err).Msg("admin endpoint stopped")
			}
		}()
	}
	return s.Serve(ctx, ln)
}

func isLoopbackAddr(a net.Addr) bool {
	ta, ok := a.(*net.TCPAddr)
	return ok && ta.IP.IsLoopback()
}

// Serve accepts connections on ln (a plain TCP listener: the proxy does the
// TLS) until ctx is done, then drains (see drain) and returns nil.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	s.log.Info().Str("address", ln.Addr().String()).Str("client_auth", s.cfg.Listen.TLS.ClientAuth).
		Str("min_tls", s.cfg.Listen.TLS.MinVersion).Msg("listening")
	addr := ln.Addr().String()
	s.listenAddr.Store(&addr)
	s.listening.Store(true)
	close(s.listenOK)
	s.logExpiry(time.Now(), s.allCerts())
	go s.checkExpiryDaily(ctx.Done())
	s.pool.Start()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var delay time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				s.listening.Store(false)
				s.drain()
				return nil
			}
			// Out of file descriptors and the like: back off, keep serving.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.log.Error().Err(err).Dur("retry_in", delay).Msg("accept failed")
			time.Sleep(delay)
			continue
		}
		delay = 0
		cc := &clientConn{Conn: nc}
		full, ok := s.track(cc)
		if !ok {
			nc.Close()
			continue
		}
		s.sessions.Add(1)
		go s.handshake(ctx, cc, full)
	}
}

// handshake runs the TLS handshake in the connection's own goroutine, under
// listen.handshake_timeout, so a slow or silent client delays nobody else.
// A client beyond limits.max_clients gets Redis's error and is closed.
func (s *Server) handshake(ctx context.Context, cc *clientConn, full bool) {
	start := time.Now()
	tc := tls.Server(cc, s.serverTLS.Load())
	hctx, cancel := context.WithTimeout(ctx, s.cfg.Listen.HandshakeTimeout)
	err := tc.HandshakeContext(hctx)
	cancel()
	if err != nil {
		s.rejects.reject(cc.RemoteAddr().String(), err, cc.in.Load() == 0)
		s.closeConn(cc)
		return
	}
	s.stats.handshake.Observe(time.Since(start).Seconds())
	if full {
		s.refuseFull(tc)
		s.closeConn(cc)
		return
	}
	cs := tc.ConnectionState()
	id := tlsconf.IdentityFromState(cs)
	if !id.IsZero() {
		name := id.CommonName
		if name == "" {
			name = id.String()
		}
		s.noteClientCert(name, cs.PeerCertificates)
	}
	// The handshake grew this goroutine's stack; the session, idle for most
	// of its life, starts on a new, small one.
	go func() {
		defer s.closeConn(cc)
		newSession(s, tc, id).serve()
	}()
}

// refuseFull answers a client beyond limits.max_clients as Redis does.
func (s *Server) refuseFull(tc *tls.Conn) {
	if n := s.stats.disconnects[byMaxClients].Add(1); n&(n-1) == 0 { // the 1st, 2nd, 4th, ...
		s.log.Warn().Int("max_clients", s.limits.Load().MaxClients).Uint64("refused", n).Msg("client refused: limits.max_clients reached")
	}
	tc.SetWriteDeadline(time.Now().Add(time.Second))
	tc.Write([]byte("-ERR max number of clients reached\r\n"))
}

func (s *Server) closeConn(cc *clientConn) {
	cc.Close()
	s.untrack(cc)
	s.sessions.Done()
}

// track registers a new connection; full reports that it is beyond
// limits.max_clients, ok that the server still takes connections.
func (s *Server) track(cc *clientConn) (full, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false, false
	}
	full = len(s.conns) >= s.limits.Load().MaxClients
	s.conns[cc] = struct{}{}
	return full, true
}

func (s *Server) untrack(cc *clientConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.conns, cc)
	s.stats.bytesIn.Add(cc.in.Load())
	s.stats.bytesOut.Add(cc.out.Load())
}

// drain ends the server: no new connection is taken (the listener is
// closed); every session finishes the commands it has read, its replies
// reach the client, and it ends; clients blocked in a command are
// unblocked (they get Redis's UNBLOCKED error); subscribers and MONITOR are
// closed. What is left after shutdown_timeout is closed. Then the upstream
// pools close.
func (s *Server) drain() {
	s.draining.Store(true)
	s.mu.Lock()
	s.closed = true
	n := len(s.conns)
	s.mu.Unlock()
	close(s.drained)
	s.log.Info().Int("clients", n).Dur("shutdown_timeout", s.cfg.ShutdownTimeout).Msg("draining")
	s.ids.Range(func(_, v any) bool {
		v.(*session).wake()
		return true
	})
	done := make(chan struct{})
	go func() { s.sessions.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(s.cfg.ShutdownTimeout):
		s.mu.Lock()
		left := len(s.conns)
		for cc := range s.conns {
			cc.Close()
		}
		s.mu.Unlock()
		s.ids.Range(func(_, v any) bool {
			if d := v.(*session).dedAt.Load(); d != nil {
				d.Kill() // a session waiting for Redis stops waiting
			}
			return true
		})
		s.log.Warn().Int("clients", left).Dur("shutdown_timeout", s.cfg.ShutdownTimeout).Msg("shutdown_timeout reached; closing the clients left")
		<-done
	}
	s.pool.Close()
	s.users.Range(func(_, v any) bool {
		v.(*upstream.Pool).Close()
		return true
	})
	s.log.Info().Msg("stopped")
}
