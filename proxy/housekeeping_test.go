package proxy

import (
	"context"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// The proxy's own housekeeping commands (RESET and the set-up after it,
// CLIENT SETNAME for a named session, fence PINGs) must stay out of Redis's
// SLOWLOG, INFO commandstats and MONITOR when a session leaves nothing on its
// dedicated connection, and be visible there when they do run (so that the
// negative checks could fail at all).
//
// Every connection the test opens straight to Redis is tagged by its local
// address ("observer", "monitor", "ref", "pusher"). A slowlog entry or
// MONITOR line from an untagged address came over one of the proxy's
// upstream connections. This also takes care of the observer's own
// SLOWLOG GET, INFO and CLIENT LIST, which Redis logs after they ran.

// hkRedis watches the test Redis.
type hkRedis struct {
	e      *proxyEnv
	c      *redis.Client // the observer
	mu     sync.Mutex
	tags   map[string]string // local address -> who
	monBuf strings.Builder   // what MONITOR sent
}

// hkStart starts Redis, logging every command to the slowlog, a proxy in
// front of it and an observer.
func hkStart(t *testing.T) (*proxyEnv, *hkRedis) {
	t.Helper()
	e := safetyStart(t, []string{"--slowlog-log-slower-than", "0", "--slowlog-max-len", "100000"}, nil)
	h := &hkRedis{e: e, tags: map[string]string{}}
	h.c = redis.NewClient(&redis.Options{Addr: e.redis.Addr, Protocol: 2,
		Dialer: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err == nil {
				h.tag(c.LocalAddr().String(), "observer")
			}
			return c, err
		}})
	t.Cleanup(func() { h.c.Close() })
	return e, h
}

func (h *hkRedis) tag(addr, who string) { h.mu.Lock(); h.tags[addr] = who; h.mu.Unlock() }

func (h *hkRedis) who(addr string) string { h.mu.Lock(); defer h.mu.Unlock(); return h.tags[addr] }

// peer opens a raw connection straight to Redis, tagged who.
func (h *hkRedis) peer(t *testing.T, who string) *safetyPeer {
	t.Helper()
	p := safetyDirect(t, h.e)
	h.tag(p.c.LocalAddr().String(), who)
	return p
}

// startMonitor records everything Redis's MONITOR shows from now on.
func (h *hkRedis) startMonitor(t *testing.T) {
	t.Helper()
	m := h.peer(t, "monitor")
	m.send(t, cmd("MONITOR"))
	if got := m.frames(t, 1, safetyReplyWait)[0]; got != "+OK\r\n" {
		t.Fatalf("MONITOR: %q", got)
	}
	go io.Copy(&safetyLockedWriter{mu: &h.mu, w: &h.monBuf}, m.r)
}

// monitor returns the MONITOR lines (command part only) of connections
// tagged who, once the monitor has seen everything run so far.
func (h *hkRedis) monitor(t *testing.T, who string) []string {
	t.Helper()
	mark := fmt.Sprintf("hk-mark-%d", time.Now().UnixNano())
	if err := h.c.Echo(context.Background(), mark).Err(); err != nil {
		t.Fatal(err)
	}
	var text string
	waitFor(t, "the MONITOR stream to catch up", func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		text = h.monBuf.String()
		return strings.Contains(text, mark)
	})
	var out []string
	for _, l := range strings.Split(text, "\r\n") {
		// +1712345678.123456 [0 127.0.0.1:51234] "SET" "k" "v"
		if f := strings.SplitN(l, " ", 4); len(f) == 4 && h.who(strings.TrimSuffix(f[2], "]")) == who {
			out = append(out, f[3])
		}
	}
	return out
}

// slowlog returns the slowlog entries of connections tagged who, oldest
// first, each as its arguments joined by spaces.
func (h *hkRedis) slowlog(t *testing.T, who string) []string {
	t.Helper()
	logs, err := h.c.SlowLogGet(context.Background(), 100000).Result()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range slices.Backward(logs) {
		if h.who(l.ClientAddr) == who {
			out = append(out, strings.Join(l.Args, " "))
		}
	}
	return out
}

