package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/tlsproxy/tlsproxy/proxy/config"
	"github.com/tlsproxy/tlsproxy/proxy/tlsconf"
)

// rejAttemptTimeout bounds every bad client's exchange: a proxy that neither
// answers nor closes within it is hanging.
const rejAttemptTimeout = 10 * time.Second

// rejOutcome is what a rejected client saw.
type rejOutcome struct {
	local string // the client's address, as the proxy sees it ("remote")
	got   []byte // bytes received (decrypted, for TLS) before the end
	err   error  // what ended the exchange
}

// rejAttempt connects to addr as a client configured by cfg (nil: plain TCP,
// no TLS at all), sends PING and reads until the proxy ends the exchange.
func rejAttempt(addr string, cfg *tls.Config) rejOutcome {
	nc, err := net.DialTimeout("tcp", addr, rejAttemptTimeout)
	if err != nil {
		return rejOutcome{err: err}
	}
	defer nc.Close()
	o := rejOutcome{local: nc.LocalAddr().String()}
	nc.SetDeadline(time.Now().Add(rejAttemptTimeout))
	var c net.Conn = nc
	if cfg != nil {
		tc := tls.Client(nc, cfg)
		if o.err = tc.Handshake(); o.err != nil {
			return o
		}
		c = tc
	}
	if _, o.err = c.Write([]byte("PING\r\n")); o.err != nil {
		return o
	}
	buf := make([]byte, 512)
	for {
		n, err := c.Read(buf)
		o.got = append(o.got, buf[:n]...)
		if err != nil {
			o.err = err
			return o
		}
	}
}

// check fails the test unless the proxy ended the exchange itself (no
// timeout on the client's side) without ever answering the PING.
func (o rejOutcome) check(t testing.TB, wantErr []string) {
	t.Helper()
	if o.err == nil {
		t.Fatalf("bad client: no error")
	}
	var ne net.Error
	if errors.As(o.err, &ne) && ne.Timeout() {
		t.Fatalf("bad client: proxy neither answered nor closed within %s: %v", rejAttemptTimeout, o.err)
	}
	if strings.Contains(string(o.got), "PONG") {
		t.Fatalf("bad client got a reply from Redis: %q", o.got)
	}
	if len(o.got) != 0 {
		t.Fatalf("bad client received application data: %q", o.got)
	}
	if len(wantErr) == 0 {
		return
	}
	for _, w := range wantErr {
		if strings.Contains(o.err.Error(), w) {
			return
		}
	}
	t.Fatalf("bad client saw %q, want one of %q", o.err, wantErr)
}

// rejAlwaysPresent makes a client present cert even when the server's list
// of acceptable CAs does not include its issuer (crypto/tls would otherwise
// send no certificate at all).
func rejAlwaysPresent(cert tls.Certificate) func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }
}

// rejLogLines returns the proxy's JSON log lines whose message is msg.
func rejLogLines(t testing.TB, e *proxyEnv, msg string) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(e.logs.String()))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("log line is not JSON: %q: %v", sc.Text(), err)
		}
		if m["message"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// rejLineFor returns the "TLS handshake rejected" line for the client at
// remote, or nil.
func rejLineFor(t testing.TB, e *proxyEnv, remote string) map[string]any {
	t.Helper()
	for _, m := range rejLogLines(t, e, "TLS handshake rejected") {
		if m["remote"] == remote {
			return m
		}
	}
	return nil
}

// rejInfoInt reads an integer field of Redis's INFO section.
func rejInfoInt(t testing.TB, c *redis.Client, section, field string) int64 {
	t.Helper()
	info, err := c.Info(context.Background(), section).Result()
	if err != nil {
		t.Fatalf("INFO %s: %v", section, err)
	}
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatalf("INFO %s: %q", field, line)
			}
			return n
		}
	}
	t.Fatalf("INFO %s has no %s:\n%s", section, field, info)
	return 0
}

// rejStableUpstream waits until the proxy holds exactly its warm-up
// connections to Redis (with upstream.pool max_size 1 and min_idle 1: the
// shared connection the good client's PING opened and the idle one) next to
// the direct client's, and returns total_connections_received then.
func rejStableUpstream(t testing.TB, e *proxyEnv, direct *redis.Client) int64 {
	t.Helper()
	waitFor(t, "the proxy's warm-up connections to Redis", func() bool {
		return rejInfoInt(t, direct, "clients", "connected_clients") == 3
	})
	return rejInfoInt(t, direct, "stats", "total_connections_received")
}

