package upstream

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tlsproxy/tlsproxy/internal/testredis"
)

// fenceToken is the sessions' fence token in these tests.
const fenceToken = "fence-7d1c"

// sink is a dedicated session's client: it collects what the connection
// writes to it.
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

// take returns what the client got since the last take.
func (s *sink) take() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := string(s.b)
	s.b = s.b[:0]
	return r
}

// peek returns what the client got since the last take, and leaves it.
func (s *sink) peek() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return string(s.b)
}

// noFailure fails the test if the connection reported a failure.
func (s *sink) noFailure(t *testing.T) {
	t.Helper()
	select {
	case err := <-s.fails:
		t.Errorf("onFail(%v)", err)
	default:
	}
}

func (s *sink) dedicate(t *testing.T, p *Pool, proto, db int) *Dedicated {
	t.Helper()
	if s.fails == nil {
		s.fails = make(chan error, 4)
	}
	d, err := p.Dedicate(context.Background(), proto, db, fenceToken, s.toClient, s.onFail)
	if err != nil {
		t.Fatalf("Dedicate: %v", err)
	}
	return d
}

// settle writes what was sent on d, waits until every reply owed has been
// written to the client, and returns what the client got since the last take.
func (s *sink) settle(t *testing.T, d *Dedicated) string {
	t.Helper()
	d.Sync()
	if err := d.Flush(); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	waitIdle(t, d)
	return s.take()
}

// waitIdle waits, as a session does, until d has written every reply owed.
func waitIdle(t *testing.T, d *Dedicated) {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for !d.Idle() {
		select {
		case <-d.Quiet():
		case <-d.Exited():
			if !d.Idle() {
				t.Fatal("the reader stopped with replies owed")
			}
		case <-timeout:
			t.Fatal("replies still owed after 5s")
		}
	}
}

// step is a command sent on a dedicated connection.
type step struct {
	args []string
	e    Effect
	arg  int
}

func send(d *Dedicated, steps ...step) {
	for _, s := range steps {
		d.Send(cmd(s.args...), s.e, s.arg)
	}
}

// replies checks that out holds one frame per prefix in want, each starting
// with it.
func replies(t *testing.T, what, out string, want ...string) {
	t.Helper()
	fs, err := frames([]byte(out))
	ok := err == nil && len(fs) == len(want)
	for i := 0; ok && i < len(want); i++ {
		ok = strings.HasPrefix(fs[i], want[i])
	}
	if !ok {
		t.Errorf("%s: the client got %q (%v), want frames starting %q", what, fs, err, want)
	}
}

