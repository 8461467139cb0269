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
	c, err := Dial(context.Background(), &o, 2, 0)
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

// field returns key's value in CLIENT INFO or CLIENT LIST output (a bulk
// or, in RESP3, a verbatim "txt:" string).
func field(info, key string) string {
	for _, f := range strings.Fields(info) {
		if v, ok := strings.CutPrefix(strings.TrimPrefix(f, "txt:"), key+"="); ok {
			return v
		}
	}
	return "<missing>"
}

// clientInfo is Redis's CLIENT LIST line for the connection with the given
// id, asked on c; a connection that is gone has no fields.
func clientInfo(t *testing.T, c *Conn, id int64) string {
	t.Helper()
	return connDo(t, c, "CLIENT", "LIST", "ID", strconv.FormatInt(id, 10))
}

// infoField returns key's value in the INFO section asked on c, or "".
func infoField(t *testing.T, c *Conn, section, key string) string {
	t.Helper()
	for _, line := range strings.Split(connDo(t, c, "INFO", section), "\r\n") {
		if v, ok := strings.CutPrefix(line, key+":"); ok {
			return v
		}
	}
	return ""
}

// infoInt returns an integer field of INFO.
func infoInt(t *testing.T, c *Conn, section, key string) int {
	t.Helper()
	v := infoField(t, c, section, key)
	n, err := strconv.Atoi(v)
	if err != nil {
		t.Fatalf("INFO %s %s: %q", section, key, v)
	}
	return n
}

// calls returns how many times Redis ran cmd ("reset", "client|id"),
// from INFO commandstats.
func calls(t *testing.T, c *Conn, cmd string) int {
	t.Helper()
	v := infoField(t, c, "commandstats", "cmdstat_"+cmd)
	if v == "" {
		return 0
	}
	n, err := strconv.Atoi(field(strings.ReplaceAll(v, ",", " "), "calls"))
	if err != nil {
		t.Fatalf("cmdstat_%s: %q", cmd, v)
	}
	return n
}

// frames cuts raw bytes from Redis into whole frames, replies and push
// frames alike, in order.
func frames(out []byte) (fs []string, err error) {
	var s resp.Scanner
	for len(out) > 0 {
		var n int
		var done bool
		if s.AtPush(out) {
			n, done, err = s.ScanPush(out)
		} else {
			var k int
			n, k, err = s.Scan(out, 1)
			done = k == 1
		}
		if err != nil || !done {
			return fs, fmt.Errorf("incomplete or bad frame %q: %v", out, err)
		}
		fs, out = append(fs, string(out[:n])), out[n:]
	}
	return fs, nil
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %s", what, d)
		}
	}
}

func idleCount(p *Pool, proto int) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.idle[proto-2])
}

// sharedMux returns the i-th shared connection for (proto, db), or nil.
func sharedMux(p *Pool, proto, db, i int) *mux {
	v, ok := p.shared.Load(sharedKey{proto, db})
	if !ok {
		return nil
	}
	return v.([]*sharedSlot)[i].m.Load()
}

