//go:build linux

// End-to-end tests of certificate rotation without a restart: SIGHUP, a file
// renamed into place, a symlink swap, a certificate written before its key, a
// broken key, a new client CA and a rotated Redis password. They reuse the
// helpers of e2e_test.go and ops_e2e_test.go; each test has its own proxy,
// redis-server and directory of certificates.

package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tlsproxy/tlsproxy/proxy/tlsconf"
)

// rlCA is the dev CA of o, loaded from ca.crt and ca.key, to issue new
// server certificates that o's clients still trust.
func rlCA(t *testing.T, o *opsEnv) *tlsconf.CA {
	t.Helper()
	cert := e2eParseCert(t, o.cert("ca.crt"))
	b, err := os.ReadFile(o.cert("ca.key"))
	opsNoErr(t, err)
	block, _ := pem.Decode(b)
	if block == nil {
		t.Fatalf("%s: no PEM block", o.cert("ca.key"))
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	opsNoErr(t, err)
	return &tlsconf.CA{Cert: cert, Key: key.(*ecdsa.PrivateKey), CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})}
}

// rlIssue issues a server certificate for 127.0.0.1 and returns it with its serial.
func rlIssue(t *testing.T, ca *tlsconf.CA) (tlsconf.Leaf, *big.Int) {
	t.Helper()
	leaf, err := ca.Issue(tlsconf.LeafOptions{CommonName: "localhost", DNSNames: []string{"localhost"},
		IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Server: true})
	opsNoErr(t, err)
	block, _ := pem.Decode(leaf.CertPEM)
	cert, err := x509.ParseCertificate(block.Bytes)
	opsNoErr(t, err)
	return leaf, cert.SerialNumber
}

func rlWrite(t *testing.T, path string, data []byte) {
	t.Helper()
	opsNoErr(t, os.WriteFile(path, data, 0o600))
}

// rlServed is the serial of the certificate a new handshake sees.
func rlServed(t *testing.T, o *opsEnv) (*big.Int, error) {
	conn, err := o.tryDialTLS(t, o.addr)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber, nil
}

// rlSeen reports whether new handshakes see the certificate with serial
// want within the given time.
func rlSeen(t *testing.T, o *opsEnv, want *big.Int, within time.Duration) bool {
	for start := time.Now(); time.Since(start) < within; time.Sleep(50 * time.Millisecond) {
		if got, err := rlServed(t, o); err == nil && got.Cmp(want) == 0 {
			t.Logf("serial %X served %s after the change", want, time.Since(start).Round(time.Millisecond))
			return true
		}
	}
	return false
}

func rlWaitServed(t *testing.T, o *opsEnv, p *e2eProc, want *big.Int, within time.Duration) {
	t.Helper()
	if !rlSeen(t, o, want, within) {
		got, err := rlServed(t, o)
		t.Fatalf("new handshakes see serial %X (%v) %s after the change, want %X\n%s", got, err, within, want, p.stderr.String())
	}
}

func rlReloaded(trigger string) func(e2eLogLine) bool {
	return func(l e2eLogLine) bool {
		return l.Message == "reloaded certificates, keys, CA bundles and password file" && l.Raw["trigger"] == trigger
	}
}

func rlFailed(l e2eLogLine) bool { return strings.HasPrefix(l.Message, "reload failed") }

// rlReloads is tlsproxy_config_reloads_total{result=result}.
func rlReloads(t *testing.T, o *opsEnv, result string) float64 {
	t.Helper()
	v, _ := metricValue(o.scrape(t), "tlsproxy_config_reloads_total", "result="+result)
	return v
}

// rlLoad pipelines SET/GET pairs of unique values on conn until stop is
// closed; ops counts the pairs answered right. It returns the first error
// or wrong reply.
func rlLoad(conn *tls.Conn, id int, stop <-chan struct{}, ops *atomic.Int64) error {
	defer conn.Close()
	br := bufio.NewReader(conn)
	for n := 0; ; {
		select {
		case <-stop:
			return nil
		default:
		}
		var batch, want strings.Builder
		for range 5 {
			n++
			key, val := fmt.Sprintf("rl:%d:%d", id, n), fmt.Sprintf("value-%d-%d", id, n)
			batch.WriteString(opsCmd("SET", key, val) + opsCmd("GET", key))
			fmt.Fprintf(&want, "+OK\r\n$%d\r\n%s\r\n", len(val), val)
		}
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(conn, batch.String()); err != nil {
			return err
		}
		got := make([]byte, want.Len())
		if _, err := io.ReadFull(br, got); err != nil {
			return fmt.Errorf("after %d pairs: %w", ops.Load(), err)
		}
		if string(got) != want.String() {
			return fmt.Errorf("wrong replies %q, want %q", got, want.String())
		}
		ops.Add(5)
	}
}