// TestDedicatedState: the state is what Redis's replies say, and agrees with
// what Redis reports of the connection.
func TestDedicatedState(t *testing.T) {
	s := testredis.Start(t, testredis.Options{NoTCP: true})
	c := ctl(t, s)
	const (
		arityDiscard = "-ERR wrong number of arguments for 'discard' command"
		execAbort    = "-EXECABORT Transaction discarded because of previous errors."
	)
	for _, tc := range []struct {
		name    string
		proto   int
		steps   []step
		replies []string
		want    State
		redis   map[string]string // CLIENT LIST fields
	}{
		{"multi", 2, []step{{[]string{"MULTI"}, EffectMulti, 0}},
			[]string{"+OK"}, State{Proto: 2, Multi: true}, map[string]string{"multi": "0"}},
		{"multi refused", 2, []step{{[]string{"MULTI"}, EffectMulti, 0}, {[]string{"MULTI"}, EffectMulti, 0}},
			[]string{"+OK", "-ERR MULTI calls can not be nested"}, State{Proto: 2, Multi: true}, map[string]string{"multi": "0"}},
		{"discard with an arity error", 2, []step{{[]string{"MULTI"}, EffectMulti, 0}, {[]string{"DISCARD", "x"}, EffectDiscard, 0}},
			[]string{"+OK", arityDiscard}, State{Proto: 2, Multi: true}, map[string]string{"multi": "0"}},
		{"discard", 2, []step{{[]string{"MULTI"}, EffectMulti, 0}, {[]string{"DISCARD"}, EffectDiscard, 0}},
			[]string{"+OK", "+OK"}, State{Proto: 2}, map[string]string{"multi": "-1"}},
		{"exec without multi keeps watching", 2, []step{{[]string{"WATCH", "k"}, EffectWatch, 0}, {[]string{"EXEC"}, EffectExec, 0}},
			[]string{"+OK", "-ERR EXEC without MULTI"}, State{Proto: 2, Watching: true}, nil},
		{"unwatch", 2, []step{{[]string{"WATCH", "k"}, EffectWatch, 0}, {[]string{"UNWATCH"}, EffectUnwatch, 0}},
			[]string{"+OK", "+OK"}, State{Proto: 2}, nil},
		{"exec", 2, []step{{[]string{"WATCH", "k"}, EffectWatch, 0}, {[]string{"MULTI"}, EffectMulti, 0},
			{[]string{"PING"}, EffectNone, 0}, {[]string{"EXEC"}, EffectExec, 0}},
			[]string{"+OK", "+OK", "+QUEUED", "*1\r\n+PONG"}, State{Proto: 2}, map[string]string{"multi": "-1"}},
		{"select queued in multi", 2, []step{{[]string{"MULTI"}, EffectMulti, 0}, {[]string{"SELECT", "2"}, EffectSelect, 2},
			{[]string{"EXEC"}, EffectExec, 0}},
			[]string{"+OK", "+QUEUED", "*1\r\n+OK"}, State{Proto: 2, Sticky: true}, map[string]string{"db": "2", "multi": "-1"}},
		{"select", 2, []step{{[]string{"SELECT", "3"}, EffectSelect, 3}},
			[]string{"+OK"}, State{Proto: 2, DB: 3}, map[string]string{"db": "3"}},
		{"select refused", 2, []step{{[]string{"SELECT", "99"}, EffectSelect, 99}},
			[]string{"-ERR DB index is out of range"}, State{Proto: 2}, map[string]string{"db": "0"}},
		{"hello 3", 2, []step{{[]string{"HELLO", "3"}, EffectHello, 3}},
			[]string{"%7\r\n"}, State{Proto: 3}, map[string]string{"resp": "3"}},
		{"hello 2", 3, []step{{[]string{"HELLO", "2"}, EffectHello, 2}},
			[]string{"*14\r\n"}, State{Proto: 2}, map[string]string{"resp": "2"}},
		{"hello without a version", 3, []step{{[]string{"HELLO"}, EffectHello, 0}},
			[]string{"%7\r\n"}, State{Proto: 3}, map[string]string{"resp": "3"}},
		{"exec after a queuing error", 2, []step{{[]string{"WATCH", "k"}, EffectWatch, 0}, {[]string{"MULTI"}, EffectMulti, 0},
			{[]string{"SET", "k"}, EffectNone, 0}, {[]string{"EXEC"}, EffectExec, 0}},
			[]string{"+OK", "+OK", "-ERR wrong number of arguments for 'set' command", execAbort},
			State{Proto: 2}, map[string]string{"multi": "-1"}},
		{"setname", 2, []step{{[]string{"CLIENT", "SETNAME", "x"}, EffectSetName, 0}},
			[]string{"+OK"}, State{Proto: 2, Named: true}, map[string]string{"name": "x"}},
		{"sticky", 2, []step{{[]string{"CLIENT", "NO-EVICT", "on"}, EffectSticky, 0}},
			[]string{"+OK"}, State{Proto: 2, Sticky: true}, map[string]string{"flags": "e"}},
		{"subscribe", 2, []step{{[]string{"SUBSCRIBE", "ch"}, EffectUncounted, 0}},
			[]string{"*3\r\n$9\r\nsubscribe"}, State{Proto: 2, Uncounted: true}, map[string]string{"sub": "1"}},
		{"reset", 3, []step{{[]string{"SELECT", "4"}, EffectSelect, 4}, {[]string{"CLIENT", "SETNAME", "x"}, EffectSetName, 0},
			{[]string{"MULTI"}, EffectMulti, 0}, {[]string{"RESET"}, EffectReset, 0}},
			[]string{"+OK", "+OK", "+OK", "+RESET"}, State{Proto: 2, NeedsSetUp: true},
			map[string]string{"db": "0", "name": "", "multi": "-1", "resp": "2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, _ := newPool(t, opts(s), Limits{MaxShared: 1, MaxPinned: 1})
			sk := &sink{}
			d := sk.dedicate(t, p, tc.proto, 0)
			defer d.Release()
			send(d, tc.steps...)
			replies(t, "replies", sk.settle(t, d), tc.replies...)
			if got := d.State(); got != tc.want {
				t.Errorf("State %+v, want %+v", got, tc.want)
			}
			info := clientInfo(t, c, d.ID())
			for k, want := range tc.redis {
				if got := field(info, k); got != want && (k != "flags" || !strings.Contains(got, want)) {
					t.Errorf("Redis says %s=%s, want %s (%q)", k, got, want, info)
				}
			}
			sk.noFailure(t)
		})
	}
}

