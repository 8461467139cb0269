//go:build linux

// End-to-end tests: they build the tlsproxy binary and drive it the way a user
// (and a security reviewer) would, with a real redis-server behind it and the
// stock redis-cli and redis-benchmark in front of it. Everything listens on
// 127.0.0.1 only. Linux only: child processes get Pdeathsig so that a test
// binary killed by a timeout does not leave them running.

package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/tlsproxy/tlsproxy/internal/syncbuf"
	"github.com/tlsproxy/tlsproxy/internal/testredis"
	"github.com/tlsproxy/tlsproxy/proxy/tlsconf"
)

const (
	// e2eCmdTimeout bounds every short command (check, certs, redis-cli, ...).
	e2eCmdTimeout = 20 * time.Second
	// e2eStartTimeout bounds how long a started proxy may take to accept TLS.
	e2eStartTimeout = 10 * time.Second
	// e2eStopTimeout is "a few seconds": how long SIGTERM may take to stop the proxy.
	e2eStopTimeout = 5 * time.Second
)

// e2eDevFiles are the files `tlsproxy certs dev` writes.
var e2eDevFiles = []string{"ca.crt", "ca.key", "server.crt", "server.key", "client.crt", "client.key"}

// e2eFixture is what the subtests of TestE2E share: the built binary, the dev
// certificates and one password-protected redis-server.
type e2eFixture struct {
	bin      string
	certs    string // directory written by `tlsproxy certs dev`
	redis    *e2eRedis
	password string
	pwFile   string // upstream.password_file
}

func (f *e2eFixture) cert(name string) string { return filepath.Join(f.certs, name) }

// TestE2E builds the binary once and runs every end-to-end scenario against it.
// The scenarios that need a proxy each start their own, in parallel.
func TestE2E(t *testing.T) {
	for _, tool := range []string{"redis-server", "redis-cli", "redis-benchmark"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found on PATH (%v): run `make test`, which installs redis-server and redis-tools", tool, err)
		}
	}
	f := &e2eFixture{bin: e2eBuild(t)}

	t.Run("cli", func(t *testing.T) {
		t.Parallel()
		f.testCLI(t)
	})
	// The other scenarios use the certificates this one leaves behind, so they
	// live in TestE2E's temporary directory. The directory does not exist yet.
	f.certs = filepath.Join(t.TempDir(), "certs", "dev")
	if !t.Run("certs dev", f.testCertsDev) {
		t.FailNow()
	}

	f.password = "e2e-secret-" + e2eRandHex(t, 12)
	f.pwFile = filepath.Join(t.TempDir(), "redis-password")
	if err := os.WriteFile(f.pwFile, []byte(f.password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f.redis = e2eStartRedis(t, f.password)

	t.Run("proxy", func(t *testing.T) {
		t.Parallel()
		f.testProxy(t)
	})
	t.Run("env override", func(t *testing.T) {
		t.Parallel()
		f.testEnvOverride(t)
	})
	t.Run("config errors", func(t *testing.T) {
		t.Parallel()
		f.testConfigErrors(t)
	})
	t.Run("password redaction", func(t *testing.T) {
		t.Parallel()
		f.testRedaction(t)
	})
}

// e2eBuild runs `go build -o DIR/tlsproxy .` in this package's directory.
func e2eBuild(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
		if _, statErr := os.Stat(goBin); statErr != nil {
			t.Fatalf("cannot find the go command on PATH (%v) nor at %s", err, goBin)
		}
	}
	wd, err := os.Getwd() // go test runs the test binary in the package directory
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "tlsproxy")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goBin, "build", "-o", bin, ".")
	cmd.Dir = wd
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build -o %s . (in %s): %v\n%s", bin, wd, err, out)
	}
	return bin
}

// ---------------------------------------------------------------------------
// Scenarios

