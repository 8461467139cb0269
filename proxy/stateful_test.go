package proxy

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/tidwall/redcon"
	"github.com/tlsproxy/tlsproxy/internal/testredis"
	"github.com/tlsproxy/tlsproxy/proxy/config"
)

// cmd encodes one command as RESP.
func cmd(args ...string) string {
	b := redcon.AppendArray(nil, len(args))
	for _, a := range args {
		b = redcon.AppendBulkString(b, a)
	}
	return string(b)
}

func TestTransactionOrderAcrossPaths(t *testing.T) {
	e := startPlain(t, nil)
	c := e.rawConn(t)
	// One pipeline that moves from the shared path to a pinned connection
	// and back: every command must run in the order sent.
	roundTrip(t, c,
		cmd("SET", "a", "1")+cmd("MULTI")+cmd("INCR", "a")+cmd("INCR", "a")+cmd("EXEC")+cmd("GET", "a"),
		"+OK\r\n+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n:2\r\n:3\r\n$1\r\n3\r\n")
	roundTrip(t, c, cmd("MULTI")+cmd("SET", "a", "x")+cmd("DISCARD")+cmd("GET", "a"),
		"+OK\r\n+QUEUED\r\n+OK\r\n$1\r\n3\r\n")
	roundTrip(t, c, cmd("EXEC"), "-ERR EXEC without MULTI\r\n")

	// The same through go-redis's transaction pipeline, both protocols.
	ctx := context.Background()
	for _, proto := range []int{2, 3} {
		rc := e.client(t, proto)
		cmds, err := rc.TxPipelined(ctx, func(p redis.Pipeliner) error {
			p.Set(ctx, "tx", "1", 0)
			p.Incr(ctx, "tx")
			return nil
		})
		if err != nil || cmds[1].(*redis.IntCmd).Val() != 2 {
			t.Fatalf("RESP%d TxPipelined: %v %v", proto, cmds, err)
		}
	}
}

func TestWatchAbortsOnConcurrentChange(t *testing.T) {
	e := startPlain(t, nil)
	ctx := context.Background()
	a, b := e.client(t, 2), e.client(t, 3)
	a.Set(ctx, "w", "0", 0)
	err := a.Watch(ctx, func(tx *redis.Tx) error {
		if _, err := tx.Get(ctx, "w").Result(); err != nil {
			return err
		}
		// Another client changes the watched key before EXEC.
		if err := b.Set(ctx, "w", "other", 0).Err(); err != nil {
			return err
		}
		_, err := tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
			p.Set(ctx, "w", "mine", 0)
			return nil
		})
		return err
	}, "w")
	if !errors.Is(err, redis.TxFailedErr) {
		t.Fatalf("EXEC after a concurrent change: err = %v, want TxFailedErr", err)
	}
	if v := b.Get(ctx, "w").Val(); v != "other" {
		t.Fatalf("w = %q, want the other client's write", v)
	}
	// Without interference the same transaction commits.
	err = a.Watch(ctx, func(tx *redis.Tx) error {
		_, err := tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
			p.Set(ctx, "w", "mine", 0)
			return nil
		})
		return err
	}, "w")
	if err != nil || b.Get(ctx, "w").Val() != "mine" {
		t.Fatalf("uncontended WATCH/EXEC: %v", err)
	}
}

func TestPubSub(t *testing.T) {
	e := startPlain(t, nil)
	ctx := context.Background()
	for _, proto := range []int{2, 3} {
		sub := e.client(t, proto)
		ps := sub.Subscribe(ctx, "news")
		ps.PSubscribe(ctx, "ev.*")
		ps.SSubscribe(ctx, "shard")
		if _, err := ps.Receive(ctx); err != nil { // subscribe confirmation
			t.Fatal(err)
		}
		pub := e.client(t, proto)
		waitFor(t, "subscriptions", func() bool {
			n, _ := pub.PubSubNumSub(ctx, "news").Result()
			return n["news"] == 1
		})
		pub.Publish(ctx, "news", "hello")
		pub.Publish(ctx, "ev.x", "pattern")
		pub.SPublish(ctx, "shard", "sharded")
		got := map[string]string{}
		for len(got) < 3 {
			msg, err := ps.ReceiveTimeout(ctx, 5*time.Second)
			if err != nil {
				t.Fatalf("RESP%d receive: %v (got %v)", proto, err, got)
			}
			if m, ok := msg.(*redis.Message); ok {
				got[m.Channel] = m.Payload
			}
		}
		if got["news"] != "hello" || got["ev.x"] != "pattern" || got["shard"] != "sharded" {
			t.Fatalf("RESP%d messages: %v", proto, got)
		}
		if err := ps.Ping(ctx); err != nil {
			t.Fatalf("PING while subscribed: %v", err)
		}
		ps.Close()
		n, _ := pub.PubSubNumSub(ctx, "news").Result()
		waitFor(t, "unsubscribe on close", func() bool {
			n, _ = pub.PubSubNumSub(ctx, "news").Result()
			return n["news"] == 0
		})
	}

	// Byte-level: PING and UNSUBSCRIBE while subscribed, in RESP2.
	c := e.rawConn(t)
	roundTrip(t, c, cmd("SUBSCRIBE", "a"), "*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n")
	roundTrip(t, c, cmd("PING"), "*2\r\n$4\r\npong\r\n$0\r\n\r\n")
	roundTrip(t, c, cmd("UNSUBSCRIBE"), "*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:0\r\n")
	roundTrip(t, c, cmd("PING"), "+PONG\r\n")
}

func TestMonitor(t *testing.T) {
	e := startPlain(t, nil)
	m := e.rawConn(t)
	roundTrip(t, m, cmd("MONITOR"), "+OK\r\n")
	other := e.client(t, 2)
	if err := other.Set(context.Background(), "watched-key", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	readUntil(t, m, `"watched-key"`)
}

// readUntil reads from c until the text appears.
func readUntil(t testing.TB, c net.Conn, text string) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	defer c.SetReadDeadline(time.Time{})
	var got []byte
	buf := make([]byte, 4096)
	for !strings.Contains(string(got), text) {
		n, err := c.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			t.Fatalf("read: %v; got %q, waiting for %q", err, got, text)
		}
	}
	return string(got)
}

func TestBlockingCommands(t *testing.T) {
	e := startPlain(t, nil)
	ctx := context.Background()
	blocked := e.rawConn(t)
	if _, err := blocked.Write([]byte(cmd("BLPOP", "jobs", "0"))); err != nil {
		t.Fatal(err)
	}
	// While one client waits, others are served (they must not queue
	// behind the BLPOP on a shared connection).
	other := e.client(t, 2)
	for i := 0; i < 100; i++ {
		if err := other.Incr(ctx, "n").Err(); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(200 * time.Millisecond) // BLPOP 0 waits as long as it takes
	if err := other.RPush(ctx, "jobs", "job1").Err(); err != nil {
		t.Fatal(err)
	}
	expectBytes(t, blocked, "*2\r\n$4\r\njobs\r\n$4\r\njob1\r\n")
	// The session goes back to shared connections afterwards.
	roundTrip(t, blocked, cmd("GET", "n"), "$3\r\n100\r\n")

	// A client that goes away while blocked must not swallow an element.
	gone := e.rawConn(t)
	gone.Write([]byte(cmd("BRPOP", "queue", "0")))
	waitFor(t, "blocked client", func() bool {
		info := e.direct(t).Info(ctx, "clients").Val()
		return strings.Contains(info, "blocked_clients:1")
	})
	gone.Close()
	waitFor(t, "unblocked", func() bool {
		info := e.direct(t).Info(ctx, "clients").Val()
		return strings.Contains(info, "blocked_clients:0")
	})
	other.RPush(ctx, "queue", "precious")
	if n := other.LLen(ctx, "queue").Val(); n != 1 {
		t.Fatalf("LLEN queue = %d after the blocked client left, want 1", n)
	}

	// XREAD BLOCK is blocking too.
	x := e.rawConn(t)
	x.Write([]byte(cmd("XREAD", "BLOCK", "0", "STREAMS", "s", "$")))
	time.Sleep(100 * time.Millisecond)
	if err := other.Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	other.XAdd(ctx, &redis.XAddArgs{Stream: "s", ID: "1-1", Values: []string{"f", "v"}})
	expectBytes(t, x, "*1\r\n*2\r\n$1\r\ns\r\n*1\r\n*2\r\n$3\r\n1-1\r\n*2\r\n$1\r\nf\r\n$1\r\nv\r\n")
}

func TestSelectIsolation(t *testing.T) {
	e := startPlain(t, nil)
	a, b := e.rawConn(t), e.rawConn(t)
	roundTrip(t, a, cmd("SELECT", "1")+cmd("SET", "k", "in-db1"), "+OK\r\n+OK\r\n")
	roundTrip(t, b, cmd("GET", "k"), "$-1\r\n")
	roundTrip(t, b, cmd("SET", "k", "in-db0"), "+OK\r\n")
	roundTrip(t, a, cmd("GET", "k"), "$6\r\nin-db1\r\n")
	roundTrip(t, b, cmd("SELECT", "0")+cmd("GET", "k"), "+OK\r\n$6\r\nin-db0\r\n")
	roundTrip(t, b, cmd("SELECT", "99"), "-ERR DB index is out of range\r\n")
}

func TestAuthFromClient(t *testing.T) {
	rs := testredis.Start(t, testredis.Options{Password: "proxy-pass"})
	e := startProxy(t, newPKI(t), "redis://:proxy-pass@"+rs.Addr, nil)
	e.redis = rs
	ctx := context.Background()
	admin := redis.NewClient(&redis.Options{Addr: rs.Addr, Password: "proxy-pass"})
	defer admin.Close()
	if err := admin.Do(ctx, "ACL", "SETUSER", "alice", "on", ">alice-pass", "~*", "+@all").Err(); err != nil {
		t.Fatal(err)
	}
	a := e.rawConn(t)
	roundTrip(t, a, cmd("AUTH", "alice", "wrong"), "-WRONGPASS invalid username-password pair or user is disabled.\r\n")
	roundTrip(t, a, cmd("AUTH", "alice", "alice-pass")+cmd("ACL", "WHOAMI"), "+OK\r\n$5\r\nalice\r\n")
	b := e.rawConn(t)
	roundTrip(t, b, cmd("ACL", "WHOAMI"), "$7\r\ndefault\r\n")
	if strings.Contains(e.logs.String(), "alice-pass") || strings.Contains(e.logs.String(), "proxy-pass") {
		t.Fatal("a password appears in the log")
	}
}

func TestHello3AndTracking(t *testing.T) {
	e := startPlain(t, nil)
	c := e.rawConn(t)
	c.Write([]byte(cmd("HELLO", "3")))
	readUntil(t, c, "proto\r\n:3\r\n")
	roundTrip(t, c, cmd("HSET", "h", "f", "v")+cmd("HGETALL", "h"), ":1\r\n%1\r\n$1\r\nf\r\n$1\r\nv\r\n")
	roundTrip(t, c, cmd("CLIENT", "TRACKING", "ON")+cmd("GET", "tracked"), "+OK\r\n_\r\n")
	other := e.client(t, 2)
	other.Set(context.Background(), "tracked", "changed", 0)
	expectBytes(t, c, ">2\r\n$10\r\ninvalidate\r\n*1\r\n$7\r\ntracked\r\n")
	// Back to RESP2 on another connection: the map is an array again.
	d := e.rawConn(t)
	roundTrip(t, d, cmd("HGETALL", "h"), "*2\r\n$1\r\nf\r\n$1\r\nv\r\n")
}

func TestClientReply(t *testing.T) {
	e := startPlain(t, nil)
	c := e.rawConn(t)
	roundTrip(t, c, cmd("CLIENT", "REPLY", "OFF")+cmd("SET", "a", "1")+cmd("CLIENT", "REPLY", "ON"), "+OK\r\n")
	roundTrip(t, c, cmd("CLIENT", "REPLY", "SKIP")+cmd("SET", "b", "2")+cmd("MGET", "a", "b"),
		"*2\r\n$1\r\n1\r\n$1\r\n2\r\n")
}

func TestQuitAndReset(t *testing.T) {
	e := startPlain(t, nil)
	c := e.rawConn(t)
	roundTrip(t, c, cmd("SET", "q", "1")+cmd("QUIT"), "+OK\r\n+OK\r\n")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatalf("connection still open after QUIT (read %d bytes)", n)
	}

	r := e.rawConn(t)
	roundTrip(t, r, cmd("SELECT", "2")+cmd("SET", "k", "db2")+cmd("CLIENT", "SETNAME", "named"),
		"+OK\r\n+OK\r\n+OK\r\n")
	roundTrip(t, r, cmd("RESET")+cmd("GET", "k")+cmd("CLIENT", "GETNAME"), "+RESET\r\n$-1\r\n$-1\r\n")
	roundTrip(t, r, cmd("SUBSCRIBE", "c"), "*3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n")
	roundTrip(t, r, cmd("RESET")+cmd("PING"), "+RESET\r\n+PONG\r\n")
	roundTrip(t, r, cmd("HELLO", "3")+cmd("RESET")+cmd("HSET", "h", "f", "v")+cmd("HGETALL", "h"),
		"") // HELLO's reply is long; read it below
	out := readUntil(t, r, "*2\r\n$1\r\nf\r\n$1\r\nv\r\n")
	if !strings.Contains(out, "+RESET\r\n:1\r\n*2\r\n") {
		t.Fatalf("RESET did not return the session to RESP2: %q", out)
	}
}

