package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tlsproxy/tlsproxy/internal/testredis"
	"github.com/tlsproxy/tlsproxy/proxy/config"
)

// Helpers for safety_test.go: byte-level conversations with Redis directly and
// through the proxy, read frame by frame with a RESP reader that knows
// nothing of the proxy's own scanner.

// safetyReplyWait bounds how long a test waits for one reply that should come
// promptly (it is a "does not hang" bound, not a latency assertion).
const safetyReplyWait = 10 * time.Second

// safetyPeer is one connection (to Redis directly or through the proxy) with
// a buffered reader for whole RESP frames.
type safetyPeer struct {
	name string // "direct" or "proxy", for messages
	c    net.Conn
	r    *bufio.Reader
}

// safetyDirect opens a plain TCP connection straight to the test Redis.
func safetyDirect(t testing.TB, e *proxyEnv) *safetyPeer {
	t.Helper()
	return safetyDial(t, e.redis.Addr)
}

// safetyDial opens a plain TCP connection to a Redis at addr.
func safetyDial(t testing.TB, addr string) *safetyPeer {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &safetyPeer{name: "direct", c: c, r: bufio.NewReaderSize(c, 64<<10)}
}

// safetyProxy opens a mutual-TLS connection through the proxy.
func safetyProxy(t testing.TB, e *proxyEnv) *safetyPeer {
	t.Helper()
	c := e.rawConn(t)
	return &safetyPeer{name: "proxy", c: c, r: bufio.NewReaderSize(c, 64<<10)}
}

func (p *safetyPeer) send(t testing.TB, req string) {
	t.Helper()
	p.c.SetWriteDeadline(time.Now().Add(safetyReplyWait))
	if _, err := p.c.Write([]byte(req)); err != nil {
		t.Fatalf("%s: write: %v", p.name, err)
	}
}

// frames reads n whole RESP frames (pushes included) within limit.
func (p *safetyPeer) frames(t testing.TB, n int, limit time.Duration) []string {
	t.Helper()
	got, err := p.tryFrames(n, limit)
	if err != nil {
		t.Fatalf("%s: reading %d replies: %v; got %q", p.name, n, err, got)
	}
	return got
}

func (p *safetyPeer) tryFrames(n int, limit time.Duration) ([]string, error) {
	p.c.SetReadDeadline(time.Now().Add(limit))
	defer p.c.SetReadDeadline(time.Time{})
	var got []string
	for len(got) < n {
		f, err := readFrame(p.r)
		if err != nil {
			return got, err
		}
		got = append(got, f)
	}
	return got, nil
}

// closed reports whether the peer closes the connection within limit with
// nothing more to say; extra bytes are returned.
func (p *safetyPeer) closed(limit time.Duration) (bool, string) {
	p.c.SetReadDeadline(time.Now().Add(limit))
	defer p.c.SetReadDeadline(time.Time{})
	b, err := io.ReadAll(p.r)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return false, string(b)
	}
	return true, string(b)
}

// expectClosed fails unless the peer closes the connection promptly and
// sends nothing more.
func (p *safetyPeer) expectClosed(t testing.TB) {
	t.Helper()
	ok, extra := p.closed(safetyReplyWait)
	if !ok {
		t.Fatalf("%s: connection still open after %s (then received %q)", p.name, safetyReplyWait, extra)
	}
	if extra != "" {
		t.Fatalf("%s: received %q before the close, want nothing", p.name, extra)
	}
}

// safetyConverse sends each write in reqs, in order, to Redis directly and
// through the proxy, reads n frames from each and returns both. Each write
// is a separate Write call.
func safetyConverse(t testing.TB, e *proxyEnv, n int, reqs ...string) (direct, proxied []string) {
	t.Helper()
	d, p := safetyDirect(t, e), safetyProxy(t, e)
	for _, r := range reqs {
		d.send(t, r)
		p.send(t, r)
	}
	return d.frames(t, n, safetyReplyWait), p.frames(t, n, safetyReplyWait)
}

