package proxy

import (
	"crypto/tls"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tlsproxy/tlsproxy/proxy/config"
	"github.com/tlsproxy/tlsproxy/proxy/tlsconf"
)

// The reload itself, in-process; cmd/tlsproxy's reload tests drive the
// binary through SIGHUP and file changes.

// reload resolves cfg and applies it, as the binary's reloader does.
func reload(srv *Server, cfg config.Config) error {
	set, err := Resolve(cfg)
	if err == nil {
		srv.Apply(set)
	}
	return err
}

// servedSerial is the serial of the certificate a new handshake gets.
func servedSerial(t *testing.T, e *proxyEnv) *big.Int {
	t.Helper()
	c, err := tls.Dial("tcp", e.addr, e.pki.clientTLS())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].SerialNumber
}

// rotateServerCert writes a new server certificate and key over the
// proxy's files and returns the new serial.
func rotateServerCert(t *testing.T, p *pki) *big.Int {
	t.Helper()
	leaf, err := p.ca.Issue(tlsconf.LeafOptions{CommonName: "localhost", IPs: []net.IP{net.ParseIP("127.0.0.1")}, Server: true})
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, p.certFile, leaf.CertPEM)
	writeFile(t, p.keyFile, leaf.KeyPEM)
	pair, err := leaf.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	return pair.Leaf.SerialNumber
}

// TestReloadIsAllOrNothing: a reload in which any one file is bad (here the
// client CA bundle, with a good new server certificate beside it) changes
// nothing, says which file, and is counted; the next good reload applies
// everything; established sessions run through both.
func TestReloadIsAllOrNothing(t *testing.T) {
	e := startPlain(t, nil)
	old := servedSerial(t, e)
	open := safetyProxy(t, e)
	roundTrip(t, open.c, cmd("SET", "rl:k", "1"), "+OK\r\n")

	caPEM, err := os.ReadFile(e.pki.caFile)
	if err != nil {
		t.Fatal(err)
	}
	fresh := rotateServerCert(t, e.pki)
	writeFile(t, e.pki.caFile, []byte("not a certificate\n"))
	err = reload(e.srv, e.srv.cfg)
	e.srv.NoteReload("test", err)
	if err == nil || !strings.Contains(err.Error(), e.pki.caFile) {
		t.Fatalf("reload with a broken CA bundle: %v; want an error naming %s", err, e.pki.caFile)
	}
	if got := servedSerial(t, e); got.Cmp(old) != 0 {
		t.Fatalf("a failed reload swapped the server certificate: serial %x, want the old %x", got, old)
	}
	if got := metric(t, e, "tlsproxy_config_reloads_total", `result="failure"`); got != 1 {
		t.Errorf("failed reloads = %v", got)
	}
	if !contains(e.logs.String(), "reload failed: nothing changed") {
		t.Error("the failed reload was not logged")
	}

	writeFile(t, e.pki.caFile, caPEM)
	err = reload(e.srv, e.srv.cfg)
	e.srv.NoteReload("test", err)
	if err != nil {
		t.Fatal(err)
	}
	if got := servedSerial(t, e); got.Cmp(fresh) != 0 {
		t.Fatalf("after a good reload the serial is %x, want the new %x", got, fresh)
	}
	roundTrip(t, open.c, cmd("GET", "rl:k"), "$1\r\n1\r\n")
	if got := metric(t, e, "tlsproxy_config_reloads_total", `result="success"`); got != 1 {
		t.Errorf("successful reloads = %v", got)
	}
}

