package upstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/tidwall/redcon"
	"github.com/tlsproxy/tlsproxy/internal/syncbuf"
	"github.com/tlsproxy/tlsproxy/internal/testredis"
	"github.com/tlsproxy/tlsproxy/proxy/resp"
)

// cmd encodes a command as a RESP array of bulk strings.
func cmd(args ...string) []byte {
	b := redcon.AppendArray(nil, len(args))
	for _, a := range args {
		b = redcon.AppendBulkString(b, a)
	}
	return b
}

// opts reaches s over its unix socket when it has one, else over TCP.
func opts(s *testredis.Server) Options {
	o := Options{Network: "unix", Address: s.Socket, Password: s.Password,
		DialTimeout: 2 * time.Second, ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second}
	if s.Socket == "" {
		o.Network, o.Address = "tcp", s.Addr
	}
	return o
}

// logBuf collects the pool's zerolog JSON output, written from any goroutine.
type logBuf struct{ syncbuf.Buffer }

// entries returns the logged events whose message is msg.
func (l *logBuf) entries(t *testing.T, msg string) (out []map[string]any) {
	text := l.String()
	for d := json.NewDecoder(strings.NewReader(text)); d.More(); {
		var e map[string]any
		if err := d.Decode(&e); err != nil {
			t.Fatalf("log %q: %v", text, err)
		}
		if e["message"] == msg {
			out = append(out, e)
		}
	}
	return out
}

func newPool(t *testing.T, o Options, l Limits) (*Pool, *logBuf) {
	logs := &logBuf{}
	p := NewPool(o, l, zerolog.New(logs))
	t.Cleanup(p.Close)
	return p, logs
}

// setup starts a unix-socket-only Redis and a pool for it.
func setup(t *testing.T, l Limits) (*testredis.Server, *Pool, *logBuf) {
	s := testredis.Start(t, testredis.Options{NoTCP: true})
	p, logs := newPool(t, opts(s), l)
	return s, p, logs
}

// ctl is a control connection to s, outside any pool.
func ctl(t *testing.T, s *testredis.Server) *Conn {
	t.Helper()
	o := opts(s)
	c, err := Dial(context.Background(), &o, 2)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// connDo sends one command on a Conn that nothing else reads.
func connDo(t *testing.T, c *Conn, args ...string) string {
	t.Helper()
	c.nc.SetDeadline(time.Now().Add(5 * time.Second))
	defer c.nc.SetDeadline(time.Time{})
	c.nc.Write(cmd(args...)) // a failed write fails the read
	r, err := c.readReply()
	if err != nil {
		t.Fatalf("%v: %v", args, err)
	}
	return string(r)
}

// field returns key's value in CLIENT INFO or CLIENT LIST output.
func field(info, key string) string {
	for _, f := range strings.Fields(info) {
		if v, ok := strings.CutPrefix(f, key+"="); ok {
			return v
		}
	}
	return "<missing>"
}

// splitReplies cuts raw reply bytes into whole replies.
func splitReplies(out []byte) (rs []string, err error) {
	var s resp.Scanner
	for len(out) > 0 {
		n, k, err := s.Scan(out, 1)
		if err != nil || k != 1 {
			return rs, fmt.Errorf("incomplete or bad reply %q: %v", out, err)
		}
		rs, out = append(rs, string(out[:n])), out[n:]
	}
	return rs, nil
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %s", what, d)
		}
	}
}

// sink is a pinned session's client: it collects what toClient forwards.
type sink struct {
	mu    sync.Mutex
	b     []byte
	delay time.Duration // a client slow to take its bytes
	fails chan error
}

func (s *sink) toClient(p []byte) error {
	time.Sleep(s.delay)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b = append(s.b, p...)
	return nil
}

func (s *sink) onFail(err error) { s.fails <- err }

func (s *sink) take() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := string(s.b)
	s.b = s.b[:0]
	return r
}

func (s *sink) pin(t *testing.T, p *Pool, proto int) *Pinned {
	t.Helper()
	if s.fails == nil {
		s.fails = make(chan error, 4)
	}
	pc, err := p.Pin(context.Background(), proto, s.toClient, s.onFail)
	if err != nil {
		t.Fatalf("Pin: %v", err)
	}
	return pc
}

