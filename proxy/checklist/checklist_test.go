package checklist

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tlsproxy/tlsproxy/internal/testredis"
	"github.com/tlsproxy/tlsproxy/proxy/config"
	"github.com/tlsproxy/tlsproxy/proxy/tlsconf"
)

// fixture is a CA, a server certificate for localhost/127.0.0.1 signed by it,
// and a config that uses them.
type fixture struct {
	dir    string
	ca     *tlsconf.CA
	caFile string
	cfg    config.Config
}

func write(t *testing.T, dir, name string, data []byte, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil { // past the umask
		t.Fatal(err)
	}
	return p
}

func newCA(t *testing.T, name string) *tlsconf.CA {
	t.Helper()
	ca, err := tlsconf.NewCA(name)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func issue(t *testing.T, ca *tlsconf.CA, o tlsconf.LeafOptions) tlsconf.Leaf {
	t.Helper()
	o.Server = true
	if o.CommonName == "" {
		o.CommonName = "server"
	}
	if o.DNSNames == nil && o.IPs == nil {
		o.DNSNames = []string{"localhost"}
		o.IPs = []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")}
	}
	l, err := ca.Issue(o)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{dir: t.TempDir(), ca: newCA(t, "test CA")}
	f.caFile = write(t, f.dir, "ca.crt", f.ca.CertPEM, 0o644)
	leaf := issue(t, f.ca, tlsconf.LeafOptions{})
	f.cfg = config.Default()
	f.cfg.Listen.TLS.CertFile = write(t, f.dir, "server.crt", leaf.CertPEM, 0o644)
	f.cfg.Listen.TLS.KeyFile = write(t, f.dir, "server.key", leaf.KeyPEM, 0o600)
	f.cfg.Listen.TLS.ClientCAFile = f.caFile
	return f
}

func opts() Options { return Options{Now: time.Now()} }

func expect(t *testing.T, r Result, status string, reason ...string) {
	t.Helper()
	if r.Status != status {
		t.Errorf("status %s, want %s: %s", r.Status, status, r.Reason)
	}
	for _, s := range reason {
		if !strings.Contains(r.Reason, s) {
			t.Errorf("reason %q does not contain %q", r.Reason, s)
		}
	}
}

func TestClientAuth(t *testing.T) {
	for _, tt := range []struct{ mode, status string }{
		{"require", Pass}, {"verify-if-given", Fail}, {"none", Fail},
	} {
		t.Run(tt.mode, func(t *testing.T) {
			cfg := config.Default()
			cfg.Listen.TLS.ClientAuth = tt.mode
			expect(t, checkClientAuth(context.Background(), cfg, opts()), tt.status, tt.mode)
		})
	}
}

func TestTLSVersion(t *testing.T) {
	for _, tt := range []struct{ v, status string }{{"1.2", Pass}, {"1.3", Pass}, {"1.1", Fail}, {"", Fail}} {
		t.Run(tt.v, func(t *testing.T) {
			cfg := config.Default()
			cfg.Listen.TLS.MinVersion = tt.v
			expect(t, checkTLSVersion(context.Background(), cfg, opts()), tt.status)
		})
	}
}

func TestCipherSuites(t *testing.T) {
	cbc := "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"
	rsa := "TLS_RSA_WITH_AES_128_GCM_SHA256"
	for _, tt := range []struct {
		name   string
		suites []string
		min    string
		status string
		reason string
	}{
		{"defaults", config.DefaultCipherSuites, "1.2", Pass, "ECDHE"},
		{"chacha only", []string{"TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"}, "1.2", Pass, ""},
		{"cbc", append(slices.Clone(config.DefaultCipherSuites), cbc), "1.2", Fail, cbc},
		{"rsa key exchange", []string{rsa}, "1.2", Fail, rsa + ": no ECDHE"},
		{"cbc unused with 1.3", []string{cbc}, "1.3", Pass, "never used"},
		{"empty", nil, "1.2", Fail, "empty"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := config.Default()
			cfg.Listen.TLS.CipherSuites = tt.suites
			cfg.Listen.TLS.MinVersion = tt.min
			expect(t, checkCipherSuites(context.Background(), cfg, opts()), tt.status, tt.reason)
		})
	}
}

