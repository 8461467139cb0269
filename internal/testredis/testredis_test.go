package testredis

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/tlsproxy/tlsproxy/proxy/tlsconf"
)

func ping(t *testing.T, o *redis.Options) {
	t.Helper()
	o.DialTimeout = 2 * time.Second
	o.MaxRetries = -1
	c := redis.NewClient(o)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if got, err := c.Ping(ctx).Result(); err != nil || got != "PONG" {
		t.Fatalf("PING %s %s: got %q, %v", o.Network, o.Addr, got, err)
	}
}

func pingFails(t *testing.T, o *redis.Options) {
	t.Helper()
	o.DialTimeout = time.Second
	o.MaxRetries = -1
	c := redis.NewClient(o)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err == nil {
		t.Fatalf("PING %s %s succeeded, want an error", o.Network, o.Addr)
	}
}

func TestPlain(t *testing.T) {
	s := Start(t, Options{Args: []string{"--maxclients", "100"}})
	if s.Addr == "" || s.Port == 0 || s.Socket != "" {
		t.Fatalf("unexpected server: %+v", s)
	}
	if host, _, _ := net.SplitHostPort(s.Addr); host != "127.0.0.1" {
		t.Fatalf("Addr %q is not on 127.0.0.1", s.Addr)
	}
	ping(t, &redis.Options{Addr: s.Addr})

	c := redis.NewClient(&redis.Options{Addr: s.Addr})
	defer c.Close()
	ctx := context.Background()
	for key, want := range map[string]string{"maxclients": "100", "save": "", "appendonly": "no", "bind": "127.0.0.1"} {
		got, err := c.ConfigGet(ctx, key).Result()
		if err != nil || got[key] != want {
			t.Errorf("CONFIG GET %s = %v, %v; want %q", key, got, err, want)
		}
	}
}

func TestUnixOnly(t *testing.T) {
	s := Start(t, Options{NoTCP: true})
	if s.Addr != "" || s.Port != 0 || s.Socket == "" {
		t.Fatalf("unexpected server: %+v", s)
	}
	if len(s.Socket) >= 108 {
		t.Fatalf("socket path too long: %q", s.Socket)
	}
	ping(t, &redis.Options{Network: "unix", Addr: s.Socket})
}

func TestUnixAndTCPWithPassword(t *testing.T) {
	s := Start(t, Options{Unix: true, Password: "s3cret pass"})
	ping(t, &redis.Options{Addr: s.Addr, Password: "s3cret pass"})
	ping(t, &redis.Options{Network: "unix", Addr: s.Socket, Password: "s3cret pass"})
	pingFails(t, &redis.Options{Addr: s.Addr})
}

func TestStopRestart(t *testing.T) {
	s := Start(t, Options{Unix: true})
	ping(t, &redis.Options{Addr: s.Addr})
	s.Stop()
	s.Stop() // idempotent
	pingFails(t, &redis.Options{Addr: s.Addr})
	if _, err := os.Stat(s.Socket); err == nil {
		t.Errorf("socket %s still exists after Stop", s.Socket)
	}
	addr, sock := s.Addr, s.Socket
	s.Restart(t)
	if s.Addr != addr || s.Socket != sock {
		t.Fatalf("Restart moved the server: %s %s -> %s %s", addr, sock, s.Addr, s.Socket)
	}
	ping(t, &redis.Options{Addr: s.Addr})
	ping(t, &redis.Options{Network: "unix", Addr: s.Socket})
}

func TestRestartWaitsForBusyPort(t *testing.T) {
	s := Start(t, Options{})
	s.Stop()
	l, err := net.Listen("tcp", s.Addr)
	if err != nil {
		t.Fatalf("occupy %s: %v", s.Addr, err)
	}
	time.AfterFunc(500*time.Millisecond, func() { l.Close() })
	s.Restart(t) // retries on "address already in use"
	ping(t, &redis.Options{Addr: s.Addr})
}