func (f *e2eFixture) testCLI(t *testing.T) {
	r := e2eRun(t, f.bin, nil, "version")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "tlsproxy ") || !strings.Contains(r.stdout, "go1.") {
		t.Errorf("tlsproxy version: %s", r)
	}

	r = e2eRun(t, f.bin, nil, "--help")
	if r.code != 0 {
		t.Errorf("tlsproxy --help: %s", r)
	}
	for _, cmd := range []string{"tlsproxy [run]", "tlsproxy check", "tlsproxy certs dev", "tlsproxy version"} {
		if !strings.Contains(r.stdout, cmd) {
			t.Errorf("tlsproxy --help does not mention %q: %s", cmd, r)
		}
	}

	r = e2eRun(t, f.bin, nil, "serve")
	if r.code != 2 || !strings.Contains(r.stderr, `unknown command "serve"`) {
		t.Errorf("tlsproxy serve: want exit 2 naming the command: %s", r)
	}
}

func (f *e2eFixture) testCertsDev(t *testing.T) {
	dir := f.certs
	r := e2eRun(t, f.bin, nil, "certs", "dev", "--out", dir)
	if r.code != 0 || !strings.Contains(r.stdout, "wrote development certificates") {
		t.Fatalf("certs dev: %s", r)
	}
	first := e2eReadDevFiles(t, dir)
	e2eCheckDevSet(t, dir)

	// A second run without --force refuses, names the file, changes nothing.
	r = e2eRun(t, f.bin, nil, "certs", "dev", "--out", dir)
	if r.code == 0 {
		t.Errorf("certs dev over existing files succeeded: %s", r)
	}
	if !strings.Contains(r.stderr, filepath.Join(dir, "ca.crt")) || !strings.Contains(r.stderr, "--force") {
		t.Errorf("certs dev refusal does not name %s and --force: %s", filepath.Join(dir, "ca.crt"), r)
	}
	if again := e2eReadDevFiles(t, dir); !e2eSameFiles(first, again) {
		t.Errorf("certs dev without --force modified files")
	}

	// Even when only some files exist, nothing is written: no mixed set.
	if err := os.Remove(filepath.Join(dir, "client.key")); err != nil {
		t.Fatal(err)
	}
	r = e2eRun(t, f.bin, nil, "certs", "dev", "--out", dir)
	if r.code == 0 || !strings.Contains(r.stderr, "refusing to overwrite") {
		t.Errorf("certs dev with a partial set: %s", r)
	}
	if _, err := os.Stat(filepath.Join(dir, "client.key")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("certs dev without --force wrote client.key next to an old set (stat: %v)", err)
	}
	for name, data := range first {
		if name == "client.key" {
			continue
		}
		if b, err := os.ReadFile(filepath.Join(dir, name)); err != nil || !bytes.Equal(b, data) {
			t.Errorf("%s changed by a refused certs dev (err %v)", name, err)
		}
	}

	// --force replaces the whole set and makes a loosened key private again.
	if err := os.Chmod(filepath.Join(dir, "server.key"), 0o644); err != nil {
		t.Fatal(err)
	}
	r = e2eRun(t, f.bin, nil, "certs", "dev", "--out", dir, "--force")
	if r.code != 0 {
		t.Fatalf("certs dev --force: %s", r)
	}
	forced := e2eReadDevFiles(t, dir)
	for _, name := range e2eDevFiles {
		if bytes.Equal(first[name], forced[name]) {
			t.Errorf("certs dev --force left %s unchanged", name)
		}
	}
	e2eCheckDevSet(t, dir)
}

// e2eCheckDevSet checks modes and that the certificates form a usable set.
func e2eCheckDevSet(t *testing.T, dir string) {
	t.Helper()
	for _, name := range e2eDevFiles {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Errorf("certs dev did not write %s: %v", name, err)
			continue
		}
		want := os.FileMode(0o644)
		if strings.HasSuffix(name, ".key") {
			want = 0o600
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s has mode %v, want %v", name, fi.Mode().Perm(), want)
		}
	}
	ca := e2eParseCert(t, filepath.Join(dir, "ca.crt"))
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	server := e2eParseCert(t, filepath.Join(dir, "server.crt"))
	for _, name := range []string{"localhost", "127.0.0.1", "::1"} {
		if _, err := server.Verify(x509.VerifyOptions{Roots: roots, DNSName: name}); err != nil {
			t.Errorf("server.crt is not valid for %s under ca.crt: %v", name, err)
		}
	}
	client := e2eParseCert(t, filepath.Join(dir, "client.crt"))
	if client.Subject.CommonName != "dev-client" {
		t.Errorf("client.crt CN %q, want dev-client", client.Subject.CommonName)
	}
	if _, err := client.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("client.crt is not a client certificate under ca.crt: %v", err)
	}
	for _, pair := range [][2]string{{"server.crt", "server.key"}, {"client.crt", "client.key"}} {
		if _, err := tls.LoadX509KeyPair(filepath.Join(dir, pair[0]), filepath.Join(dir, pair[1])); err != nil {
			t.Errorf("%s and %s do not match: %v", pair[0], pair[1], err)
		}
	}
}