func TestReloadServerCertOnSIGHUP(t *testing.T) {
	t.Parallel()
	o := newOps(t, 5*time.Second)
	p := o.start(t)
	ca := rlCA(t, o)

	const clients = 8
	stop := make(chan struct{})
	ops := make([]atomic.Int64, clients)
	errs := make([]error, clients)
	var wg sync.WaitGroup
	for i := range clients {
		conn := o.dialTLS(t, o.addr)
		wg.Go(func() { errs[i] = rlLoad(conn, i, stop, &ops[i]) })
	}
	time.Sleep(500 * time.Millisecond)

	leaf, serial := rlIssue(t, ca)
	rlWrite(t, o.cert("server.crt"), leaf.CertPEM)
	rlWrite(t, o.cert("server.key"), leaf.KeyPEM)
	sent := time.Now()
	p.signal(t, syscall.SIGHUP)
	p.waitLog(t, rlReloaded("SIGHUP"))
	rlWaitServed(t, o, p, serial, time.Second)
	before := make([]int64, clients)
	for i := range ops {
		before[i] = ops[i].Load()
	}
	time.Sleep(500 * time.Millisecond) // the sessions from before keep going
	close(stop)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("client %d: %v", i, err)
		}
		if n := ops[i].Load(); n == before[i] || before[i] == 0 {
			t.Errorf("client %d: %d SET/GET pairs by the reload, %d at the end: it did not keep working", i, before[i], n)
		}
	}

	// openssl sees the new certificate too.
	r := e2eRun(t, "openssl", nil, "s_client", "-connect", o.addr, "-cert", o.cert("client.crt"),
		"-key", o.cert("client.key"), "-CAfile", o.cert("ca.crt"))
	if !strings.Contains(r.stdout, "Verify return code: 0 (ok)") {
		t.Errorf("openssl s_client: %s", r)
	}
	out := filepath.Join(t.TempDir(), "s_client.txt")
	rlWrite(t, out, []byte(r.stdout))
	r = e2eRun(t, "openssl", nil, "x509", "-noout", "-serial", "-in", out)
	if want := fmt.Sprintf("serial=%X", serial.Bytes()); strings.TrimSpace(r.stdout) != want {
		t.Errorf("openssl s_client shows %q, want %q: %s", strings.TrimSpace(r.stdout), want, r)
	}

	if v := rlReloads(t, o, "success"); v != 1 {
		t.Errorf("tlsproxy_config_reloads_total{result=\"success\"} = %v, want 1", v)
	}
	if v, _ := metricValue(o.scrape(t), "tlsproxy_config_last_reload_success_timestamp_seconds"); v < float64(sent.Unix()) {
		t.Errorf("tlsproxy_config_last_reload_success_timestamp_seconds = %v, before the SIGHUP at %d", v, sent.Unix())
	}
	p.stop(t)
}

// TestReloadOnFileChange: without a signal, a change to the files is seen.
func TestReloadOnFileChange(t *testing.T) {
	t.Parallel()
	t.Run("rename into place", func(t *testing.T) {
		t.Parallel()
		o := newOps(t, 5*time.Second)
		p := o.start(t)
		leaf, serial := rlIssue(t, rlCA(t, o))
		rlWrite(t, o.cert("server.crt.tmp"), leaf.CertPEM)
		rlWrite(t, o.cert("server.key.tmp"), leaf.KeyPEM)
		opsNoErr(t, os.Rename(o.cert("server.crt.tmp"), o.cert("server.crt")))
		opsNoErr(t, os.Rename(o.cert("server.key.tmp"), o.cert("server.key")))
		rlWaitServed(t, o, p, serial, 3*time.Second)
		p.waitLog(t, rlReloaded("file change"))
		p.stop(t)
	})
	// The config names dir/current/server.crt; current is a symlink to v1,
	// swapped atomically to v2.
	t.Run("symlink swap of the directory", func(t *testing.T) {
		t.Parallel()
		o, p, swap := rlSymlinkSetup(t, "current", "current")
		serial := swap()
		// The reloader watches the symlink's own directory too: inotify
		// resolves the symlink, so a watch on it alone misses the swap.
		rlWaitServed(t, o, p, serial, 3*time.Second)
		p.waitLog(t, rlReloaded("file change"))
		p.stop(t)
	})
	// Kubernetes' own secret volume: dir/server.crt -> ..data/server.crt,
	// ..data -> the version directory; ..data is swapped.
	t.Run("kubernetes secret volume", func(t *testing.T) {
		t.Parallel()
		o, p, swap := rlSymlinkSetup(t, "..data", ".")
		serial := swap()
		if !rlSeen(t, o, serial, 3*time.Second) {
			t.Errorf("the swap of ..data was not seen within 3s:\n%s", p.stderr.String())
		}
		p.stop(t)
	})
}