// do flushes cmds on pc and returns their replies. It waits for the bytes
// after Quiesce returns: see TestQuiesceWaitsForForwarding.
func (s *sink) do(t *testing.T, pc *Pinned, cmds ...[]byte) []string {
	t.Helper()
	s.take()
	for _, c := range cmds {
		pc.Queue(c)
	}
	if err := pc.Flush(len(cmds)); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	if err := pc.Quiesce(); err != nil {
		t.Fatalf("Quiesce: %v", err)
	}
	var got []byte
	var rs []string
	waitFor(t, 2*time.Second, "forwarded replies", func() bool {
		got = append(got, s.take()...)
		var err error
		rs, err = splitReplies(got)
		return err == nil && len(rs) == len(cmds)
	})
	return rs
}

func idleCount(p *Pool, proto int) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.idle[proto-2])
}

func TestDialSetUp(t *testing.T) {
	s := testredis.Start(t, testredis.Options{Password: "secret", NoTCP: true})
	if r := connDo(t, ctl(t, s), "ACL", "SETUSER", "u", "on", ">pw", "~*", "+@all"); r != "+OK\r\n" {
		t.Fatalf("ACL SETUSER: %q", r)
	}
	for _, proto := range []int{2, 3} {
		t.Run(fmt.Sprintf("ok/resp%d", proto), func(t *testing.T) {
			o := opts(s)
			o.Username, o.Password, o.DB = "u", "pw", 2
			c, err := Dial(context.Background(), &o, proto)
			if err != nil {
				t.Fatalf("Dial: %v", err)
			}
			defer c.Close()
			info := connDo(t, c, "CLIENT", "INFO")
			for k, want := range map[string]string{"user": "u", "db": "2", "resp": strconv.Itoa(proto)} {
				if got := field(info, k); got != want {
					t.Errorf("CLIENT INFO %s=%s, want %s (%q)", k, got, want, info)
				}
			}
			if who := connDo(t, c, "ACL", "WHOAMI"); who != "$1\r\nu\r\n" {
				t.Errorf("ACL WHOAMI: %q", who)
			}
		})
	}
	const bad = "Wr0ng-pa55word"
	for _, tc := range []struct {
		user  string
		proto int
		cmd   string
	}{{"u", 2, "AUTH"}, {"u", 3, "HELLO"}, {"", 2, "AUTH"}, {"", 3, "HELLO"}} {
		t.Run(fmt.Sprintf("wrong-password/user=%q/resp%d", tc.user, tc.proto), func(t *testing.T) {
			o := opts(s)
			o.Username, o.Password, o.DB = tc.user, bad, 2
			c, err := Dial(context.Background(), &o, tc.proto)
			var re *ReplyError
			if !errors.As(err, &re) {
				t.Fatalf("Dial: got %v, %v; want a *ReplyError", c, err)
			}
			if re.Command != tc.cmd || !strings.HasPrefix(re.Reply, "WRONGPASS") || strings.Contains(err.Error(), bad) {
				t.Errorf("Dial error %+v / %q: want %s WRONGPASS without the password", re, err, tc.cmd)
			}
		})
	}
	for _, tc := range []struct{ network, addr string }{
		{"tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(testredis.FreePort(t)))},
		{"unix", s.Socket + ".missing"},
	} {
		t.Run("unreachable/"+tc.network, func(t *testing.T) {
			o := opts(s)
			o.Network, o.Address = tc.network, tc.addr
			start := time.Now()
			c, err := Dial(context.Background(), &o, 2)
			if ne := net.Error(nil); c != nil || !errors.As(err, &ne) || time.Since(start) > 2*time.Second {
				t.Errorf("Dial %s: got %v, %v (%T) after %s; want a net.Error", tc.addr, c, err, err, time.Since(start))
			}
		})
	}
}

func TestPoolBackoff(t *testing.T) {
	s, p, logs := setup(t, Limits{MaxShared: 1, MaxPinned: 1})
	const want = "$1\r\na\r\n+PONG\r\n:1\r\n" // INCR: a restart loses the data
	do := func() (string, time.Duration) {
		b := &Batch{Cmds: [][]byte{cmd("ECHO", "a"), cmd("PING"), cmd("INCR", "n")}}
		start := time.Now()
		p.Do(2, b)
		return string(b.Out), time.Since(start)
	}
	retry := func() (time.Time, time.Duration) {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.retryAt, p.backoff
	}
	if out, _ := do(); out != want {
		t.Fatalf("Do: %q, want %q", out, want)
	}
	for outage := 1; outage <= 2; outage++ {
		s.Stop()
		waitFor(t, 3*time.Second, "dead shared connection", func() bool { return !p.shared[0][0].m.Load().alive() })
		for attempt := 1; ; attempt++ {
			out, d := do() // dials and fails
			lines := strings.SplitAfter(out, "\r\n")
			if d > 2*time.Second || len(lines) != 4 || lines[3] != "" || lines[0] != lines[1] || lines[1] != lines[2] ||
				!strings.HasPrefix(lines[0], "-ERR upstream unavailable: ") {
				t.Fatalf("Do with Redis down took %s and gave %q; want 3 upstream unavailable lines", d, out)
			}
			retryAt, backoff := retry()
			out2, d2 := do()
			if !time.Now().Before(retryAt) { // too slow to test within the backoff
				if attempt < 5 {
					continue
				}
				t.Fatalf("Do never ran within the backoff (%s)", backoff)
			}
			if out2 != out || d2 > 2*time.Second {
				t.Errorf("Do during backoff took %s and gave %q, want %q", d2, out2, out)
			}
			if r2, b2 := retry(); !r2.Equal(retryAt) || b2 != backoff {
				t.Errorf("Do during backoff dialed: retry at %v after %s became %v after %s", retryAt, backoff, r2, b2)
			}
			break
		}
		retryAt, _ := retry()
		time.Sleep(time.Until(retryAt))
		if out, _ := do(); !strings.HasPrefix(out, "-ERR upstream unavailable: ") {
			t.Fatalf("Do after the backoff, Redis still down: %q", out)
		}
		if r2, _ := retry(); !r2.After(retryAt) {
			t.Errorf("Do after the backoff did not dial again")
		}
		if n := len(logs.entries(t, "cannot connect to Redis")); n != outage {
			t.Errorf("outage %d, two failed dials: %d warnings, want %d", outage, n, outage)
		}
		s.Restart(t)
		waitFor(t, maxBackoff+2*time.Second, "success after restart", func() bool {
			out, _ := do()
			if strings.HasPrefix(out, "-ERR upstream unavailable") {
				return false
			} else if out != want {
				t.Fatalf("Do after restart: %q, want %q", out, want)
			}
			return true
		})
		for _, msg := range []string{"cannot connect to Redis", "Redis is reachable again"} {
			if n := len(logs.entries(t, msg)); n != outage {
				t.Errorf("after outage %d: %d %q log lines, want %d", outage, n, msg, outage)
			}
		}
	}
}

func TestAnnounceOnce(t *testing.T) {
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			s := testredis.Start(t, testredis.Options{NoTCP: network == "unix"})
			o := opts(s)
			p, logs := newPool(t, o, Limits{MaxShared: 1, MaxPinned: 2})
			const msg = "WARNING: Redis connection is not encrypted"
			if n := len(logs.entries(t, msg)); n != 0 {
				t.Fatalf("%d announcements before any dial", n)
			}
			for _, proto := range []int{2, 3} { // one shared dial each
				b := &Batch{Cmds: [][]byte{cmd("PING")}}
				if p.Do(proto, b); string(b.Out) != "+PONG\r\n" {
					t.Fatalf("Do resp%d: %q", proto, b.Out)
				}
			}
			sk := &sink{}
			pc1, pc2 := sk.pin(t, p, 2), sk.pin(t, p, 3) // two pinned dials
			pc1.Unpin(Broken)
			pc2.Unpin(Broken)
			if e := logs.entries(t, msg); len(e) != 1 {
				t.Errorf("%d %q lines after 4 dials, want 1", len(e), msg)
			} else if e[0]["level"] != "warn" || e[0]["loopback"] != true || e[0]["tls"] != false ||
				e[0]["network"] != network || e[0]["upstream"] != o.Address {
				t.Errorf("announcement %v", e[0])
			}
		})
	}
}