func (f *e2eFixture) testProxy(t *testing.T) {
	addr := e2eFreeAddr(t)
	cfg := f.writeConfig(t, addr, "")
	if b, _ := os.ReadFile(cfg); bytes.Contains(b, []byte(f.password)) {
		t.Fatalf("test bug: the config file holds the password")
	}
	p := e2eStartProxy(t, f.bin, nil, "run", "--config", cfg)
	f.waitReady(t, p, addr)
	_, port, _ := net.SplitHostPort(addr)

	// The proxy says, once it reached Redis, that the link is not encrypted.
	warn := p.waitLog(t, func(l e2eLogLine) bool {
		return l.Message == "WARNING: Redis connection is not encrypted"
	})
	if warn.Level != "warn" || warn.Raw["tls"] != false || warn.Raw["loopback"] != true || warn.Raw["network"] != "tcp" {
		t.Errorf("unexpected encryption warning: %s", warn.Line)
	}

	tlsArgs := []string{"-h", "127.0.0.1", "-p", port, "--tls",
		"--cacert", f.cert("ca.crt"), "--cert", f.cert("client.crt"), "--key", f.cert("client.key")}

	t.Run("redis-cli without TLS is refused", func(t *testing.T) {
		r := e2eRun(t, "redis-cli", nil, "-h", "127.0.0.1", "-p", port, "ping")
		e2eWantRefused(t, r)
		p.waitLog(t, e2eRejected("not_tls"))
	})

	t.Run("redis-cli with TLS but no client certificate is refused", func(t *testing.T) {
		r := e2eRun(t, "redis-cli", nil, "-h", "127.0.0.1", "-p", port, "--tls", "--cacert", f.cert("ca.crt"), "ping")
		e2eWantRefused(t, r)
		p.waitLog(t, e2eRejected("no_client_cert"))
	})

	t.Run("redis-cli with a certificate from another CA is refused", func(t *testing.T) {
		certFile, keyFile := e2eForeignClient(t)
		r := e2eRun(t, "redis-cli", nil, "-h", "127.0.0.1", "-p", port, "--tls",
			"--cacert", f.cert("ca.crt"), "--cert", certFile, "--key", keyFile, "ping")
		e2eWantRefused(t, r)
		p.waitLog(t, e2eRejected("unknown_ca"))
	})

	t.Run("redis-cli with mutual TLS", func(t *testing.T) {
		r := e2eRun(t, "redis-cli", nil, append(tlsArgs, "ping")...)
		if r.code != 0 || strings.TrimSpace(r.stdout) != "PONG" {
			t.Fatalf("redis-cli --tls ping: %s", r)
		}
		key, val := "e2e:cli:"+e2eRandHex(t, 4), "value-"+e2eRandHex(t, 8)
		if r := e2eRun(t, "redis-cli", nil, append(tlsArgs, "set", key, val)...); r.code != 0 || strings.TrimSpace(r.stdout) != "OK" {
			t.Fatalf("redis-cli set: %s", r)
		}
		if r := e2eRun(t, "redis-cli", nil, append(tlsArgs, "get", key)...); r.code != 0 || strings.TrimSpace(r.stdout) != val {
			t.Fatalf("redis-cli get: want %q: %s", val, r)
		}
		// The value really is in Redis, not only in the proxy's view.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if got, err := f.redis.client.Get(ctx, key).Result(); err != nil || got != val {
			t.Fatalf("GET %s directly from Redis: %q, %v; want %q", key, got, err, val)
		}
	})

	t.Run("redis-benchmark", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := f.redis.client.FlushAll(ctx).Err(); err != nil {
			t.Fatalf("FLUSHALL directly on Redis: %v", err)
		}
		args := append(tlsArgs[:len(tlsArgs):len(tlsArgs)], "-t", "set,get", "-n", "20000", "-c", "20", "-P", "16", "--csv")
		r := e2eRun(t, "redis-benchmark", nil, args...)
		if r.code != 0 {
			t.Fatalf("redis-benchmark: %s", r)
		}
		rows := map[string]bool{}
		for _, line := range strings.Split(r.stdout, "\n") {
			if fields := strings.SplitN(line, ",", 2); len(fields) == 2 {
				rows[strings.Trim(fields[0], `"`)] = true
			}
		}
		if !rows["SET"] || !rows["GET"] {
			t.Errorf("redis-benchmark reported no SET and GET rows: %s", r)
		}
		for _, bad := range []string{"Error", "ERR"} {
			if strings.Contains(r.stdout, bad) || strings.Contains(r.stderr, bad) {
				t.Errorf("redis-benchmark output contains %q: %s", bad, r)
			}
		}
		n, err := f.redis.client.DBSize(ctx).Result()
		if err != nil || n <= 0 {
			t.Errorf("DBSIZE directly on Redis after the benchmark: %d, %v; want > 0", n, err)
		}
		if n, err := f.redis.client.Exists(ctx, "key:__rand_int__").Result(); err != nil || n != 1 {
			t.Errorf("the benchmark's key is not in Redis: EXISTS = %d, %v", n, err)
		}
	})

	t.Run("SIGTERM", func(t *testing.T) {
		// An open, idle client must not hold up the shutdown.
		conn := f.dialTLS(t, addr)
		defer conn.Close()
		if reply := e2ePing(t, conn); reply != "+PONG" {
			t.Fatalf("PING before SIGTERM: %q", reply)
		}
		p.stop(t)
		_ = conn.SetReadDeadline(time.Now().Add(e2eStopTimeout))
		if _, err := conn.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("the client connection is still open after shutdown (read: %v)", err)
		}
		if !p.hasLog(func(l e2eLogLine) bool { return l.Message == "stopped" }) {
			t.Errorf("no \"stopped\" log line:\n%s", p.stderr.String())
		}
	})

	// Checked last, after every command above went through the proxy.
	p.stop(t)
	for _, out := range []struct{ name, text string }{{"stderr", p.stderr.String()}, {"stdout", p.stdout.String()}} {
		if strings.Contains(out.text, f.password) {
			t.Errorf("the Redis password appears on the proxy's %s:\n%s", out.name, out.text)
		}
	}
	p.checkJSONLog(t)
}