// TestDedicatedRelease: a Clean connection goes back to the pool as it is, a
// Dirty one after RESET and the set-up, anything else is closed.
func TestDedicatedRelease(t *testing.T) {
	s := testredis.Start(t, testredis.Options{Password: "secret", NoTCP: true})
	c := ctl(t, s)
	const (
		asIs = iota
		reset
		closed
	)
	for _, tc := range []struct {
		name      string
		proto     int
		steps     []step
		then      int
		nextProto int // the protocol the connection is pooled for
	}{
		{"clean", 2, []step{{[]string{"PING"}, EffectNone, 0}}, asIs, 2},
		{"clean/resp3", 3, []step{{[]string{"PING"}, EffectNone, 0}}, asIs, 3},
		{"clean in another database", 2, []step{{[]string{"SELECT", "5"}, EffectSelect, 5}}, asIs, 2},
		{"clean after hello 3", 2, []step{{[]string{"HELLO", "3"}, EffectHello, 3}}, asIs, 3},
		{"watching", 2, []step{{[]string{"WATCH", "k"}, EffectWatch, 0}}, reset, 2},
		{"multi", 3, []step{{[]string{"MULTI"}, EffectMulti, 0}, {[]string{"SET", "k", "x"}, EffectNone, 0}}, reset, 3},
		{"named", 2, []step{{[]string{"CLIENT", "SETNAME", "x"}, EffectSetName, 0}}, reset, 2},
		{"named in another database", 3, []step{{[]string{"SELECT", "5"}, EffectSelect, 5},
			{[]string{"CLIENT", "SETNAME", "x"}, EffectSetName, 0}}, reset, 3},
		// RESET logged the connection out: the set-up runs again.
		{"after reset", 3, []step{{[]string{"RESET"}, EffectReset, 0}}, reset, 2},
		{"sticky", 2, []step{{[]string{"CLIENT", "NO-EVICT", "on"}, EffectSticky, 0}}, closed, 2},
		{"sticky inside multi", 2, []step{{[]string{"MULTI"}, EffectMulti, 0}, {[]string{"SELECT", "2"}, EffectSelect, 2},
			{[]string{"EXEC"}, EffectExec, 0}}, closed, 2},
		{"uncounted", 2, []step{{[]string{"SUBSCRIBE", "ch"}, EffectUncounted, 0},
			{[]string{"UNSUBSCRIBE"}, EffectNone, 0}}, closed, 2},
		{"uncounted/resp3", 3, []step{{[]string{"CLIENT", "REPLY", "SKIP"}, EffectUncounted, 0},
			{[]string{"PING"}, EffectNone, 0}}, closed, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const db = 3
			p, _ := newPool(t, opts(s), Limits{MaxShared: 1, MaxIdle: 1, MaxPinned: 1})
			sk := &sink{}
			d := sk.dedicate(t, p, tc.proto, db)
			id := d.ID()
			send(d, tc.steps...)
			sk.settle(t, d)
			resets := calls(t, c, "reset")
			d.Release()
			sk.noFailure(t)
			if tc.then == closed {
				if n := idleCount(p, 2) + idleCount(p, 3); n != 0 {
					t.Errorf("%d idle connections, want the connection closed", n)
				}
				waitFor(t, 3*time.Second, "connection gone from CLIENT LIST", func() bool {
					return field(clientInfo(t, c, id), "id") == "<missing>"
				})
				return
			}
			if n := idleCount(p, tc.nextProto); n != 1 {
				t.Fatalf("%d idle RESP%d connections, want 1", n, tc.nextProto)
			}
			wantResets := resets
			if tc.then == reset {
				wantResets++
			}
			if n := calls(t, c, "reset"); n != wantResets {
				t.Errorf("%d RESET calls after Release, want %d", n, wantResets)
			}
			// Another session gets the same connection, holding nothing of
			// the first one's.
			connDo(t, c, "SELECT", strconv.Itoa(db))
			connDo(t, c, "SET", "k", "changed") // breaks any WATCH left over
			connDo(t, c, "SELECT", "0")
			d = sk.dedicate(t, p, tc.nextProto, db)
			defer d.Release()
			if d.ID() != id {
				t.Fatalf("Dedicate got connection %d, want the released %d", d.ID(), id)
			}
			if got, want := d.State(), (State{Proto: tc.nextProto, DB: db}); got != want {
				t.Errorf("State %+v, want %+v", got, want)
			}
			info := clientInfo(t, c, id)
			for k, want := range map[string]string{"db": strconv.Itoa(db), "resp": strconv.Itoa(tc.nextProto),
				"name": "", "user": "default", "multi": "-1", "sub": "0"} {
				if got := field(info, k); got != want {
					t.Errorf("CLIENT LIST after Release: %s=%s, want %s (%q)", k, got, want, info)
				}
			}
			send(d, step{[]string{"MULTI"}, EffectMulti, 0}, step{[]string{"GET", "k"}, EffectNone, 0},
				step{[]string{"EXEC"}, EffectExec, 0})
			replies(t, "MULTI GET EXEC after Release", sk.settle(t, d), "+OK", "+QUEUED", "*1\r\n$7\r\nchanged")
		})
	}
}