func TestSharedManyClients(t *testing.T) {
	const clients, batches = 50, 200
	s, p, _ := setup(t, Limits{MaxShared: 2, MaxPinned: 1})
	var wg sync.WaitGroup
	for g := range clients {
		wg.Go(func() {
			proto := 2 + g%2
			var b Batch
			for i := range batches {
				echo := fmt.Sprintf("c%d-b%d", g, i)
				b.Reset()
				b.Cmds = append(b.Cmds, cmd("INCR", "counter"), cmd("ECHO", echo), cmd("INCRBY", "counter", "2"))
				p.Do(proto, &b)
				rs, err := splitReplies(b.Out)
				if err != nil || len(rs) != 3 || rs[1] != fmt.Sprintf("$%d\r\n%s\r\n", len(echo), echo) {
					t.Errorf("client %d batch %d (resp%d): replies %q, %v", g, i, proto, rs, err)
					return
				}
				n1, err1 := strconv.Atoi(strings.Trim(rs[0], ":\r\n"))
				n2, err2 := strconv.Atoi(strings.Trim(rs[2], ":\r\n"))
				if err1 != nil || err2 != nil || n2 < n1+2 {
					t.Errorf("client %d batch %d: INCR %q then INCRBY %q", g, i, rs[0], rs[2])
					return
				}
			}
		})
	}
	wg.Wait()
	if got, want := connDo(t, ctl(t, s), "GET", "counter"), "$5\r\n30000\r\n"; got != want {
		t.Errorf("counter %q, want %q", got, want)
	}
}