func (f *e2eFixture) testEnvOverride(t *testing.T) {
	fileAddr := e2eFreeAddr(t)
	envAddr := e2eFreeAddr(t)
	for envAddr == fileAddr {
		envAddr = e2eFreeAddr(t)
	}
	cfg := f.writeConfig(t, fileAddr, "")
	env := []string{"TLSPROXY_LISTEN_ADDRESS=" + envAddr}

	if r := e2eRun(t, f.bin, env, "check", "--config", cfg); r.code != 0 || !strings.Contains(r.stdout, "listen "+envAddr+" ") {
		t.Errorf("check with TLSPROXY_LISTEN_ADDRESS=%s: %s", envAddr, r)
	}

	p := e2eStartProxy(t, f.bin, env, "run", "--config", cfg)
	f.waitReady(t, p, envAddr)
	l := p.waitLog(t, func(l e2eLogLine) bool { return l.Message == "listening" })
	if l.Raw["address"] != envAddr {
		t.Errorf("listening on %v, want %s (from TLSPROXY_LISTEN_ADDRESS): %s", l.Raw["address"], envAddr, l.Line)
	}
	if c, err := net.DialTimeout("tcp", fileAddr, time.Second); err == nil {
		c.Close()
		t.Errorf("the proxy (also) listens on %s from the config file; the environment should win", fileAddr)
	}
	p.stop(t)
}