// TestDedicatedReleaseOwed: a connection released with a reply owed is
// closed, so Redis unblocks the blocked command and consumes nothing for a
// client that is gone.
func TestDedicatedReleaseOwed(t *testing.T) {
	for _, proto := range []int{2, 3} {
		t.Run(fmt.Sprintf("resp%d", proto), func(t *testing.T) {
			s, p, _ := setup(t, Limits{MaxShared: 1, MaxIdle: 1, MaxPinned: 1})
			c := ctl(t, s)
			sk := &sink{}
			d := sk.dedicate(t, p, proto, 0)
			id := d.ID()
			d.Send(cmd("BLPOP", "q", "0"), EffectNone, 0)
			if err := d.Flush(); err != nil {
				t.Fatal(err)
			}
			blocked := func() int { return infoInt(t, c, "clients", "blocked_clients") }
			waitFor(t, 3*time.Second, "blocked BLPOP", func() bool { return blocked() == 1 })
			d.Release()
			if n := idleCount(p, proto); n != 0 {
				t.Errorf("%d idle connections after Release with a reply owed, want 0", n)
			}
			waitFor(t, 3*time.Second, "no blocked client", func() bool { return blocked() == 0 })
			if r := connDo(t, c, "LPUSH", "q", "x"); r != ":1\r\n" {
				t.Errorf("LPUSH: %q", r)
			}
			if r := connDo(t, c, "LLEN", "q"); r != ":1\r\n" {
				t.Errorf("LLEN after LPUSH: %q: the released BLPOP consumed the element", r)
			}
			if info := clientInfo(t, c, id); field(info, "id") != "<missing>" {
				t.Errorf("released connection still open: %q", info)
			}
			if got := sk.take(); got != "" {
				t.Errorf("the client got %q", got)
			}
			sk.noFailure(t)
		})
	}
}