func TestServerCert(t *testing.T) {
	now := time.Now()
	day := 24 * time.Hour
	tests := []struct {
		name   string
		setup  func(t *testing.T, f *fixture)
		status string
		reason []string
	}{
		{"good", nil, Pass, []string{"matches its key", "chains to a CA in listen.tls.client_ca_file", "SANs cover 127.0.0.1"}},
		{"localhost name", func(t *testing.T, f *fixture) { f.cfg.Listen.Address = "localhost:6380" }, Pass, []string{"SANs cover localhost"}},
		{"key mismatch", func(t *testing.T, f *fixture) {
			other := issue(t, f.ca, tlsconf.LeafOptions{})
			f.cfg.Listen.TLS.KeyFile = write(t, f.dir, "other.key", other.KeyPEM, 0o600)
		}, Fail, []string{"private key does not match"}},
		{"expired", func(t *testing.T, f *fixture) {
			l := issue(t, f.ca, tlsconf.LeafOptions{NotBefore: now.Add(-10 * day), NotAfter: now.Add(-day)})
			f.setServer(t, l)
		}, Fail, []string{"expired"}},
		{"not yet valid", func(t *testing.T, f *fixture) {
			l := issue(t, f.ca, tlsconf.LeafOptions{NotBefore: now.Add(day), NotAfter: now.Add(400 * day)})
			f.setServer(t, l)
		}, Fail, []string{"not valid until"}},
		{"expires inside the window", func(t *testing.T, f *fixture) {
			f.setServer(t, issue(t, f.ca, tlsconf.LeafOptions{NotAfter: now.Add(30 * day)}))
		}, Warn, []string{"inside tls.expiry_warning"}},
		{"no SAN for the listen IP", func(t *testing.T, f *fixture) { f.cfg.Listen.Address = "127.0.0.2:6380" }, Warn, []string{"no IP SAN for the listen host 127.0.0.2"}},
		{"no SAN for the listen name", func(t *testing.T, f *fixture) {
			f.setServer(t, issue(t, f.ca, tlsconf.LeafOptions{DNSNames: []string{"redis.example"}}))
			f.cfg.Listen.Address = "proxy.example:6380"
		}, Warn, []string{"no DNS SAN for the listen host proxy.example", "redis.example"}},
		{"wildcard listen address", func(t *testing.T, f *fixture) { f.cfg.Listen.Address = "0.0.0.0:6380" }, Warn, []string{"wildcard"}},
		{"empty listen host", func(t *testing.T, f *fixture) { f.cfg.Listen.Address = ":6380" }, Warn, []string{"wildcard"}},
		{"unknown CA", func(t *testing.T, f *fixture) {
			f.setServer(t, issue(t, newCA(t, "stranger"), tlsconf.LeafOptions{}))
		}, Fail, []string{"does not chain"}},
		{"CA at the end of cert_file", func(t *testing.T, f *fixture) {
			other := newCA(t, "server CA")
			l := issue(t, other, tlsconf.LeafOptions{})
			l.CertPEM = append(l.CertPEM, other.CertPEM...)
			f.setServer(t, l)
		}, Pass, []string{`chains to "server CA" at the end of cert_file`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			if tt.setup != nil {
				tt.setup(t, f)
			}
			expect(t, checkServerCert(context.Background(), f.cfg, opts()), tt.status, tt.reason...)
		})
	}
}

func (f *fixture) setServer(t *testing.T, l tlsconf.Leaf) {
	t.Helper()
	f.cfg.Listen.TLS.CertFile = write(t, f.dir, "server2.crt", l.CertPEM, 0o644)
	f.cfg.Listen.TLS.KeyFile = write(t, f.dir, "server2.key", l.KeyPEM, 0o600)
}