func (f *e2eFixture) testConfigErrors(t *testing.T) {
	good := f.writeConfig(t, e2eFreeAddr(t), "")
	r := e2eRun(t, f.bin, nil, "check", "--config", good)
	if r.code != 0 || !strings.Contains(r.stdout, "configuration OK") {
		t.Errorf("check of a good config: %s", r)
	}
	if strings.Contains(r.stdout+r.stderr, f.password) {
		t.Errorf("check prints the Redis password: %s", r)
	}

	t.Run("unknown key", func(t *testing.T) {
		cfg := f.writeConfig(t, e2eFreeAddr(t), "  adress: 127.0.0.1:1\n")
		for _, cmd := range []string{"check", "run"} {
			r := e2eRun(t, f.bin, nil, cmd, "--config", cfg)
			if r.code == 0 || r.timedOut {
				t.Errorf("%s with an unknown key: %s", cmd, r)
			}
			if !strings.Contains(r.stderr, "listen.adress") {
				t.Errorf("%s does not name the unknown key listen.adress: %s", cmd, r)
			}
			if strings.Contains(r.stderr, `"listening"`) {
				t.Errorf("%s started listening despite the unknown key: %s", cmd, r)
			}
		}
	})

	t.Run("key does not match certificate", func(t *testing.T) {
		addr := e2eFreeAddr(t)
		cfg := f.writeConfigTLS(t, addr, f.cert("server.crt"), f.cert("client.key"), "")
		for _, cmd := range []string{"run", "check"} {
			r := e2eRun(t, f.bin, nil, cmd, "--config", cfg)
			if r.code == 0 || r.timedOut {
				t.Errorf("%s with a mismatched key: %s", cmd, r)
			}
			for _, file := range []string{f.cert("server.crt"), f.cert("client.key")} {
				if !strings.Contains(r.stderr, file) {
					t.Errorf("%s does not name %s: %s", cmd, file, r)
				}
			}
			if strings.Contains(r.stderr, `"listening"`) {
				t.Errorf("%s started listening with a mismatched key: %s", cmd, r)
			}
		}
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			t.Errorf("something listens on %s after a failed start", addr)
		}
	})
}

// testRedaction puts a password in upstream.url, as some users will, and checks
// that check, run's logs and the error a client gets never show it.
func (f *e2eFixture) testRedaction(t *testing.T) {
	secret := "url-secret-" + e2eRandHex(t, 8)
	deadRedis := e2eFreeAddr(t) // nothing listens there
	withPW := "redis://:" + secret + "@" + deadRedis

	t.Run("check", func(t *testing.T) {
		cfg := f.writeConfigFull(t, e2eFreeAddr(t), f.cert("server.crt"), f.cert("server.key"), "", withPW, "")
		r := e2eRun(t, f.bin, nil, "check", "--config", cfg, "--offline")
		if r.code != 0 || strings.Contains(r.stdout+r.stderr, secret) {
			t.Errorf("check --offline with a password in upstream.url: want exit 0 without the password: %s", r)
		}
		// Online, the unreachable Redis is a FAIL, whose reason must not show
		// the password either.
		r = e2eRun(t, f.bin, nil, "check", "--config", cfg)
		if r.code != 1 || !strings.Contains(r.stdout, "FAIL") || strings.Contains(r.stdout+r.stderr, secret) {
			t.Errorf("check with an unreachable Redis: want exit 1 with a FAIL line and no password: %s", r)
		}
		// A password in both the URL and password_file is refused, still without showing it.
		cfg = f.writeConfigFull(t, e2eFreeAddr(t), f.cert("server.crt"), f.cert("server.key"), "", withPW, f.pwFile)
		r = e2eRun(t, f.bin, nil, "check", "--config", cfg)
		if r.code == 0 || !strings.Contains(r.stderr, "upstream.password_file") ||
			strings.Contains(r.stdout+r.stderr, secret) || strings.Contains(r.stdout+r.stderr, f.password) {
			t.Errorf("check with a password in upstream.url and upstream.password_file: %s", r)
		}
		// An unparsable URL is reported by key, without the password.
		bad := "redis://:" + secret + "@127.0.0.1:notaport"
		cfg = f.writeConfigFull(t, e2eFreeAddr(t), f.cert("server.crt"), f.cert("server.key"), "", bad, "")
		r = e2eRun(t, f.bin, nil, "check", "--config", cfg)
		if r.code == 0 || !strings.Contains(r.stderr, "upstream.url") || strings.Contains(r.stdout+r.stderr, secret) {
			t.Errorf("check with an unparsable upstream.url holding a password: %s", r)
		}
	})

	t.Run("run", func(t *testing.T) {
		addr := e2eFreeAddr(t)
		cfg := f.writeConfigFull(t, addr, f.cert("server.crt"), f.cert("server.key"), "", withPW, "")
		p := e2eStartProxy(t, f.bin, nil, "run", "--config", cfg)
		p.waitLog(t, func(l e2eLogLine) bool { return l.Message == "cannot connect to Redis" })
		// A client gets an error reply (Redis is down), which must not hold the password either.
		var conn *tls.Conn
		deadline := time.Now().Add(e2eStartTimeout)
		for {
			c, err := f.tryDialTLS(t, addr)
			if err == nil {
				conn = c
				break
			}
			if time.Now().After(deadline) || p.exited() {
				t.Fatalf("no TLS connection to %s: %v\n%s", addr, err, p.stderr.String())
			}
			time.Sleep(25 * time.Millisecond)
		}
		defer conn.Close()
		reply, err := e2eTryPing(conn)
		if err == nil && !strings.HasPrefix(reply, "-") {
			t.Errorf("PING with Redis down: got %q, want an error reply", reply)
		}
		if strings.Contains(reply, secret) {
			t.Errorf("the error reply to the client holds the Redis password: %q", reply)
		}
		p.stop(t)
		if strings.Contains(p.stderr.String()+p.stdout.String(), secret) {
			t.Errorf("the Redis password from upstream.url appears in the proxy's output:\n%s", p.stderr.String())
		}
		p.checkJSONLog(t)
	})
}