// TestRejectHandshakes shows, for every kind of bad client, what the client
// sees, what the proxy logs, that no upstream connection is opened for it and
// that a good client keeps working meanwhile.
func TestRejectHandshakes(t *testing.T) {
	otherCA, err := tlsconf.NewCA("some other CA")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := otherCA.Issue(tlsconf.LeafOptions{CommonName: "app1", Client: true})
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := leaf.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	// Each case has its own proxy, hence its own PKI.
	base := func(p *pki) *tls.Config {
		return &tls.Config{RootCAs: p.ca.Pool(), ServerName: "127.0.0.1"}
	}
	cases := []struct {
		name    string
		minTLS  string
		client  func(t *testing.T, p *pki) *tls.Config // nil: plaintext RESP
		reason  string
		clients []string // what the client's error says, any of
	}{
		{name: "plaintext", reason: "not_tls",
			clients: []string{"EOF", "connection reset"}},
		{name: "no-client-cert", client: func(_ *testing.T, p *pki) *tls.Config { return base(p) }, reason: "no_client_cert",
			clients: []string{"remote error: tls: certificate required"}},
		{name: "unknown-ca", client: func(t *testing.T, p *pki) *tls.Config {
			c := base(p)
			c.GetClientCertificate = rejAlwaysPresent(foreign)
			return c
		}, reason: "unknown_ca", clients: []string{"remote error: tls: unknown certificate authority"}},
		{name: "expired", client: func(t *testing.T, p *pki) *tls.Config {
			c := base(p)
			c.Certificates = []tls.Certificate{p.issueClient(t, tlsconf.LeafOptions{CommonName: "app1",
				NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-24 * time.Hour)})}
			return c
		}, reason: "expired", clients: []string{"remote error: tls: expired certificate"}},
		{name: "tls1.1", client: func(t *testing.T, p *pki) *tls.Config {
			c := p.clientTLS()
			c.MinVersion, c.MaxVersion = tls.VersionTLS10, tls.VersionTLS11
			return c
		}, reason: "protocol_version", clients: []string{"protocol version"}},
		{name: "tls1.2-vs-min-1.3", minTLS: "1.3", client: func(t *testing.T, p *pki) *tls.Config {
			c := p.clientTLS()
			c.MaxVersion = tls.VersionTLS12
			return c
		}, reason: "protocol_version", clients: []string{"protocol version"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := startPlain(t, func(c *config.Config) {
				c.Upstream.Pool.MaxSize, c.Upstream.Pool.MinIdle, c.Upstream.Pool.MaxIdle = 1, 1, 1
				if tc.minTLS != "" {
					c.Listen.TLS.MinVersion = tc.minTLS
				}
			})
			ctx := context.Background()
			direct := e.direct(t)
			good := e.client(t, 2)
			if err := good.Ping(ctx).Err(); err != nil {
				t.Fatalf("good client before: %v", err)
			}
			before := rejStableUpstream(t, e, direct)
			var clientCfg *tls.Config // shared by every attempt: a tls.Config is safe for concurrent use
			if tc.client != nil {
				clientCfg = tc.client(t, e.pki)
			}
			cfg := func() *tls.Config { return clientCfg }

			// One attempt in detail: what the client saw and what was logged.
			o := rejAttempt(e.addr, cfg())
			t.Logf("the client sees: %v", o.err)
			o.check(t, tc.clients)
			var line map[string]any
			waitFor(t, "the rejection log line", func() bool {
				line = rejLineFor(t, e, o.local)
				return line != nil
			})
			if line["reason"] != tc.reason || line["level"] != "warn" {
				t.Fatalf("log line %v: want reason %q, level warn", line, tc.reason)
			}
			if s, _ := line["error"].(string); s == "" {
				t.Fatalf("log line %v has no error", line)
			}

			// A burst of 20 more while the good client keeps working.
			stop := make(chan struct{})
			var pings, pingErrs atomic.Int64
			var goodDone sync.WaitGroup
			goodDone.Add(1)
			go func() {
				defer goodDone.Done()
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					if err := good.Set(ctx, "good", i, 0).Err(); err != nil {
						t.Errorf("good client during the burst: %v", err)
						pingErrs.Add(1)
					}
					pings.Add(1)
				}
			}()
			var wg sync.WaitGroup
			outcomes := make([]rejOutcome, 20)
			for i := range outcomes {
				wg.Add(1)
				go func() {
					defer wg.Done()
					outcomes[i] = rejAttempt(e.addr, cfg())
				}()
			}
			wg.Wait()
			close(stop)
			goodDone.Wait()
			for _, o := range outcomes {
				o.check(t, tc.clients)
			}
			if pings.Load() == 0 || pingErrs.Load() != 0 {
				t.Fatalf("good client during the burst: %d commands, %d errors", pings.Load(), pingErrs.Load())
			}
			waitFor(t, "every rejection counted", func() bool { return e.srv.rejects.count(tc.reason) >= 21 })
			if n := e.srv.rejects.count(tc.reason); n != 21 {
				t.Fatalf("rejects.count(%q) = %d, want 21", tc.reason, n)
			}

			// The good client, and a new one, still work afterwards.
			if err := good.Ping(ctx).Err(); err != nil {
				t.Fatalf("good client after: %v", err)
			}
			if err := e.client(t, 2).Ping(ctx).Err(); err != nil {
				t.Fatalf("new good client after: %v", err)
			}
			if after := rejInfoInt(t, direct, "stats", "total_connections_received"); after != before {
				t.Fatalf("Redis accepted %d connections during the rejected burst", after-before)
			}
		})
	}
}