// rlSymlinkSetup moves o's certificates to dir/v1, links dir/link -> v1 and
// points the config at dir/files (files is link, or "." for per-file links
// dir/NAME -> link/NAME). swap writes v2 with a new server certificate,
// replaces the link atomically and returns the new serial.
func rlSymlinkSetup(t *testing.T, link, files string) (*opsEnv, *e2eProc, func() *big.Int) {
	o := newOps(t, 5*time.Second)
	ca := rlCA(t, o)
	dir := t.TempDir()
	opsNoErr(t, os.Rename(o.certs, filepath.Join(dir, "v1")))
	opsNoErr(t, os.Symlink("v1", filepath.Join(dir, link)))
	if files == "." {
		for _, name := range e2eDevFiles {
			opsNoErr(t, os.Symlink(filepath.Join(link, name), filepath.Join(dir, name)))
		}
	}
	o.certs = filepath.Join(dir, files)
	o.cfg = o.config(t, o.admin, 5*time.Second)
	p := o.start(t)
	return o, p, func() *big.Int {
		v2 := filepath.Join(dir, "v2")
		opsNoErr(t, os.Mkdir(v2, 0o755))
		for _, name := range e2eDevFiles {
			b, err := os.ReadFile(filepath.Join(dir, "v1", name))
			opsNoErr(t, err)
			rlWrite(t, filepath.Join(v2, name), b)
		}
		leaf, serial := rlIssue(t, ca)
		rlWrite(t, filepath.Join(v2, "server.crt"), leaf.CertPEM)
		rlWrite(t, filepath.Join(v2, "server.key"), leaf.KeyPEM)
		opsNoErr(t, os.Symlink("v2", filepath.Join(dir, link+".tmp")))
		opsNoErr(t, os.Rename(filepath.Join(dir, link+".tmp"), filepath.Join(dir, link)))
		return serial
	}
}

// TestReloadCertBeforeKey: a certificate written before its key (a moment
// where the pair does not match) is picked up without a failed reload, for
// a gap within the debounce and one beyond it (the retry).
func TestReloadCertBeforeKey(t *testing.T) {
	t.Parallel()
	o := newOps(t, 5*time.Second)
	p := o.start(t)
	ca := rlCA(t, o)
	for _, gap := range []time.Duration{100 * time.Millisecond, 450 * time.Millisecond} {
		leaf, serial := rlIssue(t, ca)
		rlWrite(t, o.cert("server.crt"), leaf.CertPEM)
		time.Sleep(gap)
		rlWrite(t, o.cert("server.key"), leaf.KeyPEM)
		rlWaitServed(t, o, p, serial, 3*time.Second)
	}
	time.Sleep(time.Second) // any retry is over
	if l, ok := p.findLog(rlFailed); ok {
		t.Errorf("a reload failed: %s", l.Line)
	}
	if v := rlReloads(t, o, "failure"); v != 0 {
		t.Errorf("tlsproxy_config_reloads_total{result=\"failure\"} = %v, want 0", v)
	}
	if v := rlReloads(t, o, "success"); v != 2 {
		t.Errorf("tlsproxy_config_reloads_total{result=\"success\"} = %v, want 2\n%s", v, p.stderr.String())
	}
	p.stop(t)
}

