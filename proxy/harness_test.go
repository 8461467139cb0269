package proxy

import (
	"context"
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	"github.com/tlsproxy/tlsproxy/internal/syncbuf"
	"github.com/tlsproxy/tlsproxy/internal/testredis"
	"github.com/tlsproxy/tlsproxy/proxy/config"
	"github.com/tlsproxy/tlsproxy/proxy/tlsconf"
)

// pki is a CA with a server certificate for the proxy (written to files, as
// the config wants them) and a client certificate, all generated per test.
type pki struct {
	ca                  *tlsconf.CA
	caFile              string
	certFile, keyFile   string // server certificate for 127.0.0.1, ::1, localhost
	client              tls.Certificate
	clientCertFile      string
	clientKeyFile       string
	redisCert, redisKey string
}

func newPKI(t testing.TB) *pki {
	t.Helper()
	dir := t.TempDir()
	ca, err := tlsconf.NewCA("tlsproxy test CA")
	if err != nil {
		t.Fatal(err)
	}
	p := &pki{ca: ca, caFile: filepath.Join(dir, "ca.crt")}
	writeFile(t, p.caFile, ca.CertPEM)
	server, err := ca.Issue(tlsconf.LeafOptions{
		CommonName: "localhost", DNSNames: []string{"localhost"},
		IPs: []net.IP{net.ParseIP("127.0.0.1"), net.IPv6loopback}, Server: true, Client: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	p.certFile, p.keyFile = filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")
	writeFile(t, p.certFile, server.CertPEM)
	writeFile(t, p.keyFile, server.KeyPEM)
	p.redisCert, p.redisKey = p.certFile, p.keyFile
	client := p.issueClient(t, tlsconf.LeafOptions{CommonName: "app1", OrganizationalUnit: []string{"backend"}})
	p.client = client
	leaf, err := ca.Issue(tlsconf.LeafOptions{CommonName: "app1-files", Client: true})
	if err != nil {
		t.Fatal(err)
	}
	p.clientCertFile, p.clientKeyFile = filepath.Join(dir, "client.crt"), filepath.Join(dir, "client.key")
	writeFile(t, p.clientCertFile, leaf.CertPEM)
	writeFile(t, p.clientKeyFile, leaf.KeyPEM)
	return p
}

func (p *pki) issueClient(t testing.TB, o tlsconf.LeafOptions) tls.Certificate {
	t.Helper()
	o.Client = true
	leaf, err := p.ca.Issue(o)
	if err != nil {
		t.Fatal(err)
	}
	c, err := leaf.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// clientTLS is what a well-behaved client presents.
func (p *pki) clientTLS() *tls.Config {
	return &tls.Config{RootCAs: p.ca.Pool(), Certificates: []tls.Certificate{p.client}, ServerName: "127.0.0.1"}
}

func writeFile(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// proxyEnv is a running proxy in front of a real redis-server.
type proxyEnv struct {
	pki   *pki
	addr  string
	admin string // the admin endpoint's host:port (plain HTTP)
	logs  *syncbuf.Buffer
	srv   *Server
	redis *testredis.Server
}

// startProxy starts a proxy for upstreamURL on a free loopback port; edit
// may change the configuration first. The proxy stops when the test ends.
func startProxy(t testing.TB, p *pki, upstreamURL string, edit func(*config.Config)) *proxyEnv {
	t.Helper()
	e, stop, done, err := serveProxy(t, p, upstreamURL, edit)
	if err != nil {
		t.Fatalf("proxy.New: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() && os.Getenv("PROXY_TEST_LOG") != "" {
			t.Logf("proxy log:\n%s", e.logs.String())
		}
		stop()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("proxy did not stop within 10s")
		}
	})
	return e
}

// serveProxy starts a proxy like startProxy, but returns proxy.New's error
// instead of failing, and hands the test the stop function (what SIGTERM
// does in cmd/tlsproxy: cancel Serve's context) and a channel that receives
// Serve's result.
func serveProxy(t testing.TB, p *pki, upstreamURL string, edit func(*config.Config)) (e *proxyEnv, stop context.CancelFunc, done <-chan error, err error) {
	t.Helper()
	cfg := config.Default()
	cfg.Listen.Address = "127.0.0.1:0"
	cfg.Listen.TLS.CertFile = p.certFile
	cfg.Listen.TLS.KeyFile = p.keyFile
	cfg.Listen.TLS.ClientCAFile = p.caFile
	cfg.Upstream.URL = upstreamURL
	cfg.Upstream.ReadTimeout = 5 * time.Second
	if edit != nil {
		edit(&cfg)
	}
	logs := &syncbuf.Buffer{}
	log := zerolog.New(logs).Level(zerolog.DebugLevel).With().Timestamp().Logger()
	srv, err := New(cfg, log)
	if err != nil {
		return nil, nil, nil, err
	}
	ln, err := net.Listen("tcp", cfg.Listen.Address)
	if err != nil {
		t.Fatal(err)
	}
	aln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	actx, acancel := context.WithCancel(context.Background())
	ch := make(chan error, 1)
	go func() { ch <- srv.Serve(ctx, ln) }()
	go srv.ServeAdmin(actx, aln)
	t.Cleanup(cancel)
	t.Cleanup(acancel)
	return &proxyEnv{pki: p, addr: ln.Addr().String(), admin: aln.Addr().String(), logs: logs, srv: srv}, cancel, ch, nil
}

// startPlain starts a plain TCP Redis and a proxy in front of it.
func startPlain(t testing.TB, edit func(*config.Config)) *proxyEnv {
	t.Helper()
	rs := testredis.Start(t, testredis.Options{})
	e := startProxy(t, newPKI(t), "redis://"+rs.Addr, edit)
	e.redis = rs
	return e
}

// client returns a go-redis client connected through the proxy with the
// test's client certificate, speaking protocol proto (2 or 3).
func (e *proxyEnv) client(t testing.TB, proto int, edit ...func(*redis.Options)) *redis.Client {
	t.Helper()
	o := &redis.Options{
		Addr:         e.addr,
		TLSConfig:    e.pki.clientTLS(),
		Protocol:     proto,
		DialTimeout:  5 * time.Second,
		ReadTimeout:  10 * time.Second,
		WriteTimeout: 10 * time.Second,
		PoolSize:     4,
	}
	for _, f := range edit {
		f(o)
	}
	c := redis.NewClient(o)
	t.Cleanup(func() { c.Close() })
	return c
}

// direct is a go-redis client straight to the test Redis, for checking what
// happened there.
func (e *proxyEnv) direct(t testing.TB) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: e.redis.Addr, Protocol: 2})
	t.Cleanup(func() { c.Close() })
	return c
}

// rawConn is a TLS connection through the proxy for byte-level checks.
func (e *proxyEnv) rawConn(t testing.TB) *tls.Conn {
	t.Helper()
	c, err := tls.Dial("tcp", e.addr, e.pki.clientTLS())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// roundTrip writes req and reads until want has arrived (or times out).
func roundTrip(t testing.TB, c net.Conn, req, want string) {
	t.Helper()
	if _, err := c.Write([]byte(req)); err != nil {
		t.Fatal(err)
	}
	expectBytes(t, c, want)
}

func expectBytes(t testing.TB, c net.Conn, want string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	defer c.SetReadDeadline(time.Time{})
	got := make([]byte, 0, len(want))
	buf := make([]byte, 4096)
	for len(got) < len(want) {
		n, err := c.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			t.Fatalf("read: %v; got %q, want %q", err, got, want)
		}
	}
	if string(got) != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }
