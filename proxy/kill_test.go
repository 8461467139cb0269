package proxy

import (
	"context"
	"strings"
	"testing"
	"time"
)

// CLIENT KILL and CLIENT UNBLOCK through the proxy: a client names another
// client of the proxy (by the id and address the proxy gave it, or by its
// dedicated connection's id and address in Redis's CLIENT LIST); shared
// connections are never touched (TestClientKillSparesShared).

// killID asks p for its CLIENT ID.
func killID(t *testing.T, p *safetyPeer) string {
	t.Helper()
	p.send(t, cmd("CLIENT", "ID"))
	return strings.TrimSuffix(strings.TrimPrefix(p.frames(t, 1, safetyReplyWait)[0], ":"), "\r\n")
}

// blockedConn waits until Redis shows one connection blocked in cmd and
// returns its CLIENT LIST line.
func blockedConn(t *testing.T, e *proxyEnv, cmd string) string {
	t.Helper()
	var line string
	waitFor(t, cmd+" to block in Redis", func() bool {
		for _, l := range strings.Split(e.direct(t).ClientList(context.Background()).Val(), "\n") {
			if strings.Contains(l, " cmd="+cmd+" ") && strings.Contains(l, " flags=b ") {
				line = l
				return true
			}
		}
		return false
	})
	return line
}

// TestClientKillDedicated: a client kills other clients of the proxy by
// each name it may know them by. A killed client is closed, its dedicated
// connection is gone from Redis when the killer gets its reply (a blocked
// command is not left behind), and clients writing and reading their own
// values meanwhile see nothing but their own replies.
func TestClientKillDedicated(t *testing.T) {
	e := startPlain(t, nil)
	ctx := context.Background()
	direct := e.direct(t)
	killer := safetyProxy(t, e)

	busy := safetyPeers(t, e, 6, 2)
	busyErr := make(chan error, 1)
	go func() { busyErr <- safetyOwnValues(busy, "kill", 300) }()

	// By the Redis id of its dedicated connection, while BLPOP blocks.
	blocked := safetyProxy(t, e)
	blocked.send(t, cmd("BLPOP", "kill:q", "0"))
	dedID := safetyInfoField(blockedConn(t, e, "blpop"), "id")
	killer.send(t, cmd("CLIENT", "KILL", "ID", dedID))
	if got := killer.frames(t, 1, safetyReplyWait)[0]; got != ":1\r\n" {
		t.Fatalf("CLIENT KILL ID %s (a blocked client's connection): %q, want :1", dedID, got)
	}
	if line := clientListLine(t, direct, dedID); line != "" {
		t.Fatalf("the killed connection is still in Redis: %s", line)
	}
	blocked.expectClosed(t)
	if n := rejInfoInt(t, direct, "clients", "blocked_clients"); n != 0 {
		t.Fatalf("blocked_clients = %d after the kill", n)
	}
	if err := direct.LPush(ctx, "kill:q", "kept").Err(); err != nil {
		t.Fatal(err)
	}
	if v := direct.LRange(ctx, "kill:q", 0, -1).Val(); len(v) != 1 || v[0] != "kept" {
		t.Fatalf("kill:q = %q: the killed BLPOP consumed a value", v)
	}

	// By session id, with a TYPE that matches it (a subscriber is pubsub)
	// and one that does not.
	sub := safetyProxy(t, e)
	subID := killID(t, sub)
	sub.send(t, cmd("SUBSCRIBE", "kill:ch"))
	sub.frames(t, 1, safetyReplyWait)
	for _, tc := range []struct{ typ, want string }{{"normal", ":0\r\n"}, {"master", ":0\r\n"}, {"PubSub", ":1\r\n"}} {
		killer.send(t, cmd("CLIENT", "KILL", "ID", subID, "TYPE", tc.typ))
		if got := killer.frames(t, 1, safetyReplyWait)[0]; got != tc.want {
			t.Fatalf("CLIENT KILL ID <subscriber> TYPE %s: %q, want %q", tc.typ, got, tc.want)
		}
	}
	sub.expectClosed(t)

	// By the address CLIENT INFO shows (the client's, as the proxy sees it),
	// in the old form, for a client on shared connections only; USER and
	// MAXAGE are checked against it.
	plain := safetyProxy(t, e)
	plain.send(t, cmd("CLIENT", "INFO"))
	addr := safetyInfoField(plain.frames(t, 1, safetyReplyWait)[0], "addr")
	if addr != plain.c.LocalAddr().String() {
		t.Fatalf("CLIENT INFO addr=%s, want the client's own address %s", addr, plain.c.LocalAddr())
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"ADDR", addr, "USER", "default", "MAXAGE", "0"}, "-ERR syntax error\r\n"}, // Redis 7.0 has no MAXAGE
		{[]string{"ADDR", addr, "USER", "nobody"}, "-ERR No such user 'nobody'\r\n"},
		{[]string{"ADDR", addr, "LADDR", "127.0.0.1:1"}, ":0\r\n"},
		{[]string{addr}, "+OK\r\n"},
	} {
		killer.send(t, cmd(append([]string{"CLIENT", "KILL"}, tc.args...)...))
		if got := killer.frames(t, 1, safetyReplyWait)[0]; got != tc.want {
			t.Fatalf("CLIENT KILL %q: %q, want %q", tc.args, got, tc.want)
		}
	}
	plain.expectClosed(t)
	killer.send(t, cmd("CLIENT", "KILL", addr))
	if got := killer.frames(t, 1, safetyReplyWait)[0]; got != "-ERR No such client\r\n" {
		t.Fatalf("CLIENT KILL of a client already gone: %q", got)
	}

	if err := <-busyErr; err != nil {
		t.Fatal(err)
	}
	if !contains(e.logs.String(), "client killed by CLIENT KILL") {
		t.Fatal("no log line for the killed clients")
	}
}

// TestClientKillSelf: with SKIPME no (or the old form) a client kills
// itself: it gets the reply, then its connection closes, and a dedicated
// connection it held is gone from Redis; by default it skips itself.
func TestClientKillSelf(t *testing.T) {
	e := startPlain(t, nil)
	direct := e.direct(t)

	c := safetyProxy(t, e)
	id := killID(t, c)
	c.send(t, cmd("CLIENT", "KILL", "ID", id))
	if got := c.frames(t, 1, safetyReplyWait)[0]; got != ":0\r\n" {
		t.Fatalf("CLIENT KILL ID <own id> (SKIPME yes by default): %q, want :0", got)
	}
	c.send(t, cmd("WATCH", "self")+cmd("CLIENT", "INFO"))
	info := c.frames(t, 2, safetyReplyWait)[1]
	dedID := safetyInfoField(info, "id") // a dedicated connection's line, as it is
	if clientListLine(t, direct, dedID) == "" {
		t.Fatalf("no dedicated connection id=%s in Redis (CLIENT INFO %q)", dedID, info)
	}
	c.send(t, cmd("SET", "self", "1")+cmd("CLIENT", "KILL", "ID", id, "SKIPME", "no")+cmd("GET", "self"))
	if got := c.frames(t, 2, safetyReplyWait); got[0] != "+OK\r\n" || got[1] != ":1\r\n" {
		t.Fatalf("SET, CLIENT KILL <self> SKIPME no: %q, want +OK, :1", got)
	}
	c.expectClosed(t) // the GET after it never runs
	if line := clientListLine(t, direct, dedID); line != "" {
		t.Fatalf("the client's dedicated connection is still in Redis: %s", line)
	}

	old := safetyProxy(t, e)
	old.send(t, cmd("CLIENT", "KILL", old.c.LocalAddr().String()))
	if got := old.frames(t, 1, safetyReplyWait)[0]; got != "+OK\r\n" {
		t.Fatalf("CLIENT KILL <own address>: %q, want +OK", got)
	}
	old.expectClosed(t)
}

// TestClientKillErrorsLikeRedis: malformed forms get, byte for byte, what
// Redis answers (the filters name no client, so nothing is killed either
// way).
func TestClientKillErrorsLikeRedis(t *testing.T) {
	e := startPlain(t, nil)
	reqs := []string{
		cmd("CLIENT", "KILL"),
		cmd("CLIENT", "KILL", "000.123.321.567:0000"),
		cmd("CLIENT", "KILL", "ID"),
		cmd("CLIENT", "KILL", "ID", "abc"),
		cmd("CLIENT", "KILL", "ID", "0"),
		cmd("CLIENT", "KILL", "ID", "-5"),
		cmd("CLIENT", "KILL", "ID", "99999", "TYPE"),
		cmd("CLIENT", "KILL", "TYPE", "foo", "ID", "99999"),
		cmd("CLIENT", "KILL", "SKIPME", "maybe", "ID", "99999"),
		cmd("CLIENT", "KILL", "FOO", "bar"),
		cmd("CLIENT", "KILL", "ID", "99999", "USER", "nobody"),
		cmd("CLIENT", "KILL", "ID", "99999", "MAXAGE", "5"),
		cmd("CLIENT", "KILL", "ADDR", "10.0.0.1:5", "SKIPME", "no"),
		cmd("CLIENT", "UNBLOCK"),
		cmd("CLIENT", "UNBLOCK", "abc"),
		cmd("CLIENT", "UNBLOCK", "99999", "maybe"),
		cmd("CLIENT", "UNBLOCK", "abc", "error"),
		cmd("CLIENT", "UNBLOCK", "1", "2", "3"),
		cmd("CLIENT", "UNBLOCK", "99999", "TIMEOUT"),
	}
	d, p := safetyConverse(t, e, len(reqs), reqs...)
	for i := range reqs {
		safetySame(t, strings.Join(strings.Fields(strings.ReplaceAll(reqs[i], "\r\n", " ")), " "), d[i:i+1], p[i:i+1])
	}
}

// TestClientUnblock: CLIENT UNBLOCK by session id or dedicated-connection
// id reaches the blocked client exactly as directly, in both modes; a client
// that is not blocked (or holds no dedicated connection) is not unblocked.
func TestClientUnblock(t *testing.T) {
	e := startPlain(t, nil)
	for _, mode := range []string{"TIMEOUT", "ERROR"} {
		// Directly.
		dv, dk := safetyDirect(t, e), safetyDirect(t, e)
		dID := killID(t, dv)
		dv.send(t, cmd("BLPOP", "unblock:q", "0"))
		blockedConn(t, e, "blpop")
		dk.send(t, cmd("CLIENT", "UNBLOCK", dID, mode))
		want := append(dk.frames(t, 1, safetyReplyWait), dv.frames(t, 1, safetyReplyWait)...)

		// Through the proxy, by session id.
		pv, pk := safetyProxy(t, e), safetyProxy(t, e)
		pID := killID(t, pv)
		pk.send(t, cmd("CLIENT", "UNBLOCK", pID, mode))
		if got := pk.frames(t, 1, safetyReplyWait)[0]; got != ":0\r\n" {
			t.Fatalf("CLIENT UNBLOCK of an idle client: %q, want :0", got)
		}
		pv.send(t, cmd("BLPOP", "unblock:q", "0"))
		blockedConn(t, e, "blpop")
		pk.send(t, cmd("CLIENT", "UNBLOCK", pID, mode))
		got := append(pk.frames(t, 1, safetyReplyWait), pv.frames(t, 1, safetyReplyWait)...)
		safetySame(t, "CLIENT UNBLOCK "+mode+", then the blocked client's reply", want, got)
		roundTrip(t, pv.c, cmd("PING"), "+PONG\r\n") // the unblocked client goes on
	}
	// By the dedicated connection's Redis id.
	pv, pk := safetyProxy(t, e), safetyProxy(t, e)
	pv.send(t, cmd("BLPOP", "unblock:q", "0"))
	dedID := safetyInfoField(blockedConn(t, e, "blpop"), "id")
	pk.send(t, cmd("CLIENT", "UNBLOCK", dedID))
	if got := pk.frames(t, 1, 2*time.Second)[0]; got != ":1\r\n" {
		t.Fatalf("CLIENT UNBLOCK <dedicated id>: %q", got)
	}
	if got := pv.frames(t, 1, safetyReplyWait)[0]; got != "*-1\r\n" {
		t.Fatalf("the unblocked BLPOP: %q, want a timeout", got)
	}
}

// TestClientKilledInRedis: an operator who kills a dedicated connection in
// Redis directly (redis-cli on the Redis host) closes its client as Redis
// would: the client's state went with the connection.
func TestClientKilledInRedis(t *testing.T) {
	e := startPlain(t, nil)
	c := safetyProxy(t, e)
	c.send(t, cmd("BLPOP", "killed:q", "0"))
	dedID := safetyInfoField(blockedConn(t, e, "blpop"), "id")
	if n, err := e.direct(t).Do(context.Background(), "CLIENT", "KILL", "ID", dedID).Int(); err != nil || n != 1 {
		t.Fatalf("CLIENT KILL ID %s directly: %d, %v", dedID, n, err)
	}
	c.expectClosed(t)
}

// TestKillFilterMatches checks the filters Redis 7.0 cannot exercise here
// (MAXAGE is Redis 7.4's) and the names a session answers to.
func TestKillFilterMatches(t *testing.T) {
	s := &session{clientID: sessionIDBase + 7, addr: "127.0.0.1:5000", laddr: "127.0.0.1:6380", started: time.Now().Add(-90 * time.Second)}
	u := "app"
	s.user.Store(&u)
	for _, tc := range []struct {
		args string
		want bool
	}{
		{"ID 281474976710663", true},
		{"ID 281474976710664", false},
		{"ADDR 127.0.0.1:5000 MAXAGE 60", true},
		{"ADDR 127.0.0.1:5000 MAXAGE 120", false},
		{"ADDR 127.0.0.1:5000 LADDR 127.0.0.1:6380 USER app TYPE normal", true},
		{"ADDR 127.0.0.1:5000 LADDR 127.0.0.1:6379", false},
		{"ADDR 127.0.0.1:5000 USER default", false},
		{"ADDR 127.0.0.1:5000 TYPE slave", false},
		{"ID 281474976710663 ADDR 127.0.0.1:5001", false},
	} {
		args := [][]byte{[]byte("CLIENT"), []byte("KILL")}
		for _, a := range strings.Fields(tc.args) {
			args = append(args, []byte(a))
		}
		f := parseKillFilter(args)
		if got := s.matches(&f); got != tc.want {
			t.Errorf("CLIENT KILL %s matches %v, want %v", tc.args, got, tc.want)
		}
	}
	s.kind.Store(uint32(typeReplica))
	f := parseKillFilter([][]byte{[]byte("CLIENT"), []byte("KILL"), []byte("ID"), []byte("281474976710663"), []byte("TYPE"), []byte("SLAVE")})
	if !s.matches(&f) {
		t.Error("a replication stream is not TYPE slave")
	}
}