// ---------------------------------------------------------------------------
// Config files and TLS clients

// writeConfig writes a config using the dev certificates and the shared Redis;
// listenExtra is appended to the listen section (two-space indented lines).
func (f *e2eFixture) writeConfig(t *testing.T, addr, listenExtra string) string {
	t.Helper()
	return f.writeConfigTLS(t, addr, f.cert("server.crt"), f.cert("server.key"), listenExtra)
}

func (f *e2eFixture) writeConfigTLS(t *testing.T, addr, certFile, keyFile, listenExtra string) string {
	t.Helper()
	return f.writeConfigFull(t, addr, certFile, keyFile, listenExtra, "redis://"+f.redis.addr, f.pwFile)
}

func (f *e2eFixture) writeConfigFull(t *testing.T, addr, certFile, keyFile, listenExtra, upstreamURL, pwFile string) string {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "listen:\n  address: %q\n", addr)
	b.WriteString(listenExtra)
	fmt.Fprintf(&b, "  tls:\n    cert_file: %q\n    key_file: %q\n    client_ca_file: %q\n", certFile, keyFile, f.cert("ca.crt"))
	fmt.Fprintf(&b, "upstream:\n  url: %q\n  password_file: %q\n", upstreamURL, pwFile)
	// Proxies run in parallel: each gets an admin endpoint of its own.
	fmt.Fprintf(&b, "admin:\n  address: %q\n", e2eFreeAddr(t))
	fmt.Fprintf(&b, "log:\n  level: info\n  format: json\n")
	path := filepath.Join(t.TempDir(), "tlsproxy.yaml")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func (f *e2eFixture) clientTLS(t *testing.T) *tls.Config {
	t.Helper()
	caPEM, err := os.ReadFile(f.cert("ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		t.Fatalf("no certificate in %s", f.cert("ca.crt"))
	}
	pair, err := tls.LoadX509KeyPair(f.cert("client.crt"), f.cert("client.key"))
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
}

// dialTLS connects with the dev client certificate, verifying the proxy's
// certificate for 127.0.0.1 against the dev CA.
func (f *e2eFixture) dialTLS(t *testing.T, addr string) *tls.Conn {
	t.Helper()
	conn, err := f.tryDialTLS(t, addr)
	if err != nil {
		t.Fatalf("TLS connection to %s: %v", addr, err)
	}
	return conn
}

func (f *e2eFixture) tryDialTLS(t *testing.T, addr string) (*tls.Conn, error) {
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: time.Second}, Config: f.clientTLS(t)}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return c.(*tls.Conn), nil
}

