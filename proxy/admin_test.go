package proxy

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tlsproxy/tlsproxy/internal/testredis"
	"github.com/tlsproxy/tlsproxy/proxy/config"
)

// adminGet GETs path from the proxy's admin endpoint.
func adminGet(t testing.TB, e *proxyEnv, path string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + e.admin + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// metric returns the value of the sample `name{labels}` (labels as
// Prometheus writes them, e.g. `command="get"`; "" for none) in a scrape of
// /metrics, or -1 when it is absent.
func metric(t testing.TB, e *proxyEnv, name, labels string) float64 {
	t.Helper()
	_, body := adminGet(t, e, "/metrics")
	want := name
	if labels != "" {
		want += "{" + labels + "}"
	}
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, want+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return f
		}
	}
	return -1
}

// TestMetricsCount: commands and error replies are counted by command, on
// shared and dedicated connections alike; sessions holding a dedicated
// connection are counted by why; the upstream connections by kind.
func TestMetricsCount(t *testing.T) {
	e := startPlain(t, nil)
	ctx := context.Background()
	c := safetyProxy(t, e)
	c.send(t, cmd("SET", "m:s", "v")+cmd("GET", "m:s")+cmd("GET", "m:s")+cmd("INCR", "m:s")+cmd("NOSUCH")+
		cmd("MULTI")+cmd("INCR", "m:s")+cmd("EXEC")+cmd("HINCRBY", "m:s", "f", "1"))
	c.frames(t, 9, safetyReplyWait)
	for _, tc := range []struct {
		name, labels string
		want         float64
	}{
		{"tlsproxy_commands_total", `command="set"`, 1},
		{"tlsproxy_commands_total", `command="get"`, 2},
		{"tlsproxy_commands_total", `command="incr"`, 2},
		{"tlsproxy_commands_total", `command="other"`, 1},
		{"tlsproxy_command_errors_total", `command="incr"`, 1}, // on a shared connection; the one in MULTI fails inside EXEC's reply
		{"tlsproxy_command_errors_total", `command="other"`, 1},
		{"tlsproxy_command_errors_total", `command="hincrby"`, 1}, // on the dedicated connection MULTI took
		{"tlsproxy_command_errors_total", `command="get"`, -1},
		{"tlsproxy_client_connections", "", 1},
		{"tlsproxy_upstream_up", "", 1},
	} {
		if got := metric(t, e, tc.name, tc.labels); got != tc.want {
			t.Errorf("%s{%s} = %v, want %v", tc.name, tc.labels, got, tc.want)
		}
	}

	// A session in a transaction, a subscriber and a blocked client.
	tx, sub, blocked := safetyProxy(t, e), safetyProxy(t, e), safetyProxy(t, e)
	tx.send(t, cmd("MULTI"))
	sub.send(t, cmd("SUBSCRIBE", "m:ch"))
	blocked.send(t, cmd("BLPOP", "m:q", "0"))
	tx.frames(t, 1, safetyReplyWait)
	sub.frames(t, 1, safetyReplyWait)
	blockedConn(t, e, "blpop")
	for _, reason := range []string{"transaction", "pubsub", "blocking"} {
		if got := metric(t, e, "tlsproxy_pinned_sessions", `reason="`+reason+`"`); got != 1 {
			t.Errorf("pinned sessions (%s) = %v, want 1", reason, got)
		}
	}
	if got := metric(t, e, "tlsproxy_upstream_connections", `kind="pinned"`); got != 3 {
		t.Errorf("pinned upstream connections = %v, want 3", got)
	}
	if got := metric(t, e, "tlsproxy_upstream_connections", `kind="shared"`); got < 1 {
		t.Errorf("shared upstream connections = %v", got)
	}
	if err := e.direct(t).RPush(ctx, "m:q", "x").Err(); err != nil {
		t.Fatal(err)
	}
	blocked.frames(t, 1, safetyReplyWait)
	waitFor(t, "the served BLPOP to give its connection back", func() bool {
		return metric(t, e, "tlsproxy_pinned_sessions", `reason="blocking"`) == 0
	})
	if got := metric(t, e, "tlsproxy_bytes_total", `direction="received"`); got <= 0 {
		t.Errorf("bytes received = %v", got)
	}
}