// TestRejectLogRateLimited floods the proxy with bad handshakes: the log
// gets at most the burst of lines per window, the counter gets every one, and
// the first line after the window says how many lines were left out.
func TestRejectLogRateLimited(t *testing.T) {
	e := startPlain(t, nil)
	const n = 100
	start := time.Now()
	var wg sync.WaitGroup
	work := make(chan struct{})
	for w := 0; w < 10; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range work {
				rejAttempt(e.addr, nil).check(t, nil)
			}
		}()
	}
	for i := 0; i < n; i++ {
		work <- struct{}{}
	}
	close(work)
	wg.Wait()
	waitFor(t, "every rejection counted", func() bool { return e.srv.rejects.count("not_tls") >= n })
	elapsed := time.Since(start)
	if got := e.srv.rejects.count("not_tls"); got != n {
		t.Fatalf("rejects.count(not_tls) = %d, want %d", got, n)
	}
	lines := rejLogLines(t, e, "TLS handshake rejected")
	r := e.srv.rejects
	windows := 1 + int(elapsed/r.interval) // the flood may span windows on a slow machine
	if len(lines) == 0 || len(lines) > r.burst*windows {
		t.Fatalf("%d rejection lines for %d bad handshakes over %s, want 1..%d", len(lines), n, elapsed, r.burst*windows)
	}
	if r.burst != 20 {
		t.Fatalf("rejectLog burst = %d; the design allows about 20 lines per window", r.burst)
	}

	// Start the next window without waiting 10s: the next line written
	// reports the lines dropped before it.
	r.mu.Lock()
	r.windowFrom = r.windowFrom.Add(-r.interval)
	r.mu.Unlock()
	rejAttempt(e.addr, nil).check(t, nil)
	waitFor(t, "the line after the window", func() bool {
		return len(rejLogLines(t, e, "TLS handshake rejected")) > len(lines)
	})
	lines = rejLogLines(t, e, "TLS handshake rejected")
	last := lines[len(lines)-1]
	if _, ok := last["suppressed_before"]; !ok {
		t.Fatalf("first line of a new window %v lacks suppressed_before", last)
	}
	// Every rejection is either a line or counted in a later line's
	// suppressed_before: nothing is lost.
	total := 0
	for _, l := range lines {
		total++
		if s, ok := l["suppressed_before"].(float64); ok {
			total += int(s)
		}
		if l["reason"] != "not_tls" {
			t.Fatalf("line %v: want reason not_tls", l)
		}
	}
	if total != n+1 {
		t.Fatalf("lines plus suppressed_before = %d, want %d", total, n+1)
	}
}