// waitReady waits until the proxy at addr completes a mutual-TLS handshake and
// answers PING (through Redis), failing early if the process exits.
func (f *e2eFixture) waitReady(t *testing.T, p *e2eProc, addr string) {
	t.Helper()
	deadline := time.Now().Add(e2eStartTimeout)
	var lastErr error
	for {
		if p.exited() {
			t.Fatalf("tlsproxy exited before accepting connections (%v):\n%s", p.waitErr, p.stderr.String())
		}
		if conn, err := f.tryDialTLS(t, addr); err == nil {
			reply, perr := e2eTryPing(conn)
			conn.Close()
			if perr == nil && reply == "+PONG" {
				return
			}
			lastErr = fmt.Errorf("PING: %q, %v", reply, perr)
		} else {
			lastErr = err
		}
		if time.Now().After(deadline) {
			t.Fatalf("tlsproxy not ready on %s after %s: %v\n%s", addr, e2eStartTimeout, lastErr, p.stderr.String())
		}
		time.Sleep(25 * time.Millisecond)
	}
}

func e2ePing(t *testing.T, conn net.Conn) string {
	t.Helper()
	reply, err := e2eTryPing(conn)
	if err != nil {
		t.Fatalf("PING: %v", err)
	}
	return reply
}

func e2eTryPing(conn net.Conn) (string, error) {
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	defer conn.SetDeadline(time.Time{})
	if _, err := io.WriteString(conn, "*1\r\n$4\r\nPING\r\n"); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	return strings.TrimRight(line, "\r\n"), err
}

// e2eForeignClient writes a client certificate issued by a CA the proxy does
// not trust.
func e2eForeignClient(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	ca, err := tlsconf.NewCA("e2e foreign CA")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Issue(tlsconf.LeafOptions{CommonName: "dev-client", Client: true})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "client.crt"), filepath.Join(dir, "client.key")
	if err := os.WriteFile(certFile, leaf.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, leaf.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// e2eWantRefused checks that a redis-cli command did not get an answer.
func e2eWantRefused(t *testing.T, r e2eResult) {
	t.Helper()
	if strings.Contains(r.stdout+r.stderr, "PONG") {
		t.Fatalf("the proxy answered a client it should refuse: %s", r)
	}
	if r.code == 0 && !strings.Contains(r.stdout+r.stderr, "rror") {
		t.Fatalf("redis-cli neither failed nor reported an error: %s", r)
	}
	if r.timedOut {
		t.Fatalf("redis-cli hung instead of being refused: %s", r)
	}
}

func e2eRejected(reason string) func(e2eLogLine) bool {
	return func(l e2eLogLine) bool { return l.Message == "TLS handshake rejected" && l.Raw["reason"] == reason }
}

// ---------------------------------------------------------------------------
// Processes

// e2eResult is a finished command.
type e2eResult struct {
	args           []string
	code           int
	timedOut       bool
	stdout, stderr string
}

func (r e2eResult) String() string {
	return fmt.Sprintf("`%s` exit %d (timed out: %v)\n--- stdout ---\n%s\n--- stderr ---\n%s",
		strings.Join(r.args, " "), r.code, r.timedOut, r.stdout, r.stderr)
}

// e2eEnviron is the test's environment without TLSPROXY_* variables, plus extra.
func e2eEnviron(extra []string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "TLSPROXY_") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// e2eRun runs a command to completion (at most e2eCmdTimeout).
func e2eRun(t *testing.T, name string, env []string, args ...string) e2eResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), e2eCmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = e2eEnviron(env)
	cmd.Dir = t.TempDir()
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := e2eResult{args: append([]string{filepath.Base(name)}, args...), stdout: stdout.String(), stderr: stderr.String()}
	var exitErr *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exitErr):
		r.code = exitErr.ExitCode()
		r.timedOut = ctx.Err() != nil
	default:
		t.Fatalf("run %s: %v", name, err)
	}
	return r
}

// e2eProc is a long-running tlsproxy.
type e2eProc struct {
	cmd            *exec.Cmd
	stdout, stderr *syncbuf.Buffer
	done           chan struct{}
	waitErr        error // valid once done is closed
	stopOnce       sync.Once
}