// TestStatusJSON: /status says what an operator's script needs, and
// /healthz and /readyz answer.
func TestStatusJSON(t *testing.T) {
	e := startPlain(t, nil)
	code, body := adminGet(t, e, "/status")
	if code != 200 {
		t.Fatalf("/status: %d %s", code, body)
	}
	var st struct {
		State    string
		Version  string
		Listen   string
		Upstream struct {
			Address   string
			Encrypted bool
			Up        bool
		}
		Connections struct {
			Clients    int64 `json:"clients"`
			MaxClients int64 `json:"max_clients"`
		}
		Certificates []struct {
			Role, Subject, Serial string
			NotAfter              time.Time `json:"not_after"`
			DaysLeft              int       `json:"days_left"`
		}
	}
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatalf("%v: %s", err, body)
	}
	if st.State != "serving" || st.Listen != e.addr || st.Upstream.Address != e.redis.Addr || st.Upstream.Encrypted || !st.Upstream.Up || st.Connections.MaxClients != 10000 {
		t.Fatalf("/status = %+v", st)
	}
	roles := map[string]bool{}
	for _, c := range st.Certificates {
		roles[c.Role] = true
		if c.Subject == "" || c.Serial == "" || c.NotAfter.IsZero() || c.DaysLeft != int(time.Until(c.NotAfter).Hours()/24) {
			t.Errorf("certificate %+v", c)
		}
	}
	if !roles["server"] || !roles["client-ca"] {
		t.Errorf("certificates by role: %v", roles)
	}
	for path, want := range map[string]string{"/healthz": "ok\n", "/readyz": "ready\n"} {
		if code, body := adminGet(t, e, path); code != 200 || body != want {
			t.Errorf("%s: %d %q", path, code, body)
		}
	}
}

// TestMaxClients: the client over limits.max_clients gets Redis's error and
// is closed; the others are untouched, and a place that frees up is taken.
func TestMaxClients(t *testing.T) {
	e := startPlain(t, func(c *config.Config) { c.Limits.MaxClients = 2 })
	a, b := safetyProxy(t, e), safetyProxy(t, e)
	roundTrip(t, a.c, cmd("PING"), "+PONG\r\n")
	roundTrip(t, b.c, cmd("SET", "mc", "1"), "+OK\r\n")
	over := safetyProxy(t, e)
	if got := over.frames(t, 1, safetyReplyWait)[0]; got != "-ERR max number of clients reached\r\n" {
		t.Fatalf("third client: %q", got)
	}
	over.expectClosed(t)
	roundTrip(t, a.c, cmd("GET", "mc"), "$1\r\n1\r\n")
	if got := metric(t, e, "tlsproxy_client_disconnects_total", `reason="max_clients"`); got != 1 {
		t.Errorf("max_clients disconnects = %v", got)
	}
	if !contains(e.logs.String(), "limits.max_clients reached") {
		t.Error("no log line for the refused client")
	}
	b.c.Close()
	waitFor(t, "the closed client to leave", func() bool { return metric(t, e, "tlsproxy_client_connections", "") == 1 })
	c := safetyProxy(t, e)
	roundTrip(t, c.c, cmd("PING"), "+PONG\r\n")
}

// TestIdleTimeout: an idle client is closed after limits.idle_timeout; a
// subscriber and a client blocked in a command are not, as in Redis.
func TestIdleTimeout(t *testing.T) {
	e := startPlain(t, func(c *config.Config) { c.Limits.IdleTimeout = 300 * time.Millisecond })
	idle, sub, blocked, busy := safetyProxy(t, e), safetyProxy(t, e), safetyProxy(t, e), safetyProxy(t, e)
	roundTrip(t, idle.c, cmd("PING"), "+PONG\r\n")
	sub.send(t, cmd("SUBSCRIBE", "it:ch"))
	sub.frames(t, 1, safetyReplyWait)
	blocked.send(t, cmd("BLPOP", "it:q", "0"))
	blockedConn(t, e, "blpop")
	for range 8 { // busy talks more often than the timeout
		roundTrip(t, busy.c, cmd("PING"), "+PONG\r\n")
		time.Sleep(100 * time.Millisecond)
	}
	idle.expectClosed(t)
	if err := e.direct(t).Publish(context.Background(), "it:ch", "still here").Err(); err != nil {
		t.Fatal(err)
	}
	if got := sub.frames(t, 1, safetyReplyWait)[0]; !strings.Contains(got, "still here") {
		t.Fatalf("subscriber after the idle timeout: %q", got)
	}
	if err := e.direct(t).RPush(context.Background(), "it:q", "x").Err(); err != nil {
		t.Fatal(err)
	}
	if got := blocked.frames(t, 1, safetyReplyWait)[0]; got != "*2\r\n$4\r\nit:q\r\n$1\r\nx\r\n" {
		t.Fatalf("blocked client after the idle timeout: %q", got)
	}
	if got := metric(t, e, "tlsproxy_client_disconnects_total", `reason="idle_timeout"`); got != 1 {
		t.Errorf("idle_timeout disconnects = %v, want 1", got)
	}
}

