//go:build linux

// Operational end-to-end tests of the built binary: the drain on SIGTERM, a
// second signal, SIGHUP, a log pipe that goes away, sd_notify, `tlsproxy
// health`, /readyz following Redis and /metrics after real traffic. They reuse
// the helpers of e2e_test.go; each test has its own proxy and plain redis-server.

package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/redis/go-redis/v9"
	"github.com/tlsproxy/tlsproxy/internal/syncbuf"
	"github.com/tlsproxy/tlsproxy/internal/testredis"
	"github.com/tlsproxy/tlsproxy/proxy/tlsconf"
)

// opsEnv is one test's set-up: the binary, dev certificates, a plain
// redis-server (f.redis.client talks to it directly) and a config.
type opsEnv struct {
	*e2eFixture
	rs          *testredis.Server
	addr, admin string // the proxy's listen.address and admin.address
	cfg         string
}

func newOps(t *testing.T, shutdown time.Duration, redisArgs ...string) *opsEnv {
	t.Helper()
	f := &e2eFixture{bin: e2eBuild(t), certs: filepath.Join(t.TempDir(), "certs")}
	opsNoErr(t, tlsconf.WriteDev(f.certs, false))
	rs := testredis.Start(t, testredis.Options{Args: redisArgs})
	client := redis.NewClient(&redis.Options{Addr: rs.Addr})
	t.Cleanup(func() { client.Close() })
	f.redis = &e2eRedis{addr: rs.Addr, client: client}
	o := &opsEnv{e2eFixture: f, rs: rs, addr: e2eFreeAddr(t), admin: e2eFreeAddr(t)}
	for o.admin == o.addr {
		o.admin = e2eFreeAddr(t)
	}
	o.cfg = o.config(t, o.admin, shutdown)
	return o
}

// adminLine is the admin section writeConfigFull writes.
var adminLine = regexp.MustCompile(`admin:\n  address: "[^"]*"\n`)

// config writes a config for o.addr with the given admin.address and shutdown_timeout.
func (o *opsEnv) config(t *testing.T, admin string, shutdown time.Duration) string {
	t.Helper()
	path := o.writeConfigFull(t, o.addr, o.cert("server.crt"), o.cert("server.key"), "", "redis://"+o.redis.addr, "")
	b, err := os.ReadFile(path)
	opsNoErr(t, err)
	b = adminLine.ReplaceAll(b, fmt.Appendf(nil, "admin:\n  address: %q\n", admin))
	b = fmt.Appendf(b, "shutdown_timeout: %s\n", shutdown)
	opsNoErr(t, os.WriteFile(path, b, 0o600))
	return path
}

// start runs the proxy and waits until it answers PING through Redis.
func (o *opsEnv) start(t *testing.T) *e2eProc {
	t.Helper()
	p := e2eStartProxy(t, o.bin, nil, "run", "--config", o.cfg)
	o.waitReady(t, p, o.addr)
	return p
}

func (p *e2eProc) signal(t *testing.T, sig os.Signal) {
	t.Helper()
	opsNoErr(t, p.cmd.Process.Signal(sig))
}