// caPEM makes a self-signed CA certificate valid in [notBefore, notAfter].
func caPEM(t *testing.T, name string, notBefore, notAfter time.Time) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: notBefore, NotAfter: notAfter, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// publicRootPEM is the first certificate of the system bundle.
func publicRootPEM(t *testing.T) []byte {
	t.Helper()
	data, err := os.ReadFile("/etc/ssl/certs/ca-certificates.crt")
	if err != nil {
		t.Skipf("no system CA bundle: %v", err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		t.Skip("system CA bundle holds no PEM certificate")
	}
	return pem.EncodeToMemory(block)
}

func TestClientCAs(t *testing.T) {
	now := time.Now()
	day := 24 * time.Hour
	tests := []struct {
		name   string
		bundle func(t *testing.T, f *fixture) []byte // nil: the fixture's CA
		status string
		reason []string
	}{
		{"good", nil, Pass, []string{"1 CA(s)"}},
		{"two CAs", func(t *testing.T, f *fixture) []byte {
			return append(slices.Clone(f.ca.CertPEM), newCA(t, "second").CertPEM...)
		}, Pass, []string{"2 CA(s)"}},
		{"no certificate", func(t *testing.T, f *fixture) []byte { return []byte("nothing here\n") }, Fail, []string{"holds no certificate"}},
		{"CA inside the window", func(t *testing.T, f *fixture) []byte {
			return append(slices.Clone(f.ca.CertPEM), caPEM(t, "old CA", now.Add(-day), now.Add(20*day))...)
		}, Warn, []string{`"old CA" expires`}},
		{"expired CA", func(t *testing.T, f *fixture) []byte {
			return caPEM(t, "dead CA", now.Add(-10*day), now.Add(-day))
		}, Fail, []string{`"dead CA" expired`}},
		{"public root", func(t *testing.T, f *fixture) []byte {
			return append(slices.Clone(f.ca.CertPEM), publicRootPEM(t)...)
		}, Fail, []string{"public CA", "any certificate it issues"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			if tt.bundle != nil {
				f.cfg.Listen.TLS.ClientCAFile = write(t, f.dir, "bundle.crt", tt.bundle(t, f), 0o644)
			}
			expect(t, checkClientCAs(context.Background(), f.cfg, opts()), tt.status, tt.reason...)
		})
	}
	t.Run("not set", func(t *testing.T) {
		f := newFixture(t)
		f.cfg.Listen.TLS.ClientCAFile = ""
		f.cfg.Listen.TLS.ClientAuth = "none"
		expect(t, checkClientCAs(context.Background(), f.cfg, opts()), Warn, "not set")
	})
}

// tlsRedis starts a Redis with TLS only and a certificate for 127.0.0.1
// from ca.
func tlsRedis(t *testing.T, f *fixture) *testredis.Server {
	t.Helper()
	l := issue(t, f.ca, tlsconf.LeafOptions{CommonName: "redis", Client: true})
	return testredis.Start(t, testredis.Options{TLS: &testredis.TLS{
		CertFile: write(t, f.dir, "redis.crt", l.CertPEM, 0o644),
		KeyFile:  write(t, f.dir, "redis.key", l.KeyPEM, 0o600),
		CAFile:   f.caFile,
	}})
}

func TestUpstreamLink(t *testing.T) {
	ctx := context.Background()
	for _, tt := range []struct {
		url, status, reason string
	}{
		{"unix:///run/redis.sock", Pass, "not encrypted, but local"},
		{"redis://127.0.0.1:6379", Pass, "loopback"},
		{"redis://[::1]:6379", Pass, "loopback"},
		{"redis://localhost:6379", Pass, "loopback"},
		{"redis://10.1.2.3:6379", Fail, "unencrypted"},
		{"redis://redis.example:6379", Fail, "unencrypted"},
		{"rediss://redis.example:6379", Pass, "handshake not tried"},
	} {
		t.Run(tt.url, func(t *testing.T) {
			cfg := config.Default()
			cfg.Upstream.URL = tt.url
			expect(t, checkUpstreamLink(ctx, cfg, Options{Offline: true}), tt.status, tt.reason)
		})
	}

	t.Run("rediss online", func(t *testing.T) {
		f := newFixture(t)
		r := tlsRedis(t, f)
		f.cfg.Upstream.URL = "rediss://" + r.Addr
		f.cfg.Upstream.TLS.CAFile = f.caFile
		expect(t, checkUpstreamLink(ctx, f.cfg, opts()), Pass, "handshake OK", "verified against upstream.tls.ca_file")

		f.cfg.Upstream.TLS.CAFile = write(t, f.dir, "other-ca.crt", newCA(t, "other").CertPEM, 0o644)
		expect(t, checkUpstreamLink(ctx, f.cfg, opts()), Fail, "TLS handshake failed", "unknown authority")

		// The same certificate, offline: nothing is dialled.
		expect(t, checkUpstreamLink(ctx, f.cfg, Options{Offline: true}), Pass, "--offline")
	})
}

func TestRedisReachable(t *testing.T) {
	ctx := context.Background()
	t.Run("no password", func(t *testing.T) {
		r := testredis.Start(t, testredis.Options{})
		cfg := config.Default()
		cfg.Upstream.URL = "redis://" + r.Addr
		expect(t, checkRedisReachable(ctx, cfg, opts()), Pass, "answers PING")
	})
	t.Run("password", func(t *testing.T) {
		r := testredis.Start(t, testredis.Options{Password: "secret"})
		cfg := config.Default()
		cfg.Upstream.URL = "redis://" + r.Addr
		expect(t, checkRedisReachable(ctx, cfg, opts()), Fail, "NOAUTH")

		cfg.Upstream.URL = "redis://:wrong@" + r.Addr
		res := checkRedisReachable(ctx, cfg, opts())
		expect(t, res, Fail)
		if strings.Contains(res.Reason, "wrong") {
			t.Errorf("reason shows the password: %s", res.Reason)
		}

		cfg.Upstream.URL = "redis://:secret@" + r.Addr
		expect(t, checkRedisReachable(ctx, cfg, opts()), Pass, "with the configured credentials")
	})
	t.Run("password file", func(t *testing.T) {
		r := testredis.Start(t, testredis.Options{Password: "secret"})
		cfg := config.Default()
		cfg.Upstream.URL = "redis://" + r.Addr
		cfg.Upstream.PasswordFile = write(t, t.TempDir(), "pw", []byte("secret\n"), 0o600)
		expect(t, checkRedisReachable(ctx, cfg, opts()), Pass, "with the configured credentials")
	})
	t.Run("rediss", func(t *testing.T) {
		f := newFixture(t)
		r := tlsRedis(t, f)
		f.cfg.Upstream.URL = "rediss://" + r.Addr
		f.cfg.Upstream.TLS.CAFile = f.caFile
		expect(t, checkRedisReachable(ctx, f.cfg, opts()), Pass, "answers PING")
	})
	t.Run("nothing listens", func(t *testing.T) {
		cfg := config.Default()
		cfg.Upstream.URL = "redis://127.0.0.1:" + itoa(testredis.FreePort(t))
		cfg.Upstream.DialTimeout = 2 * time.Second
		expect(t, checkRedisReachable(ctx, cfg, opts()), Fail, "cannot connect", "refused")
	})
}

func itoa(n int) string { return big.NewInt(int64(n)).String() }

func TestBindExposure(t *testing.T) {
	for _, tt := range []struct {
		bind    string
		exposed bool
	}{
		{"", true},
		{"*", true},
		{"* -::*", true},
		{"0.0.0.0", true},
		{"::", true},
		{"127.0.0.1 0.0.0.0", true},
		{"10.0.0.5", true},
		{"127.0.0.1", false},
		{"127.0.0.1 -::1", false},
		{"localhost", false},
	} {
		if got := bindExposure(tt.bind) != ""; got != tt.exposed {
			t.Errorf("bindExposure(%q) = %q, want exposed %v", tt.bind, bindExposure(tt.bind), tt.exposed)
		}
	}
}

func TestRedisExposure(t *testing.T) {
	ctx := context.Background()
	t.Run("loopback bind", func(t *testing.T) {
		r := testredis.Start(t, testredis.Options{Args: []string{"--bind", "127.0.0.1", "--protected-mode", "yes"}})
		cfg := config.Default()
		cfg.Upstream.URL = "redis://" + r.Addr
		expect(t, checkRedisExposure(ctx, cfg, opts()), Pass, `bind "127.0.0.1"`, "protected-mode yes")
	})
	t.Run("unix socket only", func(t *testing.T) {
		r := testredis.Start(t, testredis.Options{NoTCP: true})
		cfg := config.Default()
		cfg.Upstream.URL = "unix://" + r.Socket
		expect(t, checkRedisExposure(ctx, cfg, opts()), Pass, "port 0")
	})
	t.Run("CONFIG not permitted", func(t *testing.T) {
		r := testredis.Start(t, testredis.Options{Args: []string{"--user", "checker", "on", ">pw", "~*", "+@all", "-config"}})
		cfg := config.Default()
		cfg.Upstream.URL = "redis://checker:pw@" + r.Addr
		expect(t, checkRedisExposure(ctx, cfg, opts()), Warn, "could not check", "NOPERM")
	})
	t.Run("non-loopback upstream", func(t *testing.T) {
		// Tests dial only loopback: the address rule is checked on its own.
		for addr, want := range map[string]bool{"10.0.0.5:6379": true, "redis.internal:6379": true, "127.0.0.1:6379": false, "[::1]:6379": false, "localhost:6379": false} {
			if got := addressExposure("tcp", addr) != ""; got != want {
				t.Errorf("addressExposure(%s) warns %v, want %v", addr, got, want)
			}
		}
		if addressExposure("unix", "/run/redis.sock") != "" {
			t.Error("a unix socket is not a network address")
		}
	})
}

func TestSecretModes(t *testing.T) {
	f := newFixture(t)
	expect(t, checkSecretModes(context.Background(), f.cfg, opts()), Pass, "listen.tls.key_file")

	pw := write(t, f.dir, "pw", []byte("secret\n"), 0o640)
	f.cfg.Upstream.PasswordFile = pw
	expect(t, checkSecretModes(context.Background(), f.cfg, opts()), Warn, "upstream.password_file", pw, "0640")

	if err := os.Chmod(pw, 0o600); err != nil {
		t.Fatal(err)
	}
	f.cfg.Admin.TLS.KeyFile = write(t, f.dir, "admin.key", []byte("key"), 0o644)
	expect(t, checkSecretModes(context.Background(), f.cfg, opts()), Warn, "admin.tls.key_file", "0644")

	f.cfg.Admin.TLS.KeyFile = ""
	f.cfg.Upstream.TLS.KeyFile = write(t, f.dir, "up.key", []byte("key"), 0o604)
	expect(t, checkSecretModes(context.Background(), f.cfg, opts()), Warn, "upstream.tls.key_file", "0604")

	f.cfg.Upstream.TLS.KeyFile = ""
	if err := os.Chmod(f.cfg.Listen.TLS.KeyFile, 0o644); err != nil {
		t.Fatal(err)
	}
	expect(t, checkSecretModes(context.Background(), f.cfg, opts()), Warn, "listen.tls.key_file")
}

func TestAdmin(t *testing.T) {
	for _, tt := range []struct {
		name, addr, cert, ca, status string
	}{
		{"disabled", "", "", "", Pass},
		{"loopback", "127.0.0.1:9180", "", "", Pass},
		{"localhost", "localhost:9180", "", "", Pass},
		{"ipv6 loopback", "[::1]:9180", "", "", Pass},
		{"https with client CA", "0.0.0.0:9180", "a.crt", "ca.crt", Pass},
		{"https without client CA", "10.0.0.1:9180", "a.crt", "", Warn},
		{"plain http", "0.0.0.0:9180", "", "", Warn},
		{"plain http empty host", ":9180", "", "", Warn},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := config.Default()
			cfg.Admin.Address = tt.addr
			cfg.Admin.TLS = config.AdminTLS{CertFile: tt.cert, KeyFile: tt.cert, ClientCAFile: tt.ca}
			expect(t, checkAdmin(context.Background(), cfg, opts()), tt.status)
		})
	}
}

func TestRun(t *testing.T) {
	f := newFixture(t)
	rs := Run(context.Background(), f.cfg, Options{Offline: true})
	var items []string
	for _, r := range rs {
		items = append(items, r.Item)
		want := Pass
		if r.Item == "redis reachable" || r.Item == "redis exposure" {
			want = Skip
		}
		if r.Status != want {
			t.Errorf("%s: %s (%s), want %s", r.Item, r.Status, r.Reason, want)
		}
	}
	if !slices.Equal(items, Items()) || len(items) != 10 {
		t.Errorf("items %q, want the 10 of Items()", items)
	}
	if Failed(rs) {
		t.Error("Failed reports a failure")
	}

	r := testredis.Start(t, testredis.Options{})
	f.cfg.Upstream.URL = "redis://" + r.Addr
	f.cfg.Listen.TLS.ClientAuth = "none"
	rs = Run(context.Background(), f.cfg, Options{})
	if !Failed(rs) || rs[0].Status != Fail {
		t.Errorf("client_auth none: %v", rs)
	}
	for _, r := range rs[6:8] {
		if r.Status != Pass {
			t.Errorf("online %s: %s (%s)", r.Item, r.Status, r.Reason)
		}
	}
}