// TestReloadBrokenFileKeepsService: a broken key changes nothing; the
// failure names the file; a good pair then loads.
func TestReloadBrokenFileKeepsService(t *testing.T) {
	t.Parallel()
	o := newOps(t, 5*time.Second)
	p := o.start(t)
	old, err := rlServed(t, o)
	opsNoErr(t, err)
	conn := o.dialTLS(t, o.addr)
	defer conn.Close()

	rlWrite(t, o.cert("server.key"), []byte("garbage, not a key\n"))
	p.signal(t, syscall.SIGHUP)
	l := p.waitLog(t, func(l e2eLogLine) bool { return rlFailed(l) && l.Raw["trigger"] == "SIGHUP" })
	if e, _ := l.Raw["error"].(string); !strings.Contains(e, o.cert("server.key")) {
		t.Errorf("the failure does not name %s: %s", o.cert("server.key"), l.Line)
	}
	if got, err := rlServed(t, o); err != nil || got.Cmp(old) != 0 {
		t.Errorf("after the failed reload a new handshake sees serial %X (%v), want the old %X", got, err, old)
	}
	if r := e2ePing(t, conn); r != "+PONG" {
		t.Errorf("PING on the connection from before: %q", r)
	}
	// The watcher saw the broken key too, but does not try contents that
	// already failed: one failure, however long we wait.
	time.Sleep(2 * time.Second) // longer than the settle time and the retries
	if v := rlReloads(t, o, "failure"); v != 1 {
		t.Errorf("tlsproxy_config_reloads_total{result=\"failure\"} = %v, want 1 (the broken contents are not retried)\n%s", v, p.stderr.String())
	}

	leaf, serial := rlIssue(t, rlCA(t, o))
	rlWrite(t, o.cert("server.crt"), leaf.CertPEM)
	rlWrite(t, o.cert("server.key"), leaf.KeyPEM)
	p.signal(t, syscall.SIGHUP)
	p.waitLog(t, rlReloaded("SIGHUP"))
	rlWaitServed(t, o, p, serial, time.Second)
	if v := rlReloads(t, o, "success"); v != 1 {
		t.Errorf("tlsproxy_config_reloads_total{result=\"success\"} = %v, want 1", v)
	}
	p.stop(t)
}

// TestReloadClientCA: a new client CA admits its clients and refuses the
// old CA's on new connections; sessions already open stay.
func TestReloadClientCA(t *testing.T) {
	t.Parallel()
	o := newOps(t, 5*time.Second)
	p := o.start(t)
	dial := func(cfg *tls.Config) (string, error) {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", o.addr, cfg)
		if err != nil {
			return "", err
		}
		defer conn.Close()
		return e2eTryPing(conn)
	}
	// The old client presents its certificate even when the proxy asks for
	// the new CA's (Go's default would send none): the proxy must verify it.
	oldCfg := o.clientTLS(t) // trusts the (unchanged) server certificate's CA
	oldPair := oldCfg.Certificates[0]
	oldCfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &oldPair, nil }
	oldCfg.ClientSessionCache = tls.NewLRUClientSessionCache(4)
	if r, err := dial(oldCfg); r != "+PONG" { // leaves a session ticket in the cache
		t.Fatalf("PING with the old client certificate: %q, %v", r, err)
	}
	open := o.dialTLS(t, o.addr)
	defer open.Close()

	newCA, err := tlsconf.NewCA("rotated client CA")
	opsNoErr(t, err)
	leaf, err := newCA.Issue(tlsconf.LeafOptions{CommonName: "new-client", Client: true})
	opsNoErr(t, err)
	pair, err := leaf.TLSCertificate()
	opsNoErr(t, err)
	rlWrite(t, o.cert("ca.crt"), newCA.CertPEM)
	p.signal(t, syscall.SIGHUP)
	p.waitLog(t, rlReloaded("SIGHUP"))

	if r, err := e2eTryPing(open); r != "+PONG" {
		t.Errorf("PING on the session opened before the reload: %q, %v", r, err)
	}
	if r, err := dial(oldCfg); err == nil || r == "+PONG" {
		t.Errorf("a new connection with the old CA's client certificate: %q, %v; want refused", r, err)
	} else {
		t.Logf("the old client certificate is refused: %v", err)
	}
	p.waitLog(t, e2eRejected("unknown_ca"))
	newCfg := oldCfg.Clone()
	newCfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &pair, nil }
	newCfg.ClientSessionCache = nil
	if r, err := dial(newCfg); r != "+PONG" {
		t.Errorf("PING with the new CA's client certificate: %q, %v", r, err)
	}
	p.stop(t)
}