func opsNoErr(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// opsCmd encodes a command as a RESP array.
func opsCmd(args ...string) string {
	s := fmt.Sprintf("*%d\r\n", len(args))
	for _, a := range args {
		s += fmt.Sprintf("$%d\r\n%s\r\n", len(a), a)
	}
	return s
}

// opsReadReply reads one whole RESP2 reply and returns its first line ("+OK", ":3", "-ERR ...", "*3").
func opsReadReply(br *bufio.Reader) (string, error) {
	line, err := br.ReadString('\n')
	if err != nil {
		return "", err
	}
	if line = strings.TrimSuffix(line, "\r\n"); line == "" {
		return "", errors.New("empty RESP line")
	}
	n, _ := strconv.Atoi(line[1:])
	switch line[0] {
	case '$':
		if n >= 0 {
			_, err = br.Discard(n + 2)
		}
	case '*':
		for i := 0; i < n && err == nil; i++ {
			_, err = opsReadReply(br)
		}
	}
	return line, err
}

func opsGet(url string) (int, string, error) {
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// waitHTTP polls url until it answers want, within the given time, and returns the body.
func waitHTTP(t *testing.T, url string, want int, within time.Duration) string {
	t.Helper()
	for deadline := time.Now().Add(within); ; time.Sleep(100 * time.Millisecond) {
		code, body, err := opsGet(url)
		if err == nil && code == want {
			return body
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: %d %q (%v); want %d within %s", url, code, body, err, want, within)
		}
	}
}

func (o *opsEnv) scrape(t *testing.T) map[string]*dto.MetricFamily {
	t.Helper()
	code, body, err := opsGet("http://" + o.admin + "/metrics")
	if err != nil || code != http.StatusOK {
		t.Fatalf("GET /metrics: %d, %v\n%s", code, err, body)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parse /metrics: %v\n%s", err, body)
	}
	return fams
}

// metricValue is the value of the first sample of name that has every label
// given as "name=value".
func metricValue(fams map[string]*dto.MetricFamily, name string, labels ...string) (float64, bool) {
	for _, m := range fams[name].GetMetric() {
		have := map[string]bool{}
		for _, lp := range m.GetLabel() {
			have[lp.GetName()+"="+lp.GetValue()] = true
		}
		if !slices.ContainsFunc(labels, func(l string) bool { return !have[l] }) {
			// One of the three is set; the getters of the others return 0.
			return m.GetCounter().GetValue() + m.GetGauge().GetValue() + m.GetUntyped().GetValue(), true
		}
	}
	return 0, false
}

// opsWriter is a client pipelining batches of INCR c:<id> and SET k:<id>:<n> <n>
// until its connection ends, recording what was acknowledged.
type opsWriter struct {
	id            int
	conn          *tls.Conn
	sent, replies int
	errReplies    []string
	lastIncr      int64 // the last INCR value acknowledged
	acked         []int // n of every acknowledged SET
	end           error // why the client stopped
	problems      []string
}

func (w *opsWriter) run(timeout time.Duration) {
	defer w.conn.Close()
	br := bufio.NewReader(w.conn)
	for n := 0; ; {
		var batch strings.Builder
		var kinds []int // 0: INCR, n > 0: SET of n
		for range 10 {
			n++
			batch.WriteString(opsCmd("INCR", fmt.Sprintf("c:%d", w.id)))
			batch.WriteString(opsCmd("SET", fmt.Sprintf("k:%d:%d", w.id, n), strconv.Itoa(n)))
			kinds = append(kinds, 0, n)
		}
		_ = w.conn.SetWriteDeadline(time.Now().Add(timeout))
		_, werr := io.WriteString(w.conn, batch.String())
		w.sent += len(kinds)
		for _, k := range kinds { // after a failed write too: what was written is answered or closed
			_ = w.conn.SetReadDeadline(time.Now().Add(timeout))
			line, err := opsReadReply(br)
			if err != nil {
				w.end = err
				return
			}
			w.replies++
			switch {
			case k == 0 && strings.HasPrefix(line, ":"):
				v, _ := strconv.ParseInt(line[1:], 10, 64)
				if v != w.lastIncr+1 {
					w.problems = append(w.problems, fmt.Sprintf("INCR answered %d after %d", v, w.lastIncr))
				}
				w.lastIncr = v
			case k > 0 && line == "+OK":
				w.acked = append(w.acked, k)
			case strings.HasPrefix(line, "-"):
				w.errReplies = append(w.errReplies, line)
			default:
				w.problems = append(w.problems, fmt.Sprintf("unexpected reply %q (command kind %d)", line, k))
			}
		}
		if werr != nil {
			w.end = werr
			return
		}
	}
}

// check compares what w saw acknowledged with Redis and returns how many of
// its INCRs Redis ran without the client getting the reply.
func (w *opsWriter) check(ctx context.Context, t *testing.T, rdb *redis.Client) int64 {
	t.Helper()
	for _, pr := range w.problems {
		t.Errorf("client %d: %s", w.id, pr)
	}
	if errors.Is(w.end, os.ErrDeadlineExceeded) {
		t.Errorf("client %d hung: neither a reply nor a close (%d of %d commands answered)", w.id, w.replies, w.sent)
	}
	if len(w.errReplies) > 0 || !errors.Is(w.end, io.EOF) {
		t.Logf("client %d: %d error replies %.3q; ended by %v", w.id, len(w.errReplies), w.errReplies, w.end)
	}
	got, err := rdb.Get(ctx, fmt.Sprintf("c:%d", w.id)).Int64()
	if w.lastIncr > 0 && (err != nil || got < w.lastIncr) {
		t.Errorf("client %d: c:%d is %d (%v) in Redis, but INCR acknowledged %d", w.id, w.id, got, err, w.lastIncr)
	}
	for i := 0; i < len(w.acked); i += 500 {
		ns := w.acked[i:min(i+500, len(w.acked))]
		keys := make([]string, len(ns))
		for j, n := range ns {
			keys[j] = fmt.Sprintf("k:%d:%d", w.id, n)
		}
		vals, err := rdb.MGet(ctx, keys...).Result()
		opsNoErr(t, err)
		for j, v := range vals {
			if v != strconv.Itoa(ns[j]) {
				t.Errorf("acknowledged SET %s %d: Redis has %v", keys[j], ns[j], v)
			}
		}
	}
	return got - w.lastIncr
}

func TestDrainLosesNoAcknowledgedWrite(t *testing.T) {
	t.Parallel()
	const shutdown, clients = 3 * time.Second, 16
	const deadline = shutdown + 2*time.Second // no read may wait longer
	o := newOps(t, shutdown)
	p := o.start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	sub, blocked := o.dialTLS(t, o.addr), o.dialTLS(t, o.addr)
	defer sub.Close()
	defer blocked.Close()
	subR := bufio.NewReader(sub)
	_ = sub.SetDeadline(time.Now().Add(5 * time.Second))
	_, err := io.WriteString(sub, opsCmd("SUBSCRIBE", "ops:ch"))
	opsNoErr(t, err)
	if r, err := opsReadReply(subR); r != "*3" || err != nil {
		t.Fatalf("SUBSCRIBE: %q, %v", r, err)
	}
	_, err = io.WriteString(blocked, opsCmd("BLPOP", "nothing", "0"))
	opsNoErr(t, err)
	for end := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if info, _ := o.redis.client.Info(ctx, "clients").Result(); strings.Contains(info, "blocked_clients:1") {
			break
		} else if time.Now().After(end) {
			t.Fatalf("BLPOP through the proxy is not blocked in Redis:\n%s", info)
		}
	}

	writers := make([]*opsWriter, clients)
	var wg sync.WaitGroup
	for i := range writers {
		w := &opsWriter{id: i, conn: o.dialTLS(t, o.addr)}
		writers[i] = w
		wg.Go(func() { w.run(deadline) })
	}
	time.Sleep(time.Second)
	sigAt := time.Now()
	p.signal(t, syscall.SIGTERM)

	type ending struct {
		reply string
		err   error
		after time.Duration
	}
	readEnd := func(c *tls.Conn, br *bufio.Reader) <-chan ending {
		ch := make(chan ending, 1)
		go func() {
			_ = c.SetReadDeadline(time.Now().Add(deadline))
			r, err := opsReadReply(br)
			ch <- ending{r, err, time.Since(sigAt)}
		}()
		return ch
	}
	subEnd, blockedEnd := readEnd(sub, subR), readEnd(blocked, bufio.NewReader(blocked))

	select {
	case <-p.done:
		if code := p.cmd.ProcessState.ExitCode(); code != 0 {
			t.Errorf("exit status %d (%v) after SIGTERM, want 0", code, p.waitErr)
		}
	case <-time.After(deadline):
		t.Errorf("the proxy did not exit within shutdown_timeout + 2s of SIGTERM")
	}
	t.Logf("exited %s after SIGTERM", time.Since(sigAt).Round(time.Millisecond))
	wg.Wait()

	e := <-blockedEnd
	if errors.Is(e.err, os.ErrDeadlineExceeded) || e.err == nil && !strings.HasPrefix(e.reply, "-UNBLOCKED") || e.after >= shutdown {
		t.Errorf("BLPOP during the drain: %q, %v after %s; want -UNBLOCKED or a close, before shutdown_timeout", e.reply, e.err, e.after)
	}
	if e := <-subEnd; e.err == nil || errors.Is(e.err, os.ErrDeadlineExceeded) {
		t.Errorf("subscriber during the drain: %q, %v; want its connection closed", e.reply, e.err)
	}
	if n, err := o.redis.client.LLen(ctx, "nothing").Result(); n != 0 || err != nil {
		t.Errorf("LLEN nothing = %d, %v; want 0", n, err)
	}

	var acked, unanswered int
	var unacked int64
	for _, w := range writers {
		acked += len(w.acked)
		unanswered += w.sent - w.replies
		unacked += w.check(ctx, t, o.redis.client)
	}
	t.Logf("%d clients: %d SETs acknowledged; %d commands ended by the connection closing", clients, acked, unanswered)
	if acked < clients {
		t.Errorf("only %d SETs acknowledged: no load", acked)
	}
	if unacked != 0 { // the drain answers every command it has read
		t.Errorf("Redis ran %d INCRs whose replies never reached the client", unacked)
	}
	for _, msg := range []string{"draining", "stopped"} {
		if !p.hasLog(func(l e2eLogLine) bool { return l.Message == msg }) {
			t.Errorf("no %q log line:\n%s", msg, p.stderr.String())
		}
	}
	if l, ok := p.findLog(func(l e2eLogLine) bool { return strings.HasPrefix(l.Message, "shutdown_timeout reached") }); ok {
		t.Errorf("the drain needed shutdown_timeout to close clients: %s", l.Line)
	}
}

func TestSecondSignalExitsAtOnce(t *testing.T) {
	t.Parallel()
	o := newOps(t, 30*time.Second, "--enable-debug-command", "yes")
	p := o.start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	info, err := o.redis.client.Info(ctx, "server").Result()
	opsNoErr(t, err)
	_, rest, _ := strings.Cut(info, "process_id:")
	var pid int
	if _, err := fmt.Sscan(rest, &pid); err != nil || pid <= 1 {
		t.Fatalf("no process_id in INFO server (%v):\n%s", err, info)
	}
	defer syscall.Kill(pid, syscall.SIGKILL) // a sleeping Redis would delay its clean-up

	conn := o.dialTLS(t, o.addr)
	defer conn.Close()
	_, err = io.WriteString(conn, opsCmd("DEBUG", "SLEEP", "10"))
	opsNoErr(t, err)
	// Redis sleeps once it no longer answers a PING of its own.
	probe := redis.NewClient(&redis.Options{Addr: o.redis.addr, ReadTimeout: 300 * time.Millisecond, MaxRetries: -1})
	defer probe.Close()
	for probe.Ping(ctx).Err() == nil {
		time.Sleep(20 * time.Millisecond)
	}

	start := time.Now()
	p.signal(t, syscall.SIGTERM)
	p.waitLog(t, func(l e2eLogLine) bool { return l.Message == "draining" })
	time.Sleep(200 * time.Millisecond)
	if p.exited() {
		t.Fatalf("the proxy exited on the first SIGTERM with DEBUG SLEEP in flight (%v):\n%s", p.waitErr, p.stderr.String())
	}
	p.signal(t, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		t.Fatalf("the proxy did not exit within 5s of the second SIGTERM:\n%s", p.stderr.String())
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("exit took %s after the first SIGTERM", d)
	}
	// The second signal gets the default action: the process is killed by it.
	if ws, ok := p.cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGTERM {
		t.Errorf("exit status %v, want killed by SIGTERM", p.cmd.ProcessState)
	}
}

// TestSIGHUPReloads: SIGHUP reloads (and does not stop the proxy); open
// connections and new ones keep working.
func TestSIGHUPReloads(t *testing.T) {
	t.Parallel()
	o := newOps(t, 5*time.Second)
	p := o.start(t)
	conn := o.dialTLS(t, o.addr)
	defer conn.Close()
	if r := e2ePing(t, conn); r != "+PONG" {
		t.Fatalf("PING: %q", r)
	}
	p.signal(t, syscall.SIGHUP)
	p.waitLog(t, func(l e2eLogLine) bool {
		return strings.Contains(l.Message, "reloaded certificates") && l.Raw["trigger"] == "SIGHUP"
	})
	time.Sleep(200 * time.Millisecond)
	if p.exited() {
		t.Fatalf("SIGHUP stopped the proxy (%v):\n%s", p.waitErr, p.stderr.String())
	}
	again := o.dialTLS(t, o.addr)
	defer again.Close()
	if r1, r2 := e2ePing(t, conn), e2ePing(t, again); r1 != "+PONG" || r2 != "+PONG" {
		t.Errorf("PING after SIGHUP on the connection from before: %q, on a new one: %q", r1, r2)
	}
	p.stop(t)
}

func TestClosedStderrDoesNotKill(t *testing.T) {
	t.Parallel()
	o := newOps(t, 5*time.Second)
	r, w, err := os.Pipe()
	opsNoErr(t, err)
	defer r.Close()
	p := &e2eProc{stdout: &syncbuf.Buffer{}, stderr: &syncbuf.Buffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(o.bin, "run", "--config", o.cfg)
	p.cmd.Env = e2eEnviron(nil)
	p.cmd.Stdout, p.cmd.Stderr = w, w // the log goes straight to the pipe
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	err = p.cmd.Start()
	w.Close()
	opsNoErr(t, err)
	go func() { p.waitErr = p.cmd.Wait(); close(p.done) }()
	defer func() {
		if !p.exited() {
			p.cmd.Process.Kill()
			<-p.done
		}
	}()

	_ = r.SetReadDeadline(time.Now().Add(e2eStartTimeout))
	for br := bufio.NewReader(r); ; {
		line, err := br.ReadString('\n')
		p.stderr.Write([]byte(line))
		if err != nil {
			t.Fatalf("no \"listening\" log line (%v):\n%s", err, p.stderr.String())
		}
		if l, _ := e2eParseLog(line); len(l) == 1 && l[0].Message == "listening" {
			break
		}
	}
	r.Close() // every later log write fails with EPIPE

	o.waitReady(t, p, o.addr) // sessions start and end: logged
	for range 3 {
		if nc, err := net.Dial("tcp", o.addr); err == nil { // not TLS: a warning
			io.WriteString(nc, "PING\r\n")
			_ = nc.SetReadDeadline(time.Now().Add(2 * time.Second))
			io.Copy(io.Discard, nc)
			nc.Close()
		}
	}
	time.Sleep(300 * time.Millisecond)
	if p.exited() {
		t.Fatalf("the proxy died after its log pipe closed: %v", p.waitErr)
	}
	conn := o.dialTLS(t, o.addr)
	defer conn.Close()
	if reply := e2ePing(t, conn); reply != "+PONG" {
		t.Errorf("PING after the log pipe closed: %q", reply)
	}
	p.stop(t) // drains, logging into the closed pipe, and exits 0
}

func TestSdNotify(t *testing.T) {
	t.Parallel()
	o := newOps(t, 5*time.Second)
	sock := filepath.Join(t.TempDir(), "notify.sock")
	ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	opsNoErr(t, err)
	defer ln.Close()
	expect := func(want string, within time.Duration) {
		t.Helper()
		buf := make([]byte, 512)
		_ = ln.SetReadDeadline(time.Now().Add(within))
		if n, err := ln.Read(buf); err != nil || string(buf[:n]) != want {
			t.Fatalf("sd_notify datagram %q (%v), want %q", buf[:n], err, want)
		}
	}
	p := e2eStartProxy(t, o.bin, []string{"NOTIFY_SOCKET=" + sock}, "run", "--config", o.cfg)
	expect("READY=1", e2eStartTimeout)
	o.waitReady(t, p, o.addr)
	p.signal(t, syscall.SIGHUP)
	expect("RELOADING=1", 5*time.Second)
	expect("READY=1", 5*time.Second)
	p.stop(t)
	expect("STOPPING=1", time.Second) // the process has exited: it was sent or never will be
}

func TestHealthCommand(t *testing.T) {
	t.Parallel()
	o := newOps(t, 5*time.Second)
	p := o.start(t)
	r := e2eRun(t, o.bin, nil, "health", "--config", o.cfg)
	if r.code != 0 || !strings.Contains(r.stdout, "http://"+o.admin+"/healthz: ok") {
		t.Errorf("health against the running proxy: %s", r)
	}
	dead := e2eFreeAddr(t)
	for dead == o.admin || dead == o.addr {
		dead = e2eFreeAddr(t)
	}
	r = e2eRun(t, o.bin, nil, "health", "--config", o.config(t, dead, 5*time.Second))
	if r.code != 1 || !strings.Contains(r.stderr, dead) {
		t.Errorf("health with nothing on admin.address %s: want exit 1 naming it: %s", dead, r)
	}
	r = e2eRun(t, o.bin, nil, "health", "--config", o.config(t, "", 5*time.Second))
	if r.code != 1 || !strings.Contains(r.stderr, "disabled") {
		t.Errorf("health with admin.address \"\": want exit 1 saying the endpoint is disabled: %s", r)
	}
	p.stop(t)
}

// TestHealthCommandHTTPS: over HTTPS (admin.tls) health checks that the
// endpoint presents exactly admin.tls.cert_file, whatever name it is
// reached by.
func TestHealthCommandHTTPS(t *testing.T) {
	t.Parallel()
	o := newOps(t, 5*time.Second)
	withAdminTLS := func(cfg, cert, key string) string {
		b, err := os.ReadFile(cfg)
		opsNoErr(t, err)
		tlsLines := fmt.Sprintf("  tls:\n    cert_file: %q\n    key_file: %q\n", cert, key)
		b = adminLine.ReplaceAllFunc(b, func(m []byte) []byte { return append(m, tlsLines...) })
		path := filepath.Join(t.TempDir(), "admin-tls.yaml")
		opsNoErr(t, os.WriteFile(path, b, 0o600))
		return path
	}
	o.cfg = withAdminTLS(o.cfg, o.cert("server.crt"), o.cert("server.key"))
	p := o.start(t)
	r := e2eRun(t, o.bin, nil, "health", "--config", o.cfg)
	if r.code != 0 || !strings.Contains(r.stdout, "https://"+o.admin+"/healthz: ok") {
		t.Errorf("health over HTTPS: %s", r)
	}
	other := withAdminTLS(o.config(t, o.admin, 5*time.Second), o.cert("client.crt"), o.cert("client.key"))
	r = e2eRun(t, o.bin, nil, "health", "--config", other)
	if r.code != 1 || !strings.Contains(r.stderr, "did not present admin.tls.cert_file") {
		t.Errorf("health pinned to another certificate: want exit 1: %s", r)
	}
	p.stop(t)
}

func TestReadinessFollowsRedis(t *testing.T) {
	t.Parallel()
	o := newOps(t, 5*time.Second)
	p := o.start(t)
	readyz := "http://" + o.admin + "/readyz"
	waitHTTP(t, readyz, http.StatusOK, 5*time.Second)
	upIs := func(want float64) {
		t.Helper()
		if v, ok := metricValue(o.scrape(t), "tlsproxy_upstream_up"); !ok || v != want {
			t.Errorf("tlsproxy_upstream_up = %v (present %v), want %v", v, ok, want)
		}
	}
	upIs(1)

	stopHealth := make(chan struct{})
	var healthBad []string
	var hwg sync.WaitGroup
	hwg.Go(func() {
		for {
			if code, body, err := opsGet("http://" + o.admin + "/healthz"); code != http.StatusOK {
				healthBad = append(healthBad, fmt.Sprintf("%d %q %v", code, body, err))
			}
			select {
			case <-stopHealth:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	})

	o.rs.Stop()
	body := waitHTTP(t, readyz, http.StatusServiceUnavailable, 5*time.Second)
	if !strings.Contains(body, "Redis") {
		t.Errorf("/readyz with Redis down: body %q does not name the reason", body)
	}
	t.Logf("/readyz with Redis down: %q", strings.TrimSpace(body))
	upIs(0)
	o.rs.Restart(t)
	start := time.Now()
	waitHTTP(t, readyz, http.StatusOK, 15*time.Second)
	t.Logf("/readyz back to 200 %s after Redis restarted", time.Since(start).Round(time.Millisecond))
	upIs(1)
	close(stopHealth)
	hwg.Wait()
	if len(healthBad) > 0 {
		t.Errorf("/healthz was not 200 while Redis was down and back: %v", healthBad)
	}
	p.stop(t)
}

func TestMetricsAfterTraffic(t *testing.T) {
	t.Parallel()
	o := newOps(t, 5*time.Second)
	p := o.start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := redis.NewClient(&redis.Options{Addr: o.addr, TLSConfig: o.clientTLS(t), DisableIdentity: true, MaxRetries: -1})
	defer c.Close()
	const sets, gets = 5, 7
	for i := range sets {
		opsNoErr(t, c.Set(ctx, fmt.Sprintf("m:%d", i), i, 0).Err())
	}
	for i := range gets {
		opsNoErr(t, c.Get(ctx, fmt.Sprintf("m:%d", i%sets)).Err())
	}
	opsNoErr(t, c.Set(ctx, "m:str", "abc", 0).Err()) // SET number sets+1
	if err := c.Incr(ctx, "m:str").Err(); err == nil || !strings.Contains(err.Error(), "not an integer") {
		t.Fatalf("INCR on a string: %v, want an error reply", err)
	}
	_, err := c.TxPipelined(ctx, func(pipe redis.Pipeliner) error { return pipe.Incr(ctx, "m:tx").Err() })
	opsNoErr(t, err)

	noCert := o.clientTLS(t)
	noCert.Certificates = nil
	if conn, err := tls.Dial("tcp", o.addr, noCert); err == nil { // TLS 1.3: refused after the client's Finished
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		conn.Read(make([]byte, 1))
		conn.Close()
	}
	if l := p.waitLog(t, e2eRejected("no_client_cert")); l.Level != "warn" {
		t.Errorf("the client without a certificate is logged at %q, want warn: %s", l.Level, l.Line)
	}
	silent, err := net.Dial("tcp", o.addr)
	opsNoErr(t, err)
	silentAddr := silent.LocalAddr().String()
	silent.Close()

	var fams map[string]*dto.MetricFamily
	for end := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		fams = o.scrape(t)
		if _, ok := metricValue(fams, "tlsproxy_handshake_failures_total", "reason=closed_before_tls"); ok || time.Now().After(end) {
			break
		}
	}
	for _, ch := range []struct {
		name, label, op string
		want            float64
	}{
		{"tlsproxy_commands_total", "command=set", "==", sets + 1},
		{"tlsproxy_commands_total", "command=get", "==", gets},
		{"tlsproxy_commands_total", "command=incr", "==", 2},
		{"tlsproxy_commands_total", "command=multi", "==", 1},
		{"tlsproxy_commands_total", "command=exec", "==", 1},
		{"tlsproxy_command_errors_total", "command=incr", "==", 1},
		{"tlsproxy_client_connections_total", "", ">=", 2}, // waitReady's and go-redis's
		{"tlsproxy_handshake_failures_total", "reason=no_client_cert", "==", 1},
		{"tlsproxy_handshake_failures_total", "reason=closed_before_tls", "==", 1},
		{"tlsproxy_bytes_total", "direction=received", ">", 0},
		{"tlsproxy_bytes_total", "direction=sent", ">", 0},
		{"tlsproxy_upstream_dials_total", "result=success", ">=", 1},
		{"tlsproxy_build_info", "version=dev", "==", 1},
		{"go_goroutines", "", ">", 0},
		{"process_resident_memory_bytes", "", ">", 0},
	} {
		labels := strings.Fields(ch.label)
		v, ok := metricValue(fams, ch.name, labels...)
		if !ok || !(ch.op == "==" && v == ch.want || ch.op == ">=" && v >= ch.want || ch.op == ">" && v > ch.want) {
			t.Errorf("%s%v = %v (present %v), want %s %v", ch.name, labels, v, ok, ch.op, ch.want)
		}
	}
	if _, ok := metricValue(fams, "tlsproxy_command_errors_total", "command=set"); ok {
		t.Errorf("tlsproxy_command_errors_total{command=\"set\"} present: no SET failed")
	}
	if l, ok := p.findLog(func(l e2eLogLine) bool { return l.Raw["remote"] == silentAddr }); ok {
		t.Errorf("the connection closed before TLS was logged: %s", l.Line)
	}
	p.stop(t)
}