// TestDedicatedCountsReplies: replies are counted by frame: a push frame
// (here a tracking invalidation) reaches the client where it arrived and is
// never taken for a reply.
func TestDedicatedCountsReplies(t *testing.T) {
	s, p, _ := setup(t, Limits{MaxShared: 1, MaxIdle: 1, MaxPinned: 1})
	c := ctl(t, s)
	sk := &sink{}
	d := sk.dedicate(t, p, 3, 0)
	defer d.Release()
	send(d, step{[]string{"CLIENT", "TRACKING", "ON"}, EffectSticky, 0}, step{[]string{"GET", "k"}, EffectNone, 0})
	replies(t, "TRACKING ON, GET", sk.settle(t, d), "+OK\r\n", "_\r\n")

	const push = ">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n"
	d.Send(cmd("BLPOP", "q", "0"), EffectNone, 0)
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 3*time.Second, "blocked BLPOP", func() bool { return infoInt(t, c, "clients", "blocked_clients") == 1 })
	connDo(t, c, "SET", "k", "v")
	waitFor(t, 3*time.Second, "invalidation", func() bool { return sk.peek() == push })
	if d.Idle() {
		t.Fatal("Idle with the BLPOP unanswered: the push was counted as its reply")
	}
	connDo(t, c, "LPUSH", "q", "x")
	waitIdle(t, d)
	if got, want := sk.take(), push+"*2\r\n$1\r\nq\r\n$1\r\nx\r\n"; got != want {
		t.Errorf("the client got %q, want %q", got, want)
	}

	// The connection's own SET invalidates the key it read: the push lands
	// among the replies, in Redis's order, and only the replies are counted.
	send(d, step{[]string{"GET", "k"}, EffectNone, 0}, step{[]string{"SET", "k", "v2"}, EffectNone, 0},
		step{[]string{"GET", "k"}, EffectNone, 0})
	fs, err := frames([]byte(sk.settle(t, d)))
	var rs []string
	pushes := 0
	for _, f := range fs {
		if f == push {
			pushes++
		} else {
			rs = append(rs, f)
		}
	}
	if err != nil || pushes != 1 || strings.Join(rs, "") != "$1\r\nv\r\n+OK\r\n$2\r\nv2\r\n" {
		t.Errorf("GET SET GET: the client got %q (%v), want the three replies and one invalidation", fs, err)
	}
	d.Send(cmd("PING"), EffectNone, 0)
	if r := sk.settle(t, d); r != "+PONG\r\n" {
		t.Errorf("PING: %q", r)
	}
	sk.noFailure(t)
}

// TestDedicatedReply: a reply the proxy makes reaches the client after every
// reply owed before it.
func TestDedicatedReply(t *testing.T) {
	_, p, _ := setup(t, Limits{MaxShared: 1, MaxIdle: 1, MaxPinned: 1})
	sk := &sink{}
	d := sk.dedicate(t, p, 2, 0)
	defer d.Release()
	if err := d.Reply([]byte("-ERR first\r\n"), true); err != nil || sk.take() != "-ERR first\r\n" {
		t.Errorf("Reply inside MULTI with nothing owed: %v; not written at once", err)
	}
	if err := d.Reply([]byte("-ERR second\r\n"), false); err != nil {
		t.Fatal(err)
	}
	if got := sk.settle(t, d); got != "-ERR second\r\n" {
		t.Errorf("Reply with nothing owed: the client got %q (the fence PING's reply must not show)", got)
	}
	d.Send(cmd("BLPOP", "q", "1"), EffectNone, 0)
	if err := d.Reply([]byte("-ERR x\r\n"), false); err != nil {
		t.Fatal(err)
	}
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	if got := sk.peek(); got != "" {
		t.Errorf("before BLPOP timed out the client got %q", got)
	}
	waitIdle(t, d)
	if got, want := sk.take(), "*-1\r\n-ERR x\r\n"; got != want {
		t.Errorf("the client got %q, want %q", got, want)
	}
	sk.noFailure(t)
}