// TestReloadUpstreamPassword: a rotated upstream.password_file is used for
// the next connections to Redis; without it they fail.
func TestReloadUpstreamPassword(t *testing.T) {
	t.Parallel()
	o := newOps(t, 5*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rdb := o.redis.client
	opsNoErr(t, rdb.Do(ctx, "ACL", "SETUSER", "proxyuser", "on", ">pw1-secret", "~*", "&*", "+@all").Err())
	pwFile := filepath.Join(t.TempDir(), "redis-password")
	rlWrite(t, pwFile, []byte("pw1-secret\n"))
	b, err := os.ReadFile(o.cfg)
	opsNoErr(t, err)
	cfg := strings.Replace(string(b), `"redis://`, `"redis://proxyuser@`, 1)
	cfg = strings.Replace(cfg, `password_file: ""`, fmt.Sprintf("password_file: %q", pwFile), 1)
	rlWrite(t, o.cfg, []byte(cfg))
	p := o.start(t)

	kill := func() {
		t.Helper()
		opsNoErr(t, rdb.Do(ctx, "CLIENT", "KILL", "USER", "proxyuser").Err())
	}
	// ping tries PING on new clients through the proxy for ~2s until ok(reply).
	ping := func(ok func(string) bool) (r string, err error) {
		for end := time.Now().Add(2 * time.Second); !ok(r) && time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
			var conn *tls.Conn
			if conn, err = o.tryDialTLS(t, o.addr); err == nil {
				r, err = e2eTryPing(conn)
				conn.Close()
			}
		}
		return r, err
	}

	// Redis's password changes, the file does not: a new connection fails.
	opsNoErr(t, rdb.Do(ctx, "ACL", "SETUSER", "proxyuser", "resetpass", ">pw2-secret").Err())
	kill()
	r, err := ping(func(r string) bool { return strings.HasPrefix(r, "-") })
	if !strings.Contains(r, "upstream unavailable") || !strings.Contains(r, "WRONGPASS") {
		t.Errorf("PING through the proxy with the old password in the file: %q, %v; want upstream unavailable: WRONGPASS", r, err)
	}
	t.Logf("with the stale password: %q", r)

	rlWrite(t, pwFile, []byte("pw2-secret\n"))
	p.waitLog(t, rlReloaded("file change"))
	kill()
	if r, err := ping(func(r string) bool { return r == "+PONG" }); r != "+PONG" {
		t.Errorf("PING through the proxy after the password file was rotated: %q, %v", r, err)
	}
	if list, err := rdb.ClientList(ctx).Result(); err != nil || !strings.Contains(list, "user=proxyuser") {
		t.Errorf("no connection of proxyuser in CLIENT LIST (%v):\n%s", err, list)
	}
	p.stop(t)
	if strings.Contains(p.stderr.String(), "secret") {
		t.Errorf("the password appears in the log:\n%s", p.stderr.String())
	}
}

// TestReloadInterval: tls.reload_interval picks up a change the file watch
// cannot see. The new certificate is written through hard links in a
// directory nobody watches: the same files change, and inotify reports it
// only to watchers of the directory the write went through.
func TestReloadInterval(t *testing.T) {
	t.Parallel()
	o := newOps(t, 5*time.Second)
	b, err := os.ReadFile(o.cfg)
	opsNoErr(t, err)
	opsNoErr(t, os.WriteFile(o.cfg, append(b, "tls:\n  reload_interval: 500ms\n"...), 0o600))
	p := o.start(t)
	elsewhere := t.TempDir()
	crt, key := filepath.Join(elsewhere, "crt"), filepath.Join(elsewhere, "key")
	opsNoErr(t, os.Link(o.cert("server.crt"), crt))
	opsNoErr(t, os.Link(o.cert("server.key"), key))
	leaf, serial := rlIssue(t, rlCA(t, o))
	rlWrite(t, key, leaf.KeyPEM)
	rlWrite(t, crt, leaf.CertPEM)
	rlWaitServed(t, o, p, serial, 5*time.Second)
	p.waitLog(t, rlReloaded("tls.reload_interval"))
	if l, ok := p.findLog(rlReloaded("file change")); ok {
		t.Errorf("the file watch saw the change (the test must not rely on it): %s", l.Line)
	}
	p.stop(t)
}