func TestTLS(t *testing.T) {
	pki := newTestPKI(t)

	t.Run("no client auth", func(t *testing.T) {
		s := Start(t, Options{TLS: &TLS{CertFile: pki.serverCert, KeyFile: pki.serverKey, CAFile: pki.caCert}})
		if s.PlainAddr != "" {
			t.Fatalf("plain port enabled without KeepPlain: %+v", s)
		}
		ping(t, &redis.Options{Addr: s.Addr, TLSConfig: &tls.Config{RootCAs: pki.pool, ServerName: "127.0.0.1"}})
		pingFails(t, &redis.Options{Addr: s.Addr}) // plain RESP on the TLS port
	})

	t.Run("client auth", func(t *testing.T) {
		s := Start(t, Options{TLS: &TLS{
			CertFile: pki.serverCert, KeyFile: pki.serverKey, CAFile: pki.caCert, AuthClients: true,
			ClientCertFile: pki.clientCert, ClientKeyFile: pki.clientKey,
		}})
		ping(t, &redis.Options{Addr: s.Addr, TLSConfig: &tls.Config{
			RootCAs: pki.pool, ServerName: "127.0.0.1", Certificates: []tls.Certificate{pki.clientPair},
		}})
		pingFails(t, &redis.Options{Addr: s.Addr, TLSConfig: &tls.Config{RootCAs: pki.pool, ServerName: "127.0.0.1"}})
	})

	t.Run("client auth, probe without client cert", func(t *testing.T) {
		// The probe presents the server certificate (serverAuth only), which
		// Redis may reject; Start must still notice the server is ready.
		s := Start(t, Options{TLS: &TLS{CertFile: pki.serverCert, KeyFile: pki.serverKey, CAFile: pki.caCert, AuthClients: true}})
		ping(t, &redis.Options{Addr: s.Addr, TLSConfig: &tls.Config{
			RootCAs: pki.pool, ServerName: "127.0.0.1", Certificates: []tls.Certificate{pki.clientPair},
		}})
	})

	t.Run("keep plain and restart", func(t *testing.T) {
		s := Start(t, Options{Unix: true, KeepPlain: true, TLS: &TLS{CertFile: pki.serverCert, KeyFile: pki.serverKey, CAFile: pki.caCert}})
		if s.PlainAddr == "" || s.PlainAddr == s.Addr {
			t.Fatalf("unexpected server: %+v", s)
		}
		tlsOpts := func() *redis.Options {
			return &redis.Options{Addr: s.Addr, TLSConfig: &tls.Config{RootCAs: pki.pool, ServerName: "127.0.0.1"}}
		}
		ping(t, tlsOpts())
		ping(t, &redis.Options{Addr: s.PlainAddr})
		ping(t, &redis.Options{Network: "unix", Addr: s.Socket})
		s.Stop()
		pingFails(t, tlsOpts())
		s.Restart(t)
		ping(t, tlsOpts())
	})
}

func TestStartFailureMessage(t *testing.T) {
	ft := &fakeTB{TB: t}
	func() {
		defer func() {
			if r := recover(); r != nil && r != errFatal {
				panic(r)
			}
		}()
		Start(ft, Options{Args: []string{"--no-such-option", "1"}})
	}()
	ft.runCleanups()
	if !ft.failed {
		t.Fatal("Start with a bad option did not fail")
	}
	t.Logf("failure message:\n%s", ft.msg)
	if !strings.Contains(ft.msg, "no-such-option") {
		t.Errorf("failure message does not include the log tail:\n%s", ft.msg)
	}
}

// fakeTB records Fatalf instead of failing the real test.
type fakeTB struct {
	testing.TB
	failed   bool
	msg      string
	cleanups []func()
}

var errFatal = &struct{ s string }{"fatal"}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.failed = true
	f.msg = fmt.Sprintf(format, args...)
	panic(errFatal)
}
func (f *fakeTB) Cleanup(fn func()) { f.cleanups = append(f.cleanups, fn) }
func (f *fakeTB) runCleanups() {
	for i := len(f.cleanups) - 1; i >= 0; i-- {
		f.cleanups[i]()
	}
}

// testPKI is a throwaway CA with a server and a client certificate.
type testPKI struct {
	caCert, serverCert, serverKey, clientCert, clientKey string
	pool                                                 *x509.CertPool
	clientPair                                           tls.Certificate
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	dir := t.TempDir()
	ca, err := tlsconf.NewCA("testredis CA")
	if err != nil {
		t.Fatal(err)
	}
	p := &testPKI{pool: ca.Pool(), caCert: writeFile(t, dir, "ca.crt", ca.CertPEM)}
	issue := func(name string, o tlsconf.LeafOptions) (certFile, keyFile string) {
		o.CommonName = name
		o.DNSNames = []string{"localhost"}
		o.IPs = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
		leaf, err := ca.Issue(o)
		if err != nil {
			t.Fatal(err)
		}
		return writeFile(t, dir, name+".crt", leaf.CertPEM), writeFile(t, dir, name+".key", leaf.KeyPEM)
	}
	p.serverCert, p.serverKey = issue("server", tlsconf.LeafOptions{Server: true})
	p.clientCert, p.clientKey = issue("client", tlsconf.LeafOptions{Client: true})
	p.clientPair, err = tls.LoadX509KeyPair(p.clientCert, p.clientKey)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func writeFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