// safetySame fails unless the proxy's replies equal Redis's, byte for byte.
func safetySame(t testing.TB, what string, direct, proxied []string) {
	t.Helper()
	if strings.Join(direct, "") != strings.Join(proxied, "") {
		t.Fatalf("%s:\n direct: %q\n  proxy: %q", what, direct, proxied)
	}
}

// readFrame reads one RESP2/RESP3 frame, returning its raw bytes.
func readFrame(r *bufio.Reader) (string, error) {
	var b strings.Builder
	err := readFrameInto(r, &b)
	return b.String(), err
}

func readFrameInto(r *bufio.Reader, b *strings.Builder) error {
	line, err := r.ReadString('\n')
	b.WriteString(line)
	if err != nil {
		return err
	}
	if len(line) < 3 || line[len(line)-2] != '\r' {
		return fmt.Errorf("malformed RESP line %q", line)
	}
	body := line[1 : len(line)-2]
	switch line[0] {
	case '+', '-', ':', '_', '#', ',', '(':
		return nil
	case '$', '!', '=':
		n, err := strconv.Atoi(body)
		if err != nil {
			return fmt.Errorf("bad length in %q", line)
		}
		if n < 0 {
			return nil
		}
		buf := make([]byte, n+2)
		k, err := io.ReadFull(r, buf)
		b.Write(buf[:k])
		return err
	case '*', '~', '>', '%', '|':
		n, err := strconv.Atoi(body)
		if err != nil {
			return fmt.Errorf("bad length in %q", line)
		}
		if line[0] == '%' || line[0] == '|' {
			n *= 2
		}
		for range max(n, 0) {
			if err := readFrameInto(r, b); err != nil {
				return err
			}
		}
		if line[0] == '|' { // an attribute precedes the reply it describes
			return readFrameInto(r, b)
		}
		return nil
	}
	return fmt.Errorf("unknown RESP type in %q", line)
}

// safetyHello3 switches a raw peer to RESP3 and returns HELLO's reply.
func safetyHello3(t testing.TB, p *safetyPeer) string {
	t.Helper()
	p.send(t, cmd("HELLO", "3"))
	return p.frames(t, 1, safetyReplyWait)[0]
}

// safetyHelloID returns the "id" field of a RESP3 HELLO reply.
func safetyHelloID(t testing.TB, hello string) string {
	t.Helper()
	_, after, ok := strings.Cut(hello, "$2\r\nid\r\n:")
	if !ok {
		t.Fatalf("no id in HELLO reply %q", hello)
	}
	id, _, _ := strings.Cut(after, "\r\n")
	return id
}

// safetyHeapInuse returns the heap in use after two garbage collections.
func safetyHeapInuse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// safetyInfoField returns one field of a CLIENT INFO / CLIENT LIST line.
func safetyInfoField(line, field string) string {
	for _, kv := range strings.Fields(line) {
		if v, ok := strings.CutPrefix(kv, field+"="); ok {
			return v
		}
	}
	return ""
}

// safetyTLS dials the proxy with cfg (for clients the harness does not
// build, e.g. without a certificate).
func safetyTLS(t testing.TB, addr string, cfg *tls.Config) *safetyPeer {
	t.Helper()
	c, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &safetyPeer{name: "proxy", c: c, r: bufio.NewReaderSize(c, 64<<10)}
}

// safetyChildEnv makes TestHelperSafetyProxyProcess run a proxy instead of
// returning at once.
const safetyChildEnv = "TLSPROXY_SAFETY_CHILD"