// TestDedicatedReplyUncounted: once replies cannot be counted, a fence PING
// marks the place of a reply the proxy makes; the fence's own reply never
// reaches the client.
func TestDedicatedReplyUncounted(t *testing.T) {
	s, p, _ := setup(t, Limits{MaxShared: 1, MaxIdle: 1, MaxPinned: 1})
	c := ctl(t, s)
	sk := &sink{}
	d := sk.dedicate(t, p, 2, 0)
	defer d.Release()
	const confirm = "*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n"
	d.Send(cmd("SUBSCRIBE", "ch"), EffectUncounted, 0)
	if err := d.Reply([]byte("-ERR x\r\n"), false); err != nil {
		t.Fatal(err)
	}
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, d)
	if got, want := sk.take(), confirm+"-ERR x\r\n"; got != want {
		t.Errorf("the client got %q, want %q", got, want)
	}
	// Already uncounted: the same again, around a message from elsewhere.
	if r := connDo(t, c, "PUBLISH", "ch", "hello"); r != ":1\r\n" {
		t.Fatalf("PUBLISH: %q", r)
	}
	const msg = "*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n"
	waitFor(t, 3*time.Second, "message", func() bool { return sk.peek() == msg })
	d.Send(cmd("PING", "p"), EffectNone, 0)
	if err := d.Reply([]byte("-ERR y\r\n"), false); err != nil {
		t.Fatal(err)
	}
	if got, want := sk.settle(t, d), msg+"*2\r\n$4\r\npong\r\n$1\r\np\r\n-ERR y\r\n"; got != want {
		t.Errorf("the client got %q, want %q", got, want)
	}
	if st := d.State(); !st.Uncounted {
		t.Errorf("State %+v, want Uncounted", st)
	}
	sk.noFailure(t)
}

// TestDedicatedAbortExec: a DISCARD sent in place of an EXEC answers the
// client as Redis answers EXEC after a queuing error.
func TestDedicatedAbortExec(t *testing.T) {
	s := testredis.Start(t, testredis.Options{NoTCP: true})
	c := ctl(t, s)
	const execAbort = "-EXECABORT Transaction discarded because of previous errors.\r\n"
	for _, tc := range []struct {
		name  string
		steps []step
		want  string
	}{
		{"multi", []step{{[]string{"MULTI"}, EffectMulti, 0}, {[]string{"SET", "k", "v"}, EffectNone, 0}},
			"+OK\r\n+QUEUED\r\n" + execAbort},
		{"watch", []step{{[]string{"WATCH", "k"}, EffectWatch, 0}, {[]string{"MULTI"}, EffectMulti, 0},
			{[]string{"SET", "k", "v"}, EffectNone, 0}},
			"+OK\r\n+OK\r\n+QUEUED\r\n" + execAbort},
		{"without multi", nil, "-ERR EXEC without MULTI\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, _ := newPool(t, opts(s), Limits{MaxShared: 1, MaxIdle: 1, MaxPinned: 1})
			sk := &sink{}
			d := sk.dedicate(t, p, 2, 0)
			defer d.Release()
			send(d, tc.steps...)
			d.Send(cmd("DISCARD"), EffectAbortExec, 0)
			if got := sk.settle(t, d); got != tc.want {
				t.Errorf("the client got %q, want %q", got, tc.want)
			}
			if r := connDo(t, c, "EXISTS", "k"); r != ":0\r\n" {
				t.Errorf("EXISTS k: %q: the transaction ran", r)
			}
			if st := d.State(); st != (State{Proto: 2}) {
				t.Errorf("State %+v, want clean", st)
			}
			sk.noFailure(t)
		})
	}
}