// TestHandshakeTimeoutSilentClients opens connections that never say a
// word: they do not delay a good client, and the proxy closes them after
// listen.handshake_timeout.
func TestHandshakeTimeoutSilentClients(t *testing.T) {
	e := startPlain(t, func(c *config.Config) { c.Listen.HandshakeTimeout = 500 * time.Millisecond })
	const n = 50
	silent := make([]net.Conn, n)
	for i := range silent {
		c, err := net.Dial("tcp", e.addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		silent[i] = c
	}

	// A good client connects and works while the silent ones hold their
	// sockets. A proxy that handshakes one connection at a time would make
	// it wait n × 500ms; 5s is the bound for "not delayed by them".
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	good := e.client(t, 2)
	for i := 0; i < 5; i++ {
		if err := good.Ping(ctx).Err(); err != nil {
			t.Fatalf("good client next to %d silent ones: %v", n, err)
		}
	}

	// Each silent connection is closed by the proxy: the read ends with EOF
	// (or a reset), not with the client's own deadline.
	var wg sync.WaitGroup
	for i, c := range silent {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			nread, err := c.Read(make([]byte, 1))
			if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("silent connection %d still open after 5s (handshake_timeout is 500ms)", i)
			} else if err == nil || nread != 0 {
				t.Errorf("silent connection %d: read %d bytes, %v; want the connection closed", i, nread, err)
			}
		}()
	}
	wg.Wait()
	waitFor(t, "every timeout counted", func() bool { return e.srv.rejects.count("timeout") >= n })
	if got := e.srv.rejects.count("timeout"); got != n {
		t.Fatalf("rejects.count(timeout) = %d, want %d", got, n)
	}
	lines := rejLogLines(t, e, "TLS handshake rejected")
	if len(lines) == 0 {
		t.Fatal("no rejection logged for the silent connections")
	}
	for _, l := range lines {
		if l["reason"] != "timeout" || l["remote"] == nil {
			t.Fatalf("line %v: want reason timeout and a remote", l)
		}
	}
	if err := good.Ping(context.Background()).Err(); err != nil {
		t.Fatalf("good client after: %v", err)
	}
}

// TestRejectVerifyIfGiven: with client_auth verify-if-given a client without
// a certificate is served, one with a certificate the CA did not sign is not.
func TestRejectVerifyIfGiven(t *testing.T) {
	e := startPlain(t, func(c *config.Config) { c.Listen.TLS.ClientAuth = "verify-if-given" })
	ctx := context.Background()
	anon := e.client(t, 2, func(o *redis.Options) {
		o.TLSConfig = &tls.Config{RootCAs: e.pki.ca.Pool(), ServerName: "127.0.0.1"}
	})
	if err := anon.Set(ctx, "anon", "yes", 0).Err(); err != nil {
		t.Fatalf("client without a certificate: %v", err)
	}
	if got, err := e.direct(t).Get(ctx, "anon").Result(); err != nil || got != "yes" {
		t.Fatalf("GET anon in Redis = %q, %v", got, err)
	}
	if err := e.client(t, 2).Ping(ctx).Err(); err != nil {
		t.Fatalf("client with a good certificate: %v", err)
	}

	otherCA, err := tlsconf.NewCA("some other CA")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := otherCA.Issue(tlsconf.LeafOptions{CommonName: "intruder", Client: true})
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := leaf.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	o := rejAttempt(e.addr, &tls.Config{RootCAs: e.pki.ca.Pool(), ServerName: "127.0.0.1", GetClientCertificate: rejAlwaysPresent(foreign)})
	o.check(t, []string{"remote error: tls: unknown certificate authority"})
	waitFor(t, "the rejection log line", func() bool { return rejLineFor(t, e, o.local) != nil })
	if l := rejLineFor(t, e, o.local); l["reason"] != "unknown_ca" {
		t.Fatalf("log line %v: want reason unknown_ca", l)
	}
	if e.srv.rejects.count("unknown_ca") != 1 {
		t.Fatalf("rejects.count(unknown_ca) = %d, want 1", e.srv.rejects.count("unknown_ca"))
	}
}

// TestRejectClientAuthNone: client_auth none serves anyone, and New says so
// loudly.
func TestRejectClientAuthNone(t *testing.T) {
	e := startPlain(t, func(c *config.Config) { c.Listen.TLS.ClientAuth = "none" })
	var warned bool
	for _, l := range rejLogLines(t, e, "WARNING: client certificates are not required: any client that can reach the port can use Redis") {
		warned = warned || l["level"] == "warn" && l["key"] == "listen.tls.client_auth"
	}
	if !warned || !strings.Contains(e.logs.String(), "client certificates are not required") {
		t.Fatalf("no warning about client_auth none in the log:\n%s", e.logs.String())
	}
	anon := e.client(t, 2, func(o *redis.Options) {
		o.TLSConfig = &tls.Config{RootCAs: e.pki.ca.Pool(), ServerName: "127.0.0.1"}
	})
	if err := anon.Ping(context.Background()).Err(); err != nil {
		t.Fatalf("client without a certificate: %v", err)
	}

	// The default, require, does not warn.
	quiet := startPlain(t, nil)
	if strings.Contains(quiet.logs.String(), "client certificates are not required") {
		t.Fatal("client_auth require logs the client_auth none warning")
	}
}
