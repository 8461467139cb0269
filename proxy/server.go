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
	cfg       config.Config
	log       zerolog.Logger
	tlsConfig *tls.Config
	pool      *upstream.Pool // as the configured upstream user
	users     sync.Map       // user name -> *upstream.Pool, made for clients' AUTH
	ids       sync.Map       // session id -> *session (see sessionIDBase)
	lastID    atomic.Int64
	defaultDB int
	rejects   *rejectLog

	mu       sync.Mutex
	conns    map[net.Conn]struct{}
	closed   bool
	sessions sync.WaitGroup
}

// New checks the configuration, loads the certificates and prepares the
// upstream pool. It opens no connection yet.
func New(cfg config.Config, log zerolog.Logger) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	tc, err := tlsconf.ServerConfig(cfg.Listen.TLS)
	if err != nil {
		return nil, err
	}
	switch cfg.Listen.TLS.ClientAuth {
	case "none":
		log.Warn().Str("key", "listen.tls.client_auth").Str("value", "none").
			Msg("WARNING: client certificates are not required: any client that can reach the port can use Redis")
	case "verify-if-given":
		log.Warn().Str("key", "listen.tls.client_auth").Str("value", "verify-if-given").
			Msg("WARNING: client certificates are not required: any client that can reach the port can use Redis (a certificate is verified only when a client sends one)")
	}
	target, err := cfg.Upstream.Target()
	if err != nil {
		return nil, err
	}
	opts := upstream.Options{
		Network:      target.Network,
		Address:      target.Address,
		Username:     target.Username,
		Password:     target.Password,
		DB:           target.DB,
		DialTimeout:  cfg.Upstream.DialTimeout,
		ReadTimeout:  cfg.Upstream.ReadTimeout,
		WriteTimeout: cfg.Upstream.WriteTimeout,
	}
	if target.TLS {
		host, _, _ := net.SplitHostPort(target.Address)
		if opts.TLS, err = tlsconf.ClientConfig(cfg.Upstream.TLS, host); err != nil {
			return nil, err
		}
	}
	p := cfg.Upstream.Pool
	limits := upstream.Limits{MaxShared: p.MaxSize, MinIdle: p.MinIdle, MaxIdle: p.MaxIdle, MaxPinned: p.MaxPinned}
	return &Server{
		cfg:       cfg,
		log:       log,
		tlsConfig: tc,
		pool:      upstream.NewPool(opts, limits, log.With().Str("component", "upstream").Logger()),
		defaultDB: target.DB,
		rejects:   newRejectLog(log),
		conns:     make(map[net.Conn]struct{}),
	}, nil
}

// ListenAndServe listens on listen.address and serves until ctx is done.
func (s *Server) ListenAndServe(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.cfg.Listen.Address)
	if err != nil {
		return fmt.Errorf("listen.address: %w", err)
	}
	return s.Serve(ctx, ln)
}

// Serve accepts connections on ln (a plain TCP listener: the proxy does the
// TLS) until ctx is done, then closes every connection and returns nil.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	s.log.Info().Str("address", ln.Addr().String()).Str("client_auth", s.cfg.Listen.TLS.ClientAuth).
		Str("min_tls", s.cfg.Listen.TLS.MinVersion).Msg("listening")
	s.pool.Start()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var delay time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				s.shutdown()
				return nil
			}
			// Out of file descriptors and the like: back off, keep serving.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.log.Error().Err(err).Dur("retry_in", delay).Msg("accept failed")
			time.Sleep(delay)
			continue
		}
		delay = 0
		if !s.track(nc) {
			nc.Close()
			continue
		}
		s.sessions.Add(1)
		go s.handshake(ctx, nc)
	}
}

// handshake runs the TLS handshake in the connection's own goroutine, under
// listen.handshake_timeout, so a slow or silent client delays nobody else.
func (s *Server) handshake(ctx context.Context, nc net.Conn) {
	tc := tls.Server(nc, s.tlsConfig)
	hctx, cancel := context.WithTimeout(ctx, s.cfg.Listen.HandshakeTimeout)
	err := tc.HandshakeContext(hctx)
	cancel()
	if err != nil {
		s.rejects.reject(nc.RemoteAddr().String(), err)
		s.closeConn(nc)
		return
	}
	id := tlsconf.IdentityFromState(tc.ConnectionState())
	// The handshake grew this goroutine's stack; the session, idle for most
	// of its life, starts on a new, small one.
	go func() {
		defer s.closeConn(nc)
		newSession(s, tc, id).serve()
	}()
}

func (s *Server) closeConn(nc net.Conn) {
	nc.Close()
	s.untrack(nc)
	s.sessions.Done()
}

func (s *Server) track(nc net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[nc] = struct{}{}
	return true
}

func (s *Server) untrack(nc net.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.conns, nc)
}

// shutdown closes every client connection, waits for the sessions to end
// and closes the upstream pools.
func (s *Server) shutdown() {
	s.mu.Lock()
	s.closed = true
	for nc := range s.conns {
		nc.Close()
	}
	s.mu.Unlock()
	s.sessions.Wait()
	s.pool.Close()
	s.users.Range(func(_, v any) bool {
		v.(*upstream.Pool).Close()
		return true
	})
	s.log.Info().Msg("stopped")
}