// TestHelperSafetyProxyProcess is not a test: it is the child process of
// safetyChildProxy. It starts Redis and a proxy, prints where they are and
// the client credentials, and serves until its stdin closes.
func TestHelperSafetyProxyProcess(t *testing.T) {
	if os.Getenv(safetyChildEnv) != "1" {
		return
	}
	e := startPlain(t, nil)
	read := func(path string) string {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	b, _ := json.Marshal(safetyChildInfo{
		Addr: e.addr, CA: read(e.pki.caFile),
		Cert: read(e.pki.clientCertFile), Key: read(e.pki.clientKeyFile),
	})
	os.Stdout.WriteString("\nSAFETY-CHILD " + string(b) + "\n")
	io.Copy(io.Discard, os.Stdin)
}

type safetyChildInfo struct{ Addr, CA, Cert, Key string }

// safetyChild is a proxy running in a child process, so that a crash is
// observed by the test rather than killing the test binary.
type safetyChild struct {
	addr   string
	tls    *tls.Config
	cmd    *exec.Cmd
	stderr strings.Builder
	mu     sync.Mutex
	exited chan struct{}
}

func safetyChildProxy(t *testing.T) *safetyChild {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperSafetyProxyProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), safetyChildEnv+"=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	c := &safetyChild{cmd: cmd, exited: make(chan struct{})}
	cmd.Stderr = &safetyLockedWriter{mu: &c.mu, w: &c.stderr}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		select {
		case <-c.exited:
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			<-c.exited
		}
	})
	lines := make(chan string, 1)
	var rest strings.Builder
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			if l, ok := strings.CutPrefix(sc.Text(), "SAFETY-CHILD "); ok {
				lines <- l
				continue
			}
			c.mu.Lock()
			rest.WriteString(sc.Text() + "\n")
			c.mu.Unlock()
		}
		cmd.Wait()
		c.mu.Lock()
		c.stderr.WriteString(rest.String())
		c.mu.Unlock()
		close(c.exited)
	}()
	var info safetyChildInfo
	select {
	case l := <-lines:
		if err := json.Unmarshal([]byte(l), &info); err != nil {
			t.Fatal(err)
		}
	case <-c.exited:
		t.Fatalf("child proxy exited during start-up:\n%s", c.output())
	case <-time.After(30 * time.Second):
		t.Fatalf("child proxy did not start:\n%s", c.output())
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM([]byte(info.CA))
	cert, err := tls.X509KeyPair([]byte(info.Cert), []byte(info.Key))
	if err != nil {
		t.Fatal(err)
	}
	c.addr = info.Addr
	c.tls = &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, ServerName: "127.0.0.1"}
	return c
}

func (c *safetyChild) output() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stderr.String()
}

// alive fails the test if the child proxy has exited. A client that saw
// its connection drop calls it first: the process may be on its way out, so
// it waits a little for the exit.
func (c *safetyChild) alive(t *testing.T, after string) {
	t.Helper()
	select {
	case <-c.exited:
		out := c.output()
		if len(out) > 3000 {
			out = out[:3000]
		}
		t.Fatalf("the proxy process died after %s:\n%s", after, out)
	case <-time.After(2 * time.Second):
	}
}

type safetyLockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (w *safetyLockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.Write(p)
}

// safetyStart starts a redis-server with extra arguments and a proxy in
// front of it.
func safetyStart(t testing.TB, redisArgs []string, edit func(*config.Config)) *proxyEnv {
	t.Helper()
	rs := testredis.Start(t, testredis.Options{Args: redisArgs})
	e := startProxy(t, newPKI(t), "redis://"+rs.Addr, edit)
	e.redis = rs
	return e
}

// safetyOwnValues runs one goroutine per peer; each writes and reads back
// its own values iters times (SET then GET in one write) and checks that
// every reply is its own. It returns the first violation.
func safetyOwnValues(peers []*safetyPeer, prefix string, iters int) error {
	return safetyEach(peers, func(i int, p *safetyPeer) error {
		key := fmt.Sprintf("%s:own:%d", prefix, i)
		for n := range iters {
			val := fmt.Sprintf("%s-client%d-value%d", prefix, i, n)
			p.c.SetWriteDeadline(time.Now().Add(safetyReplyWait))
			if _, err := p.c.Write([]byte(cmd("SET", key, val) + cmd("GET", key))); err != nil {
				return fmt.Errorf("client %d: write: %v", i, err)
			}
			got, err := p.tryFrames(2, safetyReplyWait)
			want := []string{"+OK\r\n", fmt.Sprintf("$%d\r\n%s\r\n", len(val), val)}
			if err != nil || got[0] != want[0] || got[1] != want[1] {
				return fmt.Errorf("client %d, round %d: got %q (%v), want its own %q", i, n, got, err, want)
			}
		}
		return nil
	})
}