func (h *hkRedis) slowlogReset(t *testing.T) {
	if err := h.c.SlowLogReset(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
}

// ended counts the proxy's "session ended" log lines: a session logs it
// after giving back its dedicated connection (and any RESET that took).
func (h *hkRedis) ended() int { return strings.Count(h.e.logs.String(), `"session ended"`) }

// settle waits until a session has ended since ended() returned before, and
// then until the id and last command of every connection Redis lists
// (except the test's own) stop changing.
func (h *hkRedis) settle(t *testing.T, before int) {
	t.Helper()
	waitFor(t, "the proxy to end the session", func() bool { return h.ended() > before })
	snapshot := func() string {
		list, err := h.c.ClientList(context.Background()).Result()
		if err != nil {
			t.Fatal(err)
		}
		var b strings.Builder
		for _, l := range strings.Split(list, "\n") {
			if l != "" && h.who(safetyInfoField(l, "addr")) == "" {
				fmt.Fprintf(&b, "%s %s\n", safetyInfoField(l, "id"), safetyInfoField(l, "cmd"))
			}
		}
		return b.String()
	}
	last, same := snapshot(), 0
	waitFor(t, "Redis's CLIENT LIST to stop changing", func() bool {
		time.Sleep(50 * time.Millisecond)
		now := snapshot()
		if now != last {
			last, same = now, 0
		}
		same++
		return same > 4 // unchanged for 200ms
	})
}

// hkTransaction runs MULTI, SET k v, EXEC, GET k on p and returns the replies.
func hkTransaction(t *testing.T, p *safetyPeer) []string {
	t.Helper()
	var got []string
	for _, c := range []string{cmd("MULTI"), cmd("SET", "k", "v"), cmd("EXEC"), cmd("GET", "k")} {
		p.send(t, c)
		got = append(got, p.frames(t, 1, safetyReplyWait)...)
	}
	return got
}

// hkBlpop blocks p in BLPOP list 0, has pusher serve it with RPUSH, reads
// the reply and disconnects p.
func hkBlpop(t *testing.T, h *hkRedis, p, pusher *safetyPeer) {
	t.Helper()
	p.send(t, cmd("BLPOP", "list", "0"))
	waitFor(t, "the BLPOP to block", func() bool { return rejInfoInt(t, h.c, "clients", "blocked_clients") == 1 })
	pusher.send(t, cmd("RPUSH", "list", "x"))
	pusher.frames(t, 1, safetyReplyWait)
	if got, want := p.frames(t, 1, safetyReplyWait)[0], "*2\r\n$4\r\nlist\r\n$1\r\nx\r\n"; got != want {
		t.Fatalf("%s: BLPOP got %q, want %q", p.name, got, want)
	}
	p.c.Close()
}

// hkKind says whether a slowlog entry or MONITOR line (whose arguments are
// quoted) is the proxy's own: "housekeeping" (RESET, CLIENT SETNAME,
// SELECT in database 0, a fence PING), "setup" (documented for a new
// upstream connection: CLIENT ID, HELLO, AUTH) or "" (a client's).
func hkKind(l string) string {
	f := append(strings.Fields(strings.ToUpper(strings.ReplaceAll(l, `"`, ""))), "", "")
	switch {
	case f[0] == "RESET" || f[0] == "SELECT" || f[0] == "CLIENT" && f[1] == "SETNAME" ||
		f[0] == "PING" && strings.HasPrefix(f[1], "TLSPROXY-FENCE"):
		return "housekeeping"
	case f[0] == "HELLO" || f[0] == "AUTH" || f[0] == "CLIENT" && f[1] == "ID":
		return "setup"
	}
	return ""
}

// hkCheck fails unless lines, less any documented set-up, are want (what
// the same client causes directly), and none is housekeeping.
func hkCheck(t *testing.T, where string, lines, want []string) {
	t.Helper()
	clients := slices.DeleteFunc(slices.Clone(lines), func(l string) bool { return hkKind(l) == "setup" })
	if !slices.Equal(clients, want) || len(want) == 0 {
		t.Errorf("%s through the proxy (oldest first):\n %q\nwant as directly:\n %q", where, lines, want)
	}
	for _, l := range lines {
		if hkKind(l) == "housekeeping" {
			t.Errorf("%s shows the proxy's own %q", where, l)
		}
	}
}

// TestHousekeepingQuietSessions: a session whose transaction or blocking
// command left nothing on its dedicated connection gives it back without
// RESET, CLIENT SETNAME, SELECT or fence PING, so Redis's SLOWLOG, INFO
// commandstats and MONITOR show exactly what the same client shows when
// connected directly.
func TestHousekeepingQuietSessions(t *testing.T) {
	e, h := hkStart(t)
	pusher := h.peer(t, "pusher")

	// Warm up: the upstream connections (and their documented set-up
	// commands) exist before anything is recorded.
	n := h.ended()
	w := safetyProxy(t, e)
	hkTransaction(t, w)
	hkBlpop(t, h, w, pusher)
	h.settle(t, n)
	h.startMonitor(t)
	resets := failCmdCalls(t, h.c, "reset")

	// 1. MULTI, SET, EXEC, GET: directly, then through the proxy. The
	// observer's own SLOWLOG GET is logged after it answers, but it is
	// tagged, so it never counts as the newest entry here.
	h.slowlogReset(t)
	want := hkTransaction(t, h.peer(t, "ref"))
	wantLog := h.slowlog(t, "ref")
	h.slowlogReset(t)
	p := safetyProxy(t, e)
	safetySame(t, "MULTI/SET/EXEC/GET replies", want, hkTransaction(t, p))
	time.Sleep(300 * time.Millisecond)
	got := h.slowlog(t, "")
	hkCheck(t, "slowlog after the transaction", got, wantLog)
	if len(got) == 0 || got[len(got)-1] != "GET k" {
		t.Errorf("newest slowlog entry through the proxy is not GET k: %q", got)
	}
	n = h.ended()
	p.c.Close()
	h.settle(t, n)
	hkCheck(t, "slowlog after the transaction's client left", h.slowlog(t, ""), wantLog)

	// 2. BLPOP served by RPUSH, then disconnect: directly, then through the
	// proxy; nothing may follow the release of the dedicated connection.
	h.slowlogReset(t)
	hkBlpop(t, h, h.peer(t, "ref"), pusher)
	wantLog = h.slowlog(t, "ref")
	h.slowlogReset(t)
	n = h.ended()
	hkBlpop(t, h, safetyProxy(t, e), pusher)
	h.settle(t, n)
	got = h.slowlog(t, "")
	hkCheck(t, "slowlog after BLPOP and disconnect", got, wantLog)
	if len(got) > 0 && got[len(got)-1] == "RESET" {
		t.Errorf("the newest slowlog entry is RESET: %q", got)
	}
	if now := failCmdCalls(t, h.c, "reset"); now != resets {
		t.Errorf("cmdstat_reset calls went from %d to %d", resets, now)
	}

	// 3. MONITOR, running through both: the same commands as directly.
	hkCheck(t, "MONITOR", h.monitor(t, ""), h.monitor(t, "ref"))
}

// TestHousekeepingNamedSessionReset is the contrast: a named session's
// dedicated connection holds the name, so it is RESET when given back, and
// a reply the proxy makes itself there is placed with a fence PING. Both
// show in MONITOR, SLOWLOG and commandstats: the checks above can see them.
func TestHousekeepingNamedSessionReset(t *testing.T) {
	e, h := hkStart(t)
	h.startMonitor(t)
	h.slowlogReset(t)
	resets := failCmdCalls(t, h.c, "reset")

	// EXEC and CLIENT ID go in one write, so the session still holds its
	// dedicated connection when the proxy answers CLIENT ID itself (with the
	// session's own id): a fence PING keeps that reply's place. At the end
	// of the burst the connection, holding the name, is given back: RESET.
	steps := []struct {
		req  string
		want []string // each reply's start
	}{
		{cmd("CLIENT", "SETNAME", "app1"), []string{"+OK\r\n"}},
		{cmd("MULTI"), []string{"+OK\r\n"}},
		{cmd("SET", "k", "v"), []string{"+QUEUED\r\n"}},
		{cmd("EXEC") + cmd("CLIENT", "ID"), []string{"*1\r\n+OK\r\n", ":"}},
		{cmd("GET", "k"), []string{"$1\r\nv\r\n"}},
	}
	// The same client directly, then through the proxy.
	for _, p := range []*safetyPeer{h.peer(t, "ref"), safetyProxy(t, e)} {
		for _, s := range steps {
			p.send(t, s.req)
			got := p.frames(t, len(s.want), safetyReplyWait)
			for i, w := range s.want {
				if !strings.HasPrefix(got[i], w) {
					t.Fatalf("%s: %q: got %q, want %q...", p.name, s.req, got, s.want)
				}
			}
		}
	}
	if ref := h.slowlog(t, "ref"); slices.Contains(ref, "RESET") {
		t.Errorf("the direct client's slowlog has a RESET: %q", ref)
	}

	mon := strings.Join(h.monitor(t, ""), "\n")
	for _, want := range []string{`"RESET"`, `"CLIENT" "SETNAME" "app1"`, `"PING" "tlsproxy-fence-`} {
		if !strings.Contains(mon, want) {
			t.Errorf("MONITOR shows no %s from the proxy:\n%s", want, mon)
		}
	}
	log := h.slowlog(t, "")
	// (Redis 7.0 logs the commands EXEC ran, not EXEC itself.)
	set, reset, get := slices.Index(log, "SET k v"), slices.Index(log, "RESET"), slices.Index(log, "GET k")
	if set < 0 || reset < set || get < reset {
		t.Errorf("slowlog through the proxy (oldest first) has no RESET between the transaction and GET k: %q", log)
	}
	if now := failCmdCalls(t, h.c, "reset"); now <= resets {
		t.Errorf("cmdstat_reset calls went from %d to %d, want an increase", resets, now)
	}
}