func TestPinUnpinState(t *testing.T) {
	s := testredis.Start(t, testredis.Options{Password: "secret", NoTCP: true})
	for _, tc := range []struct {
		proto int
		null  string
	}{{2, "$-1\r\n"}, {3, "_\r\n"}} {
		t.Run(fmt.Sprintf("resp%d", tc.proto), func(t *testing.T) {
			o := opts(s)
			o.DB = 3
			p, _ := newPool(t, o, Limits{MaxShared: 1, MaxIdle: 1, MaxPinned: 2})
			sk := &sink{}
			pc := sk.pin(t, p, tc.proto)
			id := sk.do(t, pc, cmd("CLIENT", "ID"))[0]
			if rs := sk.do(t, pc, cmd("CLIENT", "SETNAME", "x"), cmd("SELECT", "5")); rs[0] != "+OK\r\n" || rs[1] != "+OK\r\n" {
				t.Fatalf("SETNAME, SELECT: %q", rs)
			}
			pc.Unpin(Dirty)
			if n := idleCount(p, tc.proto); n != 1 {
				t.Fatalf("%d idle connections after Unpin(Dirty), want 1", n)
			}

			pc = sk.pin(t, p, tc.proto)
			if got := sk.do(t, pc, cmd("CLIENT", "ID"))[0]; got != id {
				t.Fatalf("CLIENT ID %q after re-pin, want the same connection %q", got, id)
			}
			if got := sk.do(t, pc, cmd("CLIENT", "GETNAME"))[0]; got != tc.null {
				t.Errorf("CLIENT GETNAME after Unpin(Dirty): %q, want %q", got, tc.null)
			}
			info := sk.do(t, pc, cmd("CLIENT", "INFO"))[0]
			for k, want := range map[string]string{"db": "3", "resp": strconv.Itoa(tc.proto), "name": "", "user": "default"} {
				if got := field(info, k); got != want {
					t.Errorf("CLIENT INFO after Unpin(Dirty): %s=%s, want %s", k, got, want)
				}
			}

			// A clean unpin while a reply is owed closes the connection.
			numID, c := strings.Trim(id, ":\r\n"), ctl(t, s)
			pc.Queue(cmd("BLPOP", "k", "0"))
			if err := pc.Flush(1); err != nil {
				t.Fatal(err)
			}
			waitFor(t, 3*time.Second, "blocked BLPOP", func() bool {
				return field(connDo(t, c, "CLIENT", "LIST", "ID", numID), "cmd") == "blpop"
			})
			pc.Unpin(Clean)
			if n := idleCount(p, tc.proto); n != 0 {
				t.Errorf("%d idle connections after Unpin(Clean) with a reply owed, want 0", n)
			}
			waitFor(t, 3*time.Second, "blocked client gone from CLIENT LIST", func() bool {
				return field(connDo(t, c, "CLIENT", "LIST", "ID", numID), "id") == "<missing>"
			})
			select {
			case err := <-sk.fails:
				t.Errorf("onFail(%v) on a deliberate Unpin", err)
			default:
			}
		})
	}
}