// safetyEach runs f for every peer, each in its own goroutine, and returns
// the first error.
func safetyEach(peers []*safetyPeer, f func(i int, p *safetyPeer) error) error {
	errs := make(chan error, len(peers))
	var wg sync.WaitGroup
	for i, p := range peers {
		wg.Go(func() {
			if err := f(i, p); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// safetyPeers opens n connections through the proxy, each switched to
// protocol proto.
func safetyPeers(t testing.TB, e *proxyEnv, n, proto int) []*safetyPeer {
	t.Helper()
	var ps []*safetyPeer
	for range n {
		p := safetyProxy(t, e)
		if proto == 3 {
			safetyHello3(t, p)
		}
		ps = append(ps, p)
	}
	return ps
}

// safetyBulk is the RESP2 bulk string reply for s.
func safetyBulk(s string) string { return fmt.Sprintf("$%d\r\n%s\r\n", len(s), s) }

// safetyExhausted starts a proxy with one dedicated connection, held by a
// client blocked in BLPOP.
func safetyExhausted(t *testing.T) *proxyEnv {
	t.Helper()
	e := startPlain(t, func(c *config.Config) {
		c.Upstream.Pool.MaxPinned = 1
		c.Upstream.DialTimeout = 300 * time.Millisecond
	})
	holder := safetyProxy(t, e)
	holder.send(t, cmd("BLPOP", "exhausted:q", "0"))
	direct := e.direct(t)
	waitFor(t, "the BLPOP holding the only dedicated connection", func() bool {
		return rejInfoInt(t, direct, "clients", "blocked_clients") == 1
	})
	return e
}

// safetyErrorsOrClose reads n replies and fails unless each is an error or
// the connection closes before (or instead of) it.
func safetyErrorsOrClose(t *testing.T, c *safetyPeer, n int, what string) {
	t.Helper()
	got, err := c.tryFrames(n, safetyReplyWait)
	for _, r := range got {
		if !strings.HasPrefix(r, "-") {
			t.Fatalf("%s: replies %q, want only errors (or a closed connection)", what, got)
		}
	}
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("%s: %q, then nothing for %s", what, got, safetyReplyWait)
	}
}

// safetyLogLines returns the proxy's log lines (JSON objects) that
// contain text, with their raw form.
func safetyLogLines(t testing.TB, e *proxyEnv, text string) (lines []map[string]any, raw []string) {
	t.Helper()
	for _, l := range strings.Split(e.logs.String(), "\n") {
		if l == "" || !strings.Contains(l, text) {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("log line is not JSON: %q: %v", l, err)
		}
		lines, raw = append(lines, m), append(raw, l)
	}
	return lines, raw
}

// safetyCounters runs one goroutine per peer; each INCRs its own counter n
// times and checks every reply. It returns the first violation.
func safetyCounters(peers []*safetyPeer, prefix string, n int) error {
	return safetyEach(peers, func(i int, p *safetyPeer) error {
		key := fmt.Sprintf("%s:counter:%d", prefix, i)
		for k := 1; k <= n; k++ {
			p.c.SetWriteDeadline(time.Now().Add(safetyReplyWait))
			if _, err := p.c.Write([]byte(cmd("INCR", key))); err != nil {
				return fmt.Errorf("client %d: write: %v", i, err)
			}
			if got, err := p.tryFrames(1, safetyReplyWait); err != nil || got[0] != ":"+strconv.Itoa(k)+"\r\n" {
				return fmt.Errorf("client %d: INCR #%d: %q, %v", i, k, got, err)
			}
		}
		return nil
	})
}

// safetyCheckCounters fails unless every counter of safetyCounters ran
// exactly n times in Redis.
func safetyCheckCounters(t *testing.T, e *proxyEnv, prefix string, peers, n int) {
	t.Helper()
	direct := e.direct(t)
	for i := range peers {
		if v, err := direct.Get(context.Background(), fmt.Sprintf("%s:counter:%d", prefix, i)).Int(); err != nil || v != n {
			t.Errorf("counter %d in Redis = %d (%v), want %d", i, v, err, n)
		}
	}
}