// TestStateIsolation interleaves clients that each leave state on their
// connection and checks none of it reaches another client, including a
// client that later gets the same pooled upstream connection.
func TestStateIsolation(t *testing.T) {
	rs := testredis.Start(t, testredis.Options{})
	e := startProxy(t, newPKI(t), "redis://"+rs.Addr, nil)
	e.redis = rs
	ctx := context.Background()
	e.direct(t).Do(ctx, "ACL", "SETUSER", "bob", "on", ">bob-pass", "~*", "+@all")

	a := e.rawConn(t)
	roundTrip(t, a, cmd("SELECT", "3")+cmd("CLIENT", "SETNAME", "alpha")+cmd("AUTH", "bob", "bob-pass")+
		cmd("MULTI")+cmd("SET", "iso", "a"),
		"+OK\r\n+OK\r\n+OK\r\n+OK\r\n+QUEUED\r\n")
	w := e.rawConn(t)
	roundTrip(t, w, cmd("WATCH", "iso")+cmd("SUBSCRIBE", "private"), "+OK\r\n*3\r\n$9\r\nsubscribe\r\n$7\r\nprivate\r\n:1\r\n")

	b := e.rawConn(t)
	roundTrip(t, b, cmd("GET", "iso")+cmd("CLIENT", "GETNAME")+cmd("ACL", "WHOAMI")+cmd("HSET", "h", "f", "v")+cmd("HGETALL", "h"),
		"$-1\r\n$-1\r\n$7\r\ndefault\r\n:1\r\n*2\r\n$1\r\nf\r\n$1\r\nv\r\n")
	e.client(t, 2).Publish(ctx, "other", "not for w")
	roundTrip(t, a, cmd("EXEC"), "*1\r\n+OK\r\n")

	// The state leaves with its client: reconnecting clients that pin get
	// clean connections (the pool RESETs them).
	a.Close()
	w.Close()
	for i := 0; i < 4; i++ {
		c := e.rawConn(t)
		roundTrip(t, c, cmd("MULTI")+cmd("CLIENT", "GETNAME")+cmd("ACL", "WHOAMI")+cmd("GET", "iso")+cmd("EXEC"),
			"+OK\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n*3\r\n$-1\r\n$7\r\ndefault\r\n$-1\r\n")
		c.Close()
	}
	db3 := redis.NewClient(&redis.Options{Addr: rs.Addr, DB: 3})
	defer db3.Close()
	if v := db3.Get(ctx, "iso").Val(); v != "a" {
		t.Fatalf("iso in db 3 = %q, want the transaction's write", v)
	}
}