// TestOutputBufferLimit: a client that asks for many large replies and
// reads none is disconnected once the proxy holds more than
// limits.client_output_buffer for it, long before the write timeout, and the
// client sharing its upstream connection never waits for it.
func TestOutputBufferLimit(t *testing.T) {
	old := clientWriteTimeout
	clientWriteTimeout = time.Minute // the limit, not the timeout, must act
	t.Cleanup(func() { clientWriteTimeout = old })
	e := startPlain(t, func(c *config.Config) {
		c.Upstream.Pool.MaxSize = 1
		c.Limits.ClientOutputBuffer = 4 << 20
	})
	ctx := context.Background()
	if err := e.direct(t).Set(ctx, "ob:big", strings.Repeat("x", 1<<20), 0).Err(); err != nil {
		t.Fatal(err)
	}
	stuck := e.rawConn(t)
	stuck.Write([]byte(strings.Repeat(cmd("GET", "ob:big"), 64))) // 64 MiB of replies, never read
	other := e.client(t, 2)
	start := time.Now()
	for i := range 100 {
		if err := other.Incr(ctx, "ob:n").Err(); err != nil {
			t.Fatalf("INCR %d beside the stuck client: %v", i, err)
		}
	}
	waitFor(t, "the stuck client to be disconnected", func() bool {
		return contains(e.logs.String(), "client output buffer limit reached")
	})
	if d := time.Since(start); d > 20*time.Second {
		t.Fatalf("disconnected after %s", d)
	}
	if got := metric(t, e, "tlsproxy_client_disconnects_total", `reason="output_buffer"`); got != 1 {
		t.Errorf("output_buffer disconnects = %v, want 1", got)
	}
	if n, err := other.Get(ctx, "ob:n").Int(); err != nil || n != 100 {
		t.Fatalf("ob:n = %d, %v", n, err)
	}
}

// TestDrainInFlight: SIGTERM's drain (the context of Serve ending) lets a
// command in flight finish and its reply reach the client, reports
// "draining" on /readyz meanwhile, and closes idle clients at once.
func TestDrainInFlight(t *testing.T) {
	rs := testredis.Start(t, testredis.Options{Args: []string{"--enable-debug-command", "yes"}})
	e, stop, done, err := serveProxy(t, newPKI(t), "redis://"+rs.Addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	e.redis = rs
	busy, idle := safetyProxy(t, e), safetyProxy(t, e)
	roundTrip(t, idle.c, cmd("PING"), "+PONG\r\n")
	busy.send(t, cmd("DEBUG", "SLEEP", "1")+cmd("SET", "drain:k", "v"))
	waitFor(t, "DEBUG SLEEP to be sent", func() bool {
		sent := false
		e.srv.ids.Range(func(_, v any) bool {
			sent = sent || v.(*session).pin.Load() != 0
			return !sent
		})
		return sent
	})
	stop()
	idle.expectClosed(t)
	code, body := adminGet(t, e, "/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "draining") {
		t.Fatalf("/readyz while draining: %d %q", code, body)
	}
	if got := busy.frames(t, 2, 5*time.Second); fmt.Sprint(got) != "[+OK\r\n +OK\r\n]" {
		t.Fatalf("DEBUG SLEEP and SET during the drain: %q", got)
	}
	busy.expectClosed(t)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return")
	}
	if v := e.direct(t).Get(context.Background(), "drain:k").Val(); v != "v" {
		t.Fatalf("drain:k = %q", v)
	}
}

// TestAdminTLS: with admin.tls the endpoint speaks HTTPS only, and with a
// client CA it answers only clients with a certificate from it; the status
// lists the admin certificate too.
func TestAdminTLS(t *testing.T) {
	p := newPKI(t)
	rs := testredis.Start(t, testredis.Options{})
	e, _, _, err := serveProxy(t, p, "redis://"+rs.Addr, func(c *config.Config) {
		c.Admin.TLS = config.AdminTLS{CertFile: p.certFile, KeyFile: p.keyFile, ClientCAFile: p.caFile}
	})
	if err != nil {
		t.Fatal(err)
	}
	get := func(cfg *tls.Config, scheme string) (*http.Response, error) {
		c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
		return c.Get(scheme + "://" + e.admin + "/status")
	}
	if resp, err := get(nil, "http"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Fatal("plain HTTP answered 200 on an HTTPS admin endpoint")
		}
	}
	if resp, err := get(&tls.Config{RootCAs: p.ca.Pool()}, "https"); err == nil {
		resp.Body.Close()
		t.Fatalf("HTTPS without a client certificate: %s", resp.Status)
	}
	resp, err := get(p.clientTLS(), "https")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"role": "admin"`) || !strings.Contains(string(body), `"role": "admin-client-ca"`) {
		t.Fatalf("HTTPS with a client certificate: %s %s", resp.Status, body)
	}
}

func TestIsLoopbackAddr(t *testing.T) {
	for addr, want := range map[string]bool{"127.0.0.1:9180": true, "[::1]:9180": true, "0.0.0.0:9180": false, "10.1.2.3:9180": false} {
		a, err := net.ResolveTCPAddr("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		if got := isLoopbackAddr(a); got != want {
			t.Errorf("isLoopbackAddr(%s) = %v", addr, got)
		}
	}
}