func TestDialSetUp(t *testing.T) {
	s := testredis.Start(t, testredis.Options{Password: "secret", NoTCP: true})
	if r := connDo(t, ctl(t, s), "ACL", "SETUSER", "u", "on", ">pw", "~*", "+@all"); r != "+OK\r\n" {
		t.Fatalf("ACL SETUSER: %q", r)
	}
	for _, proto := range []int{2, 3} {
		t.Run(fmt.Sprintf("ok/resp%d", proto), func(t *testing.T) {
			o := opts(s)
			o.Username, o.Password = "u", "pw"
			c, err := Dial(context.Background(), &o, proto, 2)
			if err != nil {
				t.Fatalf("Dial: %v", err)
			}
			defer c.Close()
			info := connDo(t, c, "CLIENT", "INFO")
			for k, want := range map[string]string{"user": "u", "db": "2", "resp": strconv.Itoa(proto), "id": strconv.FormatInt(c.id, 10)} {
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
			o.Username, o.Password = tc.user, bad
			c, err := Dial(context.Background(), &o, tc.proto, 2)
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
			c, err := Dial(context.Background(), &o, 2, 0)
			if ne := net.Error(nil); c != nil || !errors.As(err, &ne) || time.Since(start) > 2*time.Second {
				t.Errorf("Dial %s: got %v, %v (%T) after %s; want a net.Error", tc.addr, c, err, err, time.Since(start))
			}
		})
	}
}

// TestDialUserWithoutPassword: a username without a password authenticates
// as that user (a nopass user accepts the empty password), and a user that
// has a password fails the dial: the connection never goes on as the default
// user, which here needs no password and would have let it through.
func TestDialUserWithoutPassword(t *testing.T) {
	s := testredis.Start(t, testredis.Options{NoTCP: true})
	c := ctl(t, s)
	for _, acl := range [][]string{
		{"restricted", "on", "nopass", "+ping", "+acl|whoami", "+client|id"},
		{"haspw", "on", ">pw", "+@all", "~*"},
		{"noclientid", "on", "nopass", "+ping"},
	} {
		if r := connDo(t, c, append([]string{"ACL", "SETUSER"}, acl...)...); r != "+OK\r\n" {
			t.Fatalf("ACL SETUSER %v: %q", acl, r)
		}
	}
	for _, proto := range []int{2, 3} {
		t.Run(fmt.Sprintf("nopass/resp%d", proto), func(t *testing.T) {
			o := opts(s)
			o.Username = "restricted"
			uc, err := Dial(context.Background(), &o, proto, 0)
			if err != nil {
				t.Fatalf("Dial: %v", err)
			}
			defer uc.Close()
			if who := connDo(t, uc, "ACL", "WHOAMI"); who != "$10\r\nrestricted\r\n" {
				t.Errorf("ACL WHOAMI: %q, want restricted", who)
			}
			if r := connDo(t, uc, "GET", "k"); !strings.HasPrefix(r, "-NOPERM") {
				t.Errorf("GET as restricted: %q, want NOPERM", r)
			}
		})
		t.Run(fmt.Sprintf("haspw/resp%d", proto), func(t *testing.T) {
			o := opts(s)
			o.Username = "haspw"
			uc, err := Dial(context.Background(), &o, proto, 0)
			cmd := map[int]string{2: "AUTH", 3: "HELLO"}[proto]
			var re *ReplyError
			if !errors.As(err, &re) || re.Command != cmd || !strings.HasPrefix(re.Reply, "WRONGPASS") {
				if uc != nil {
					t.Errorf("connected as %q", connDo(t, uc, "ACL", "WHOAMI"))
					uc.Close()
				}
				t.Fatalf("Dial: %v (%T); want a *ReplyError from %s: WRONGPASS", err, err, cmd)
			}
		})
		// An ACL user may not be allowed CLIENT ID: it connects, and its
		// connections' ids are unknown (0).
		t.Run(fmt.Sprintf("noclientid/resp%d", proto), func(t *testing.T) {
			o := opts(s)
			o.Username = "noclientid"
			uc, err := Dial(context.Background(), &o, proto, 0)
			if err != nil {
				t.Fatalf("Dial: %v", err)
			}
			defer uc.Close()
			if r := connDo(t, uc, "PING"); r != "+PONG\r\n" || uc.id != 0 {
				t.Errorf("PING: %q, id %d", r, uc.id)
			}
			if r := connDo(t, uc, "ACL", "WHOAMI"); !strings.HasPrefix(r, "-NOPERM") {
				t.Errorf("ACL WHOAMI as noclientid: %q, want NOPERM", r)
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
		p.Do(2, 0, b)
		if b.Lost {
			t.Errorf("batch lost: %q", b.Out)
		}
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
		waitFor(t, 3*time.Second, "dead shared connection", func() bool { return !sharedMux(p, 2, 0, 0).alive() })
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
				if p.Do(proto, 0, b); string(b.Out) != "+PONG\r\n" {
					t.Fatalf("Do resp%d: %q", proto, b.Out)
				}
			}
			sk := &sink{}
			d1, d2 := sk.dedicate(t, p, 2, 0), sk.dedicate(t, p, 3, 0) // two dedicated dials
			d1.Release()
			d2.Release()
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
				b.Cmds, b.Out = b.Cmds[:0], b.Out[:0]
				b.Cmds = append(b.Cmds, cmd("INCR", "counter"), cmd("ECHO", echo), cmd("INCRBY", "counter", "2"))
				p.Do(proto, 0, &b)
				rs, err := frames(b.Out)
				if err != nil || b.Lost || len(rs) != 3 || rs[1] != fmt.Sprintf("$%d\r\n%s\r\n", len(echo), echo) {
					t.Errorf("client %d batch %d (resp%d): replies %q (lost %t), %v", g, i, proto, rs, b.Lost, err)
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

// TestPoolByDatabase: shared connections are kept per database, and a
// database Redis refused is refused again, and so is every higher one,
// without dialing.
func TestPoolByDatabase(t *testing.T) {
	s, p, _ := setup(t, Limits{MaxShared: 1, MaxIdle: 1, MaxPinned: 1})
	c := ctl(t, s)
	do := func(proto, db int, args ...string) string {
		t.Helper()
		b := &Batch{Cmds: [][]byte{cmd(args...)}}
		p.Do(proto, db, b)
		if b.Lost {
			t.Fatalf("Do(%d, %d, %v) lost", proto, db, args)
		}
		return string(b.Out)
	}
	for _, proto := range []int{2, 3} {
		k := fmt.Sprintf("k%d", proto)
		if r := do(proto, 3, "SET", k, "v"); r != "+OK\r\n" {
			t.Fatalf("SET in db 3 (resp%d): %q", proto, r)
		}
		connDo(t, c, "SELECT", "3")
		if r := connDo(t, c, "GET", k); r != "$1\r\nv\r\n" {
			t.Errorf("GET %s in db 3: %q, want v", k, r)
		}
		connDo(t, c, "SELECT", "0")
		if r := connDo(t, c, "EXISTS", k); r != ":0\r\n" {
			t.Errorf("EXISTS %s in db 0: %q, want 0", k, r)
		}
	}
	if m := sharedMux(p, 2, 3, 0); m == nil || field(clientInfo(t, c, m.c.id), "db") != "3" {
		t.Errorf("shared connection for (2, 3): %v", m)
	}

	received := func() int { return infoInt(t, c, "stats", "total_connections_received") }
	before := received()
	if err := p.CheckDB(99); err != nil {
		t.Fatalf("CheckDB(99) before Redis said anything: %v", err)
	}
	const refused = "-ERR upstream unavailable: SELECT: ERR DB index is out of range\r\n"
	if r := do(2, 99, "PING"); r != refused {
		t.Errorf("PING in db 99: %q, want %q", r, refused)
	}
	if n := received() - before; n != 1 {
		t.Errorf("%d connections for the first use of db 99, want 1", n)
	}
	for _, db := range []int{99, 100, 1 << 30, -1} {
		if err := p.CheckDB(db); err != ErrBadDB {
			t.Errorf("CheckDB(%d): %v, want ErrBadDB", db, err)
		}
	}
	if r := do(3, 100, "PING"); r != refused {
		t.Errorf("PING in db 100: %q, want %q", r, refused)
	}
	sk := &sink{}
	if d, err := p.Dedicate(context.Background(), 2, 100, "t", sk.toClient, sk.onFail); !errors.Is(err, ErrBadDB) {
		t.Errorf("Dedicate in db 100: %v, %v; want ErrBadDB", d, err)
	}
	if n := received() - before; n != 1 {
		t.Errorf("%d connections after db 100 was refused, want 1: CheckDB dialed", n)
	}
	if err := p.CheckDB(15); err != nil {
		t.Errorf("CheckDB(15): %v", err)
	}
	// A refused SELECT is no outage: no backoff.
	if r := do(2, 15, "PING"); r != "+PONG\r\n" {
		t.Errorf("PING in db 15 right after the refusal: %q", r)
	}
}

// TestDedicateBadDBKeepsIdle: leasing a connection in a database Redis
// refuses leaves the idle connections alone.
func TestDedicateBadDBKeepsIdle(t *testing.T) {
	_, p, _ := setup(t, Limits{MaxShared: 1, MaxIdle: 2, MaxPinned: 3})
	sk := &sink{}
	d1, d2 := sk.dedicate(t, p, 2, 0), sk.dedicate(t, p, 2, 0)
	d1.Release()
	d2.Release()
	if n := idleCount(p, 2); n != 2 {
		t.Fatalf("%d idle connections, want 2", n)
	}
	if _, err := p.Dedicate(context.Background(), 2, 99, "t", sk.toClient, sk.onFail); err == nil {
		t.Fatal("Dedicate in db 99 succeeded")
	}
	if n := idleCount(p, 2); n != 2 {
		t.Errorf("%d idle connections after a refused SELECT 99, want 2", n)
	}
}

// TestSelectNotAllowed: a SELECT that Redis refuses for another reason than
// a missing database (here an ACL that does not allow SELECT) does not make
// the pool believe the database does not exist.
func TestSelectNotAllowed(t *testing.T) {
	s := testredis.Start(t, testredis.Options{NoTCP: true})
	if r := connDo(t, ctl(t, s), "ACL", "SETUSER", "noselect", "on", "nopass", "+@all", "-select", "~*"); r != "+OK\r\n" {
		t.Fatalf("ACL SETUSER: %q", r)
	}
	o := opts(s)
	o.Username = "noselect"
	p, _ := newPool(t, o, Limits{MaxShared: 1, MaxPinned: 1})
	b := &Batch{Cmds: [][]byte{cmd("PING")}}
	p.Do(2, 1, b)
	if !strings.Contains(string(b.Out), "NOPERM") {
		t.Errorf("PING in db 1 as a user without SELECT: %q, want NOPERM", b.Out)
	}
	if err := p.CheckDB(1); err != nil {
		t.Errorf("CheckDB(1) after NOPERM: %v; Redis never said db 1 does not exist", err)
	}
}

func TestMaxPinned(t *testing.T) {
	s := testredis.Start(t, testredis.Options{NoTCP: true})
	o := opts(s)
	o.DialTimeout = 200 * time.Millisecond
	p, _ := newPool(t, o, Limits{MaxShared: 1, MaxIdle: 1, MaxPinned: 1})
	sk := &sink{}
	d := sk.dedicate(t, p, 2, 0)
	start := time.Now()
	_, err := p.Dedicate(context.Background(), 2, 0, "t", sk.toClient, sk.onFail)
	if !errors.Is(err, ErrPinnedExhausted) || time.Since(start) > 2*time.Second {
		t.Errorf("second Dedicate: %v after %s, want ErrPinnedExhausted", err, time.Since(start))
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := p.Dedicate(ctx, 2, 0, "t", sk.toClient, sk.onFail); !errors.Is(err, context.Canceled) {
		t.Errorf("Dedicate with a cancelled context: %v", err)
	}
	d.Release()
	d = sk.dedicate(t, p, 2, 0)
	defer d.Release()
	d.Send(cmd("PING"), EffectNone, 0)
	if r := sk.settle(t, d); r != "+PONG\r\n" {
		t.Errorf("PING: %q", r)
	}
}

func TestHealthy(t *testing.T) {
	s, p, _ := setup(t, Limits{MaxShared: 1, MaxIdle: 1, MaxPinned: 1})
	c, err := p.dial(2, 0)
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
	id := c.id
	if r := connDo(t, c, "CLIENT", "ID"); r != fmt.Sprintf(":%d\r\n", id) {
		t.Fatalf("CLIENT ID %q, Conn.id %d", r, id)
	}
	p.putIdle(c)
	if r := connDo(t, ctl(t, s), "CLIENT", "KILL", "ID", strconv.FormatInt(id, 10)); r != ":1\r\n" {
		t.Fatalf("CLIENT KILL: %q", r)
	}
	for deadline := time.Now().Add(2 * time.Second); c.healthy() && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	if c.healthy() {
		t.Errorf("connection still healthy() 2s after CLIENT KILL")
	}
	// Dedicate must skip the dead idle connection and dial a new one.
	sk := &sink{}
	d := sk.dedicate(t, p, 2, 0)
	defer d.Release()
	if d.ID() == id {
		t.Errorf("Dedicate reused the killed connection %d", id)
	}
}