// TestPinnedLimit fills upstream.pool.max_pinned: a client whose MULTI
// finds no dedicated connection gets an error for every command up to its
// EXEC, so nothing meant for its transaction runs outside it.
func TestPinnedLimit(t *testing.T) {
	e := startPlain(t, func(c *config.Config) {
		c.Upstream.Pool.MaxPinned = 1
		c.Upstream.DialTimeout = 300 * time.Millisecond
	})
	a, b := e.rawConn(t), e.rawConn(t)
	roundTrip(t, a, cmd("MULTI"), "+OK\r\n")
	const full = "-ERR upstream unavailable: all dedicated connections (upstream.pool.max_pinned) are in use\r\n"
	const inTx = "-" + errNoDedicated + "\r\n"
	roundTrip(t, b, cmd("MULTI")+cmd("SET", "x", "1")+cmd("EXEC"), full+inTx+inTx)
	roundTrip(t, b, cmd("GET", "x"), "$-1\r\n") // stateless commands still work
	roundTrip(t, a, cmd("SET", "y", "1")+cmd("EXEC"), "+QUEUED\r\n*1\r\n+OK\r\n")
	roundTrip(t, a, cmd("GET", "y"), "$1\r\n1\r\n") // unpins a
	roundTrip(t, b, cmd("MULTI")+cmd("SET", "x", "1")+cmd("EXEC"), "+OK\r\n+QUEUED\r\n*1\r\n+OK\r\n")
	if !contains(e.logs.String(), "no dedicated upstream connection for the session") {
		t.Fatal("no log line for the refused pin")
	}
}