// TestReloadAppliesLimitsAndReportsTheRest: limits change at once; a key
// that needs a restart is named in a warning and not applied.
func TestReloadAppliesLimitsAndReportsTheRest(t *testing.T) {
	e := startPlain(t, nil)
	a := safetyProxy(t, e)
	roundTrip(t, a.c, cmd("PING"), "+PONG\r\n")
	cfg := e.srv.cfg
	cfg.Limits.MaxClients = 1
	cfg.Listen.Address = "127.0.0.1:1"
	cfg.Upstream.Pool.MaxSize = 7
	if err := reload(e.srv, cfg); err != nil {
		t.Fatal(err)
	}
	over := safetyProxy(t, e)
	if got := over.frames(t, 1, safetyReplyWait)[0]; got != "-ERR max number of clients reached\r\n" {
		t.Fatalf("second client after max_clients went to 1: %q", got)
	}
	lines, raw := safetyLogLines(t, e, "changed in the configuration but not applied")
	if len(lines) != 1 || lines[0]["keys"] != "listen.address, upstream.pool.max_size" {
		t.Fatalf("restart warning: %q", raw)
	}
	roundTrip(t, a.c, cmd("PING"), "+PONG\r\n")
	if metric(t, e, "tlsproxy_client_connections_limit", "") != 1 {
		t.Error("the limit metric did not follow the reload")
	}
}

// TestReloadUpstreamCredentialsForNewDials: a new upstream password
// (password_file) is used by new connections to Redis; open ones stay.
func TestReloadUpstreamCredentialsForNewDials(t *testing.T) {
	e := startPlain(t, nil)
	direct := e.direct(t)
	ctx := t.Context()
	if err := direct.Do(ctx, "ACL", "SETUSER", "rot", "on", ">pw1", "~*", "&*", "+@all").Err(); err != nil {
		t.Fatal(err)
	}
	pwFile := filepath.Join(t.TempDir(), "pw")
	writeFile(t, pwFile, []byte("pw1\n"))
	cfg := e.srv.cfg
	cfg.Upstream.URL = "redis://rot@" + e.redis.Addr
	cfg.Upstream.PasswordFile = pwFile
	e2, _, _, err := serveProxy(t, e.pki, "", func(c *config.Config) { *c = cfg })
	if err != nil {
		t.Fatal(err)
	}
	e2.redis = e.redis
	c := safetyProxy(t, e2)
	roundTrip(t, c.c, cmd("SET", "rot:k", "1"), "+OK\r\n")

	if err := direct.Do(ctx, "ACL", "SETUSER", "rot", "resetpass", ">pw2").Err(); err != nil {
		t.Fatal(err)
	}
	writeFile(t, pwFile, []byte("pw2\n"))
	if err := reload(e2.srv, e2.srv.cfg); err != nil {
		t.Fatal(err)
	}
	roundTrip(t, c.c, cmd("GET", "rot:k"), "$1\r\n1\r\n") // the open connection stays
	if err := direct.Do(ctx, "CLIENT", "KILL", "USER", "rot").Err(); err != nil {
		t.Fatal(err)
	}
	fresh := safetyProxy(t, e2)
	waitFor(t, "a new upstream connection with the new password", func() bool {
		fresh.send(t, cmd("GET", "rot:k"))
		got, err := fresh.tryFrames(1, safetyReplyWait)
		if err != nil {
			fresh = safetyProxy(t, e2) // disconnected with the killed connection
			return false
		}
		return got[0] == "$1\r\n1\r\n"
	})
}

// TestCBCRefusedByDefault: a TLS 1.2 client offering only a CBC suite (Go's
// own TLS 1.2 defaults would take it) is refused; ECDHE with AES-GCM works.
func TestCBCRefusedByDefault(t *testing.T) {
	e := startPlain(t, nil)
	for _, tc := range []struct {
		suite uint16
		ok    bool
	}{{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, false}, {tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, true}} {
		cfg := e.pki.clientTLS()
		cfg.MaxVersion, cfg.CipherSuites = tls.VersionTLS12, []uint16{tc.suite}
		c, err := tls.Dial("tcp", e.addr, cfg)
		if err == nil {
			c.Close()
		}
		if (err == nil) != tc.ok {
			t.Errorf("%s: handshake error %v, want success %v", tls.CipherSuiteName(tc.suite), err, tc.ok)
		}
	}
}