func e2eStartProxy(t *testing.T, bin string, env []string, args ...string) *e2eProc {
	t.Helper()
	p := &e2eProc{stdout: &syncbuf.Buffer{}, stderr: &syncbuf.Buffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = e2eEnviron(env)
	p.cmd.Dir = t.TempDir()
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	go func() {
		p.waitErr = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		if !p.exited() {
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

func (p *e2eProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM (once) and requires exit status 0 within e2eStopTimeout.
func (p *e2eProc) stop(t *testing.T) {
	t.Helper()
	p.stopOnce.Do(func() {
		if p.exited() {
			t.Errorf("tlsproxy exited before SIGTERM (%v):\n%s", p.waitErr, p.stderr.String())
			return
		}
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatalf("SIGTERM: %v", err)
		}
		select {
		case <-p.done:
		case <-time.After(e2eStopTimeout):
			_ = p.cmd.Process.Kill()
			<-p.done
			t.Errorf("tlsproxy did not stop within %s of SIGTERM:\n%s", e2eStopTimeout, p.stderr.String())
			return
		}
		if code := p.cmd.ProcessState.ExitCode(); code != 0 {
			t.Errorf("tlsproxy exited with %d after SIGTERM (%v), want 0:\n%s", code, p.waitErr, p.stderr.String())
		}
	})
}

// e2eLogLine is one JSON log line.
type e2eLogLine struct {
	Level   string
	Message string
	Line    string
	Raw     map[string]any
}

func e2eParseLog(s string) (lines []e2eLogLine, bad []string) {
	for _, line := range strings.Split(s, "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		var raw map[string]any
		if err := json.Unmarshal([]byte(line), &raw); err != nil {
			bad = append(bad, line)
			continue
		}
		level, _ := raw["level"].(string)
		msg, _ := raw["message"].(string)
		lines = append(lines, e2eLogLine{Level: level, Message: msg, Line: line, Raw: raw})
	}
	return lines, bad
}

func (p *e2eProc) hasLog(match func(e2eLogLine) bool) bool {
	_, ok := p.findLog(match)
	return ok
}

func (p *e2eProc) findLog(match func(e2eLogLine) bool) (e2eLogLine, bool) {
	lines, _ := e2eParseLog(p.stderr.String())
	for _, l := range lines {
		if match(l) {
			return l, true
		}
	}
	return e2eLogLine{}, false
}

// waitLog waits (a few seconds) for a log line matching match.
func (p *e2eProc) waitLog(t *testing.T, match func(e2eLogLine) bool) e2eLogLine {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if l, ok := p.findLog(match); ok {
			return l
		}
		if time.Now().After(deadline) || p.exited() {
			t.Fatalf("expected log line not found in stderr:\n%s", p.stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkJSONLog requires stderr to be JSON lines only (the default log format).
func (p *e2eProc) checkJSONLog(t *testing.T) {
	t.Helper()
	if _, bad := e2eParseLog(p.stderr.String()); len(bad) > 0 {
		t.Errorf("stderr has lines that are not JSON:\n%s", strings.Join(bad, "\n"))
	}
}

// ---------------------------------------------------------------------------
// Redis

// e2eRedis is a password-protected redis-server on a loopback port.
type e2eRedis struct {
	addr   string
	client *redis.Client
}

func e2eStartRedis(t *testing.T, password string) *e2eRedis {
	t.Helper()
	rs := testredis.Start(t, testredis.Options{Password: password})
	client := redis.NewClient(&redis.Options{Addr: rs.Addr, Password: password})
	t.Cleanup(func() { client.Close() })
	return &e2eRedis{addr: rs.Addr, client: client}
}

// ---------------------------------------------------------------------------
// Small helpers

func e2eFreeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(l.Addr().(*net.TCPAddr).Port))
}

func e2eRandHex(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

func e2eReadDevFiles(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	for _, name := range e2eDevFiles {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatalf("read %s: %v", name, err)
		}
		files[name] = b
	}
	return files
}

func e2eSameFiles(a, b map[string][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for name, data := range a {
		if !bytes.Equal(data, b[name]) {
			return false
		}
	}
	return true
}

func e2eParseCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "CERTIFICATE" {
		t.Fatalf("%s: no PEM certificate", path)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return cert
}