func TestPinnedNoticesRedisGone(t *testing.T) {
	s, p, _ := setup(t, Limits{MaxShared: 1, MaxIdle: 1, MaxPinned: 1})
	sk := &sink{}
	pc := sk.pin(t, p, 2)
	if r := sk.do(t, pc, cmd("PING")); r[0] != "+PONG\r\n" {
		t.Fatalf("PING: %q", r)
	}
	s.Stop()
	select {
	case err := <-sk.fails:
		if err == nil {
			t.Error("onFail(nil)")
		}
	case <-time.After(3 * time.Second):
		t.Fatal("onFail not called within 3s of Redis stopping")
	}
	if pc.Unpin(Clean); idleCount(p, 2) != 0 {
		t.Error("failed connection pooled")
	}
}

func TestMaxPinned(t *testing.T) {
	s := testredis.Start(t, testredis.Options{NoTCP: true})
	o := opts(s)
	o.DialTimeout = 200 * time.Millisecond
	p, _ := newPool(t, o, Limits{MaxShared: 1, MaxIdle: 1, MaxPinned: 1})
	sk := &sink{}
	pc := sk.pin(t, p, 2)
	start := time.Now()
	_, err := p.Pin(context.Background(), 2, sk.toClient, sk.onFail)
	if !errors.Is(err, ErrPinnedExhausted) || time.Since(start) > 2*time.Second {
		t.Errorf("second Pin: %v after %s, want ErrPinnedExhausted", err, time.Since(start))
	}
	pc.Unpin(Clean)
	pc = sk.pin(t, p, 2)
	defer pc.Unpin(Clean)
	if r := sk.do(t, pc, cmd("PING")); r[0] != "+PONG\r\n" {
		t.Errorf("PING: %q", r)
	}
}

func TestHealthy(t *testing.T) {
	s, p, _ := setup(t, Limits{MaxShared: 1, MaxIdle: 1, MaxPinned: 1})
	c, err := p.dial(2)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if !c.healthy() {
			t.Fatal("idle connection not healthy")
		}
		if r := connDo(t, c, "PING"); r != "+PONG\r\n" {
			t.Fatalf("PING after healthy(): %q", r)
		}
	}
	id := connDo(t, c, "CLIENT", "ID")
	p.putIdle(c)
	if r := connDo(t, ctl(t, s), "CLIENT", "KILL", "ID", strings.Trim(id, ":\r\n")); r != ":1\r\n" {
		t.Fatalf("CLIENT KILL: %q", r)
	}
	for deadline := time.Now().Add(2 * time.Second); c.healthy() && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	if c.healthy() {
		t.Errorf("connection still healthy() 2s after CLIENT KILL")
	}
	// Pin must skip the dead idle connection and dial a new one.
	sk := &sink{}
	pc := sk.pin(t, p, 2)
	defer pc.Unpin(Clean)
	if got := sk.do(t, pc, cmd("CLIENT", "ID"))[0]; got == id {
		t.Errorf("Pin reused the killed connection %s", id)
	}
}

// TestQuiesceWaitsForForwarding: Quiesce promises that every owed reply has
// reached toClient, so what the session writes next comes after it.
func TestQuiesceWaitsForForwarding(t *testing.T) {
	_, p, _ := setup(t, Limits{MaxShared: 1, MaxIdle: 1, MaxPinned: 1})
	sk := &sink{delay: 300 * time.Millisecond}
	pc := sk.pin(t, p, 2)
	defer pc.Unpin(Clean)
	pc.Queue(cmd("PING"))
	if err := pc.Flush(1); err != nil {
		t.Fatal(err)
	}
	if err := pc.Quiesce(); err != nil {
		t.Fatal(err)
	}
	if got := sk.take(); got != "+PONG\r\n" {
		t.Errorf("after Quiesce the client has %q, want +PONG: Quiesce returned before the reply was forwarded", got)
	}
}