// TestDedicatedQuit: Redis answers QUIT and closes; the session learns it
// through onFail(nil), and the connection is not reused.
func TestDedicatedQuit(t *testing.T) {
	s, p, _ := setup(t, Limits{MaxShared: 1, MaxIdle: 1, MaxPinned: 1})
	c := ctl(t, s)
	sk := &sink{}
	d := sk.dedicate(t, p, 2, 0)
	id := d.ID()
	d.Send(cmd("PING"), EffectNone, 0)
	d.Quit(cmd("QUIT"))
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-sk.fails:
		if err != nil {
			t.Errorf("onFail(%v), want nil", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("onFail not called within 3s of QUIT")
	}
	<-d.Exited()
	if got := sk.take(); got != "+PONG\r\n+OK\r\n" {
		t.Errorf("the client got %q, want PONG and OK", got)
	}
	d.Release()
	if n := idleCount(p, 2); n != 0 {
		t.Errorf("%d idle connections after QUIT", n)
	}
	if info := clientInfo(t, c, id); field(info, "id") != "<missing>" {
		t.Errorf("connection still open after QUIT: %q", info)
	}
}

// TestDedicatedNoticesRedisGone: a dedicated connection owing nothing still
// notices at once when Redis goes away.
func TestDedicatedNoticesRedisGone(t *testing.T) {
	s, p, _ := setup(t, Limits{MaxShared: 1, MaxIdle: 1, MaxPinned: 1})
	sk := &sink{}
	d := sk.dedicate(t, p, 2, 0)
	d.Send(cmd("PING"), EffectNone, 0)
	if r := sk.settle(t, d); r != "+PONG\r\n" {
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
	if d.Release(); idleCount(p, 2) != 0 {
		t.Error("failed connection pooled")
	}
}

// TestDedicatedIdleAfterForwarding: Idle promises that every owed reply has
// been written to the client, so what the session writes next comes after
// it, even when the client is slow to take it.
func TestDedicatedIdleAfterForwarding(t *testing.T) {
	_, p, _ := setup(t, Limits{MaxShared: 1, MaxIdle: 1, MaxPinned: 1})
	sk := &sink{delay: 300 * time.Millisecond}
	d := sk.dedicate(t, p, 2, 0)
	defer d.Release()
	d.Send(cmd("PING"), EffectNone, 0)
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	<-d.Quiet()
	if !d.Idle() {
		t.Error("Quiet signalled with a reply owed")
	}
	if got := sk.take(); got != "+PONG\r\n" {
		t.Errorf("once Quiet, the client has %q, want +PONG: the reply was counted before it was written", got)
	}
}

// TestDedicatedSendHidden: the reply to a command of the proxy's own is not
// forwarded, and still counts and changes the state.
func TestDedicatedSendHidden(t *testing.T) {
	_, p, _ := setup(t, Limits{MaxShared: 1, MaxIdle: 1, MaxPinned: 1})
	sk := &sink{}
	d := sk.dedicate(t, p, 2, 0)
	defer d.Release()
	d.SendHidden(cmd("CLIENT", "SETNAME", "sess"), EffectSetName)
	d.SendHidden(cmd("NO-SUCH-COMMAND"), EffectNone) // an error, hidden too
	d.Send(cmd("CLIENT", "GETNAME"), EffectNone, 0)
	if got := sk.settle(t, d); got != "$4\r\nsess\r\n" {
		t.Errorf("the client got %q, want only GETNAME's reply", got)
	}
	if st := d.State(); st != (State{Proto: 2, Named: true}) {
		t.Errorf("State %+v, want Named", st)
	}
	sk.noFailure(t)
}

// TestDedicatedReplyOff: with CLIENT REPLY OFF, Redis answers nothing, not
// even the fence PING that marks a reply the proxy makes. The proxy's reply
// must not wait for it forever, nor land after replies to later commands:
// Redis would have sent no reply at that point.
func TestDedicatedReplyOff(t *testing.T) {
	_, p, _ := setup(t, Limits{MaxShared: 1, MaxIdle: 1, MaxPinned: 1})
	sk := &sink{}
	d := sk.dedicate(t, p, 2, 0)
	defer d.Release()
	d.Send(cmd("CLIENT", "REPLY", "OFF"), EffectReplyOff, 0)
	if err := d.Reply([]byte("-ERR refused\r\n"), false); err != nil {
		t.Fatal(err)
	}
	d.Send(cmd("CLIENT", "REPLY", "ON"), EffectReplyOn, 0)
	d.Send(cmd("PING"), EffectNone, 0)
	if got, want := sk.settle(t, d), "+OK\r\n+PONG\r\n"; got != want {
		t.Errorf("the client got %q, want %q", got, want)
	}
}
