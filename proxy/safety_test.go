package proxy

// Regression tests for the defects of the outside review (issue 6). Each
// test sends what the review sent and asserts what Redis itself does (the
// same bytes sent to it directly) or what DESIGN.md's safety invariants
// promise. Helpers are in safety_helpers_test.go.

import (
	"context"
	"crypto/tls"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/tlsproxy/tlsproxy/internal/testredis"
	"github.com/tlsproxy/tlsproxy/proxy/config"
)

// TestSafetyHugeLengths (defect 1): lengths near 2^63 are Redis's protocol
// errors for that client only; they neither crash the proxy (an overflowing
// i+size+2 indexed out of range) nor spin it (a loop counting to 2^63).
func TestSafetyHugeLengths(t *testing.T) {
	t.Parallel()
	rs := testredis.Start(t, testredis.Options{})
	for _, tc := range []struct{ name, req, want string }{
		{"bulk", "*1\r\n$9223372036854775807\r\n", "-ERR Protocol error: invalid bulk length\r\n"},
		{"multibulk", "*9223372036854775807\r\n", "-ERR Protocol error: invalid multibulk length\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// What Redis answers, directly.
			direct := safetyDial(t, rs.Addr)
			direct.send(t, tc.req)
			if got := direct.frames(t, 1, safetyReplyWait); got[0] != tc.want {
				t.Fatalf("Redis answers %q, the test expects %q", got, tc.want)
			}
			direct.expectClosed(t)

			child := safetyChildProxy(t)
			bad := safetyTLS(t, child.addr, child.tls)
			bad.send(t, tc.req)
			got, err := bad.tryFrames(1, safetyReplyWait)
			if err != nil {
				child.alive(t, strconv.Quote(tc.req))
			}
			if err != nil || got[0] != tc.want {
				t.Fatalf("got %q (%v), want %q then close", got, err, tc.want)
			}
			bad.expectClosed(t)
			// Another client is served: the proxy neither died nor spends
			// itself on the bad one.
			good := safetyTLS(t, child.addr, child.tls)
			good.send(t, cmd("PING"))
			if got, err := good.tryFrames(1, safetyReplyWait); err != nil || got[0] != "+PONG\r\n" {
				child.alive(t, strconv.Quote(tc.req))
				t.Fatalf("another client's PING: %q, %v", got, err)
			}
		})
	}
}

// TestSafetyTrackingRedirectToShared (defect 2): a RESP3 client asks for
// invalidation messages to be sent to the connection id its HELLO reported.
// That id must not be a shared connection (or the REDIRECT must be
// refused): BCAST invalidations on a shared connection would be taken for
// other clients' replies.
func TestSafetyTrackingRedirectToShared(t *testing.T) {
	t.Parallel()
	e := startPlain(t, func(c *config.Config) { c.Upstream.Pool.MaxSize = 1 })
	a := safetyProxy(t, e)
	id := safetyHelloID(t, safetyHello3(t, a))
	a.send(t, cmd("CLIENT", "TRACKING", "on", "REDIRECT", id, "BCAST"))
	tracking := a.frames(t, 1, safetyReplyWait)[0]
	t.Logf("CLIENT TRACKING on REDIRECT %s BCAST: %q", id, tracking)

	// Every SET below broadcasts an invalidation to the redirect target.
	victims := safetyPeers(t, e, 4, 3)
	if err := safetyOwnValues(victims, "redirect", 100); err != nil {
		t.Fatalf("a client got a reply that is not its own: %v", err)
	}
	// Whether or not a victim happened to have a command in flight when an
	// invalidation arrived, a shared redirect target dies of it, and Redis
	// then flags the tracking client R (its redirect target is gone).
	for _, l := range strings.Split(e.direct(t).ClientList(context.Background()).Val(), "\n") {
		if strings.Contains(safetyInfoField(l, "flags"), "R") {
			t.Fatalf("the connection CLIENT TRACKING redirects to has gone (it was a shared connection, dropped when the invalidations arrived): %s", l)
		}
	}
}

// TestSafetyDebugPushOnShared (defect 2): DEBUG PROTOCOL push makes Redis
// send a push frame before the reply; sent on a shared connection it must
// not shift other clients' replies, and its sender gets what Redis sends.
func TestSafetyDebugPushOnShared(t *testing.T) {
	t.Parallel()
	e := safetyStart(t, []string{"--enable-debug-command", "yes"}, func(c *config.Config) { c.Upstream.Pool.MaxSize = 1 })
	const debugPush = "*3\r\n$5\r\nDEBUG\r\n$8\r\nPROTOCOL\r\n$4\r\npush\r\n"
	pusher := safetyPeers(t, e, 1, 3)[0]
	readers := safetyPeers(t, e, 8, 3)
	done := make(chan error, 1)
	go func() {
		for range 100 {
			if _, err := pusher.c.Write([]byte(debugPush)); err != nil {
				done <- err
				return
			}
			if _, err := pusher.tryFrames(2, safetyReplyWait); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	if err := safetyOwnValues(readers, "debugpush", 200); err != nil {
		t.Fatalf("a client got a reply that is not its own: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("the DEBUG PROTOCOL push client: %v", err)
	}

	// The sender gets the push and the reply, as from Redis directly.
	d, p := safetyDirect(t, e), safetyProxy(t, e)
	safetyHello3(t, d)
	safetyHello3(t, p)
	d.send(t, debugPush)
	p.send(t, debugPush)
	safetySame(t, "DEBUG PROTOCOL push", d.frames(t, 2, safetyReplyWait), p.frames(t, 2, safetyReplyWait))
}

// TestSafetyTrackingPushThenBlockingAndMulti (defect 2): on a dedicated
// RESP3 connection with tracking on, an invalidation push is forwarded as a
// push, and the replies to a BLPOP that times out and a transaction after
// it come exactly as Redis sends them, whether the push arrives before the
// BLPOP is sent or while it blocks.
func TestSafetyTrackingPushThenBlockingAndMulti(t *testing.T) {
	t.Parallel()
	for _, during := range []bool{false, true} {
		name := "push before BLPOP"
		if during {
			name = "push during BLPOP"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			e := startPlain(t, nil)
			ctx := context.Background()
			writer := e.direct(t)
			if err := writer.Set(ctx, "tpm:k", "old", 0).Err(); err != nil {
				t.Fatal(err)
			}
			d, p := safetyDirect(t, e), safetyProxy(t, e)
			peers := []*safetyPeer{d, p}
			for _, c := range peers {
				safetyHello3(t, c)
				c.send(t, cmd("CLIENT", "TRACKING", "on")+cmd("GET", "tpm:k"))
			}
			safetySame(t, "CLIENT TRACKING on, GET", d.frames(t, 2, safetyReplyWait), p.frames(t, 2, safetyReplyWait))
			invalidate := func() {
				if err := writer.Set(ctx, "tpm:k", "new", 0).Err(); err != nil {
					t.Fatal(err)
				}
			}
			if !during {
				invalidate() // queued for both before the next commands are sent
			}
			req := cmd("BLPOP", "tpm:empty", "1") + cmd("MULTI") + cmd("SET", "tpm:k2", "v") + cmd("EXEC")
			for _, c := range peers {
				c.send(t, req)
			}
			if during {
				waitFor(t, "both BLPOPs to block", func() bool { return rejInfoInt(t, writer, "clients", "blocked_clients") == 2 })
				invalidate()
			}
			// push, BLPOP's nil after a second, +OK, +QUEUED, EXEC's array.
			want := d.frames(t, 5, safetyReplyWait)
			if !strings.HasPrefix(want[0], ">2\r\n$10\r\ninvalidate\r\n") {
				t.Fatalf("direct: first frame %q, want the invalidation push", want[0])
			}
			safetySame(t, "push, BLPOP timeout, MULTI/SET/EXEC", want, p.frames(t, 5, safetyReplyWait))
		})
	}
}

// TestSafetyScriptDebugYes (defect 3): SCRIPT DEBUG YES is connection
// state (the next EVAL on that connection starts a forked debugging session,
// and Redis then closes the connection in the parent). It must not land on
// a shared connection, where another client's EVAL would trigger it.
func TestSafetyScriptDebugYes(t *testing.T) {
	t.Parallel()
	e := startPlain(t, func(c *config.Config) { c.Upstream.Pool.MaxSize = 1 })
	direct, proxied := safetyConverse(t, e, 1, cmd("SCRIPT", "DEBUG", "YES"))
	safetySame(t, "SCRIPT DEBUG YES", direct, proxied)

	other := safetyProxy(t, e)
	other.send(t, cmd("EVAL", "return redis.call('set', KEYS[1], ARGV[1])", "1", "sdy:eval", "plain"))
	if got := other.frames(t, 1, safetyReplyWait); got[0] != "+OK\r\n" {
		t.Fatalf("another client's EVAL: %q, want +OK (no debugging session)", got)
	}
	if err := safetyOwnValues(safetyPeers(t, e, 4, 2), "sdy", 50); err != nil {
		t.Fatalf("after SCRIPT DEBUG YES from one client: %v", err)
	}
}

// TestSafetyScriptDebugSync (defect 3): SCRIPT DEBUG SYNC, then EVAL,
// from one client must not freeze the others.
//
// That leaves the proxy one choice: refuse SCRIPT DEBUG SYNC. In synchronous
// mode the debugging session runs in Redis's main thread and reads debugger
// commands from the client's socket with a blocking read (Redis 7,
// src/eval.c: ldbStartSession calls connBlock, ldbRepl loops on connRead),
// and the SCRIPT DEBUG documentation says "The alternative synchronous
// debug mode blocks the server while the debugging session is active".
// Forwarded, even on a dedicated connection, the client's next EVAL stops
// Redis for every client of the proxy until the debugger ends, and the
// shared connections hit upstream.read_timeout and disconnect their
// clients. The forked mode (YES) blocks nothing and stays available.
func TestSafetyScriptDebugSync(t *testing.T) {
	t.Parallel()
	e := startPlain(t, func(c *config.Config) { c.Upstream.Pool.MaxSize = 1 })
	others := safetyPeers(t, e, 4, 2)
	a := safetyProxy(t, e)
	a.send(t, cmd("SCRIPT", "DEBUG", "SYNC"))
	reply := a.frames(t, 1, safetyReplyWait)[0]
	a.send(t, cmd("EVAL", "return 1", "0"))
	if err := safetyOwnValues(others, "sds", 20); err != nil {
		t.Fatalf("after SCRIPT DEBUG SYNC (answered %q) and EVAL from one client, another client: %v", reply, err)
	}
	if !strings.HasPrefix(reply, "-ERR") {
		t.Fatalf("SCRIPT DEBUG SYNC: %q, want an -ERR refusal", reply)
	}
	// Refused, it changed nothing: the EVAL ran as a plain script.
	if got, err := a.tryFrames(1, safetyReplyWait); err != nil || got[0] != ":1\r\n" {
		t.Fatalf("EVAL after a refused SCRIPT DEBUG SYNC: %q, %v; want :1", got, err)
	}
}

// TestSafetyWatchSurvivesFailedEnd (defect 4): DISCARD or EXEC without
// MULTI is an error that leaves WATCH in place (Redis answers "-ERR ...
// without MULTI" and keeps watching). The proxy must not take the error for
// the end of the WATCH and hand the still-watching connection to another
// client, whose transaction would then fail over a key it never watched.
func TestSafetyWatchSurvivesFailedEnd(t *testing.T) {
	t.Parallel()
	for _, end := range []string{"DISCARD", "EXEC"} {
		for _, then := range []string{"disconnect", "plain commands"} {
			t.Run(end+" then "+then, func(t *testing.T) {
				t.Parallel()
				e := startPlain(t, func(c *config.Config) {
					// One idle connection: a released connection is the
					// next one leased. With "disconnect" at most one is
					// leased, so the later client gets exactly that one.
					c.Upstream.Pool.MinIdle, c.Upstream.Pool.MaxIdle = 0, 1
					c.Upstream.Pool.MaxPinned = 2
					if then == "disconnect" {
						c.Upstream.Pool.MaxPinned = 1
					}
				})
				ctx := context.Background()
				d, p := safetyDirect(t, e), safetyProxy(t, e)
				req := cmd("WATCH", "wfe:watched") + cmd(end) + cmd("GET", "wfe:plain")
				for _, c := range []*safetyPeer{d, p} {
					c.send(t, req)
				}
				safetySame(t, "WATCH, "+end+" without MULTI, GET", d.frames(t, 3, safetyReplyWait), p.frames(t, 3, safetyReplyWait))
				if then == "disconnect" {
					d.c.Close()
					p.c.Close()
				}
				if err := e.direct(t).Set(ctx, "wfe:watched", "changed", 0).Err(); err != nil {
					t.Fatal(err)
				}

				later := safetyProxy(t, e)
				later.send(t, cmd("WATCH", "wfe:mine")+cmd("MULTI")+cmd("SET", "wfe:mine", "v")+cmd("EXEC"))
				got := later.frames(t, 4, safetyReplyWait)
				if want := []string{"+OK\r\n", "+OK\r\n", "+QUEUED\r\n", "*1\r\n+OK\r\n"}; strings.Join(got, "") != strings.Join(want, "") {
					t.Fatalf("a later client's WATCH/MULTI/EXEC on an untouched key: %q, want %q", got, want)
				}
				if then == "plain commands" {
					// The first client still watches: its transaction fails
					// exactly as it does directly.
					req := cmd("MULTI") + cmd("SET", "wfe:watched", "mine") + cmd("EXEC")
					d.send(t, req)
					p.send(t, req)
					safetySame(t, "MULTI/SET/EXEC after the watched key changed", d.frames(t, 3, safetyReplyWait), p.frames(t, 3, safetyReplyWait))
				}
			})
		}
	}
}

// TestSafetyMultiSurvivesDiscardArityError (defect 4): DISCARD with an
// argument is an arity error, and Redis stays in MULTI (the next command is
// QUEUED). A connection left in MULTI must never answer another client.
func TestSafetyMultiSurvivesDiscardArityError(t *testing.T) {
	t.Parallel()
	e := startPlain(t, func(c *config.Config) {
		c.Upstream.Pool.MinIdle, c.Upstream.Pool.MaxIdle, c.Upstream.Pool.MaxPinned = 0, 1, 1
	})
	d, p := safetyDirect(t, e), safetyProxy(t, e)
	for _, c := range []*safetyPeer{d, p} {
		c.send(t, cmd("MULTI")+cmd("DISCARD", "x")+cmd("PING"))
	}
	direct := d.frames(t, 3, safetyReplyWait)
	if direct[2] != "+QUEUED\r\n" {
		t.Fatalf("direct: %q, want PING queued", direct)
	}
	safetySame(t, "MULTI, DISCARD x, PING", direct, p.frames(t, 3, safetyReplyWait))
	// The client leaves in the middle of its transaction.
	p.c.Close()
	for i := range 5 {
		c := safetyProxy(t, e)
		c.send(t, cmd("CLIENT", "SETNAME", "after"+strconv.Itoa(i))+cmd("PING")+cmd("GET", "mda:none"))
		got := c.frames(t, 3, safetyReplyWait)
		if want := "+OK\r\n+PONG\r\n$-1\r\n"; strings.Join(got, "") != want {
			t.Fatalf("client %d after the MULTI client: %q, want %q", i, got, want)
		}
		c.c.Close()
	}
}

// TestSafetyBlockedClientLeaves (defect 5): a client blocked in BLPOP that
// sends another command and leaves must not keep its BLPOP waiting in Redis
// (it would take the next job and drop it) nor keep its dedicated
// connection.
func TestSafetyBlockedClientLeaves(t *testing.T) {
	t.Parallel()
	const maxPinned = 4
	e := startPlain(t, func(c *config.Config) {
		c.Upstream.Pool.MaxPinned = maxPinned
		c.Upstream.DialTimeout = time.Second
	})
	ctx := context.Background()
	direct := e.direct(t)
	blocked := func() int64 { return rejInfoInt(t, direct, "clients", "blocked_clients") }

	c := safetyProxy(t, e)
	c.send(t, cmd("BLPOP", "bcl:q", "0"))
	waitFor(t, "the BLPOP to block in Redis", func() bool { return blocked() == 1 })
	c.send(t, cmd("GET", "bcl:x"))
	c.c.Close()
	waitFor(t, "Redis to drop the departed client's BLPOP", func() bool { return blocked() == 0 })
	if err := direct.LPush(ctx, "bcl:q", "job").Err(); err != nil {
		t.Fatal(err)
	}
	if n := direct.LLen(ctx, "bcl:q").Val(); n != 1 {
		t.Fatalf("LLEN after LPUSH = %d, want 1: the job went to a client that left", n)
	}

	for range maxPinned + 10 {
		c := safetyProxy(t, e)
		c.send(t, cmd("BLPOP", "bcl:empty", "0"))
		c.send(t, cmd("GET", "bcl:x"))
		c.c.Close()
	}
	waitFor(t, "every departed client's BLPOP to end", func() bool { return blocked() == 0 })
	fresh := safetyProxy(t, e)
	fresh.send(t, cmd("MULTI")+cmd("SET", "bcl:k", "v")+cmd("EXEC")+cmd("BLPOP", "bcl:empty", "1"))
	if got := strings.Join(fresh.frames(t, 4, safetyReplyWait), ""); got != "+OK\r\n+QUEUED\r\n*1\r\n+OK\r\n*-1\r\n" {
		t.Fatalf("a new client after %d departed blocked clients: %q", maxPinned+10, got)
	}
}

// TestSafetyXreadgroupGroupNamedStreams (defect 6): XREADGROUP's BLOCK
// option comes after GROUP <group> <consumer>, and a group may be called
// "streams"; the command still blocks and must not stall a shared
// connection.
func TestSafetyXreadgroupGroupNamedStreams(t *testing.T) {
	t.Parallel()
	e := startPlain(t, func(c *config.Config) {
		c.Upstream.ReadTimeout = 2 * time.Second
		c.Upstream.Pool.MaxSize = 1
	})
	ctx := context.Background()
	direct := e.direct(t)
	if err := direct.Do(ctx, "XGROUP", "CREATE", "xgs:s", "streams", "$", "MKSTREAM").Err(); err != nil {
		t.Fatal(err)
	}
	reader := safetyProxy(t, e)
	reader.send(t, cmd("XREADGROUP", "GROUP", "streams", "c1", "BLOCK", "0", "STREAMS", "xgs:s", ">"))
	waitFor(t, "XREADGROUP to block", func() bool { return rejInfoInt(t, direct, "clients", "blocked_clients") == 1 })

	other := safetyProxy(t, e)
	for i := range 100 {
		other.send(t, cmd("GET", "xgs:none"))
		if got, err := other.tryFrames(1, safetyReplyWait); err != nil || got[0] != "$-1\r\n" {
			t.Fatalf("GET %d while XREADGROUP blocks: %q, %v", i, got, err)
		}
	}
	if err := direct.XAdd(ctx, &redis.XAddArgs{Stream: "xgs:s", ID: "1-1", Values: []string{"f", "v"}}).Err(); err != nil {
		t.Fatal(err)
	}
	want := "*1\r\n*2\r\n$5\r\nxgs:s\r\n*1\r\n*2\r\n$3\r\n1-1\r\n*2\r\n$1\r\nf\r\n$1\r\nv\r\n"
	if got, err := reader.tryFrames(1, safetyReplyWait); err != nil || got[0] != want {
		t.Fatalf("XREADGROUP after XADD: %q, %v; want %q", got, err, want)
	}
}

// safetyHeapBound is how much the proxy's heap may grow over its baseline,
// measured after a GC while the test's client is still connected. A session
// needs its request buffer (at most listen.max_request_bytes, 64 KiB in
// TestSafetyRequestBufferBounded) and reply buffers of the same order; 16 MB
// leaves ample room for the runtime, the harness and GC noise, yet it is
// below the data the tests push through (20 MB of requests, 120 MB of
// replies), so a proxy that keeps what streamed through it fails.
const safetyHeapBound = 16 << 20

// TestSafetyRequestBufferBounded (defect 7): a client that always leaves a
// partial command at the end of its writes must not make the proxy's
// request buffer grow with the stream (redcon's reader doubles its buffer
// whenever it is full and not empty, and never compacts it).
// Not parallel: it measures this process's heap.
func TestSafetyRequestBufferBounded(t *testing.T) {
	e := startPlain(t, func(c *config.Config) { c.Listen.MaxRequestBytes = 65536 })
	const (
		command  = "*2\r\n$3\r\nGET\r\n$2\r\nkk\r\n" // 21 bytes
		reply    = "$-1\r\n"
		perWrite = 1000
		writes   = 1000 // 1000 × 1000 × 21 bytes ≈ 20 MB
		total    = perWrite * writes
	)
	if len(command) != 21 {
		t.Fatalf("command is %d bytes", len(command))
	}
	c := safetyProxy(t, e)
	c.send(t, command)
	c.frames(t, 1, safetyReplyWait)
	base := safetyHeapInuse()

	// Read replies as they come; report once all but the last command's
	// have arrived (that command stays partial while the heap is measured).
	got := make(chan error, 1)
	go func() {
		buf := make([]byte, 64<<10)
		want := (total - 1) * len(reply)
		c.c.SetReadDeadline(time.Now().Add(2 * time.Minute))
		for n := 0; n < want; {
			k, err := c.r.Read(buf[:min(len(buf), want-n)])
			for i := range k {
				if buf[i] != reply[(n+i)%len(reply)] {
					got <- fmt.Errorf("reply byte %d is %q", n+i, buf[i])
					return
				}
			}
			n += k
			if err != nil {
				got <- fmt.Errorf("after %d reply bytes: %v", n, err)
				return
			}
		}
		got <- nil
	}()
	// Every write ends one byte past a command boundary.
	stream := []byte(strings.Repeat(command, perWrite+1))
	c.send(t, string(stream[:perWrite*len(command)+1]))
	for range writes - 1 {
		c.send(t, string(stream[1:perWrite*len(command)+1]))
	}
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	grown := int64(safetyHeapInuse()) - int64(base)
	t.Logf("heap in use grew by %d KiB while a partial command is pending", grown>>10)
	if grown > safetyHeapBound {
		t.Errorf("heap in use grew by %d MiB after streaming %d MiB with max_request_bytes 64 KiB; want at most %d MiB",
			grown>>20, total*len(command)>>20, safetyHeapBound>>20)
	}
	c.c.SetReadDeadline(time.Time{})
	c.send(t, command[1:])
	if r := c.frames(t, 1, safetyReplyWait); r[0] != reply {
		t.Fatalf("last reply %q", r)
	}
}

// TestSafetyOrdinaryClientsDoNotPin (defect 8): what every go-redis client
// does on connect (HELLO, CLIENT SETNAME, SELECT of its DB) must not cost a
// dedicated connection each: 50 such clients with max_pinned 8 all work,
// and their keys land in their database.
func TestSafetyOrdinaryClientsDoNotPin(t *testing.T) {
	t.Parallel()
	e := startPlain(t, func(c *config.Config) { c.Upstream.Pool.MaxPinned = 8 })
	ctx := context.Background()
	var clients []*redis.Client
	for i := range 50 {
		clients = append(clients, e.client(t, 2+i%2, func(o *redis.Options) {
			o.PoolSize, o.DB, o.ClientName, o.MaxRetries = 1, 1, fmt.Sprintf("app-%d", i), -1
		}))
	}
	// Every client connects and keeps its connection before any reads back.
	for i, c := range clients {
		if err := c.Set(ctx, fmt.Sprintf("ocp:%d", i), i, 0).Err(); err != nil {
			t.Fatalf("client %d (RESP%d) SET: %v", i, 2+i%2, err)
		}
	}
	for i, c := range clients {
		if v, err := c.Get(ctx, fmt.Sprintf("ocp:%d", i)).Int(); err != nil || v != i {
			t.Fatalf("client %d GET: %d, %v", i, v, err)
		}
	}
	db1 := redis.NewClient(&redis.Options{Addr: e.redis.Addr, DB: 1})
	defer db1.Close()
	for i := range clients {
		if v, err := db1.Get(ctx, fmt.Sprintf("ocp:%d", i)).Int(); err != nil || v != i {
			t.Fatalf("key ocp:%d in database 1: %d, %v", i, v, err)
		}
	}
	// With all 50 still connected, dedicated connections are still there
	// for the clients that need one.
	tx := safetyProxy(t, e)
	tx.send(t, cmd("MULTI")+cmd("INCR", "ocp:tx")+cmd("EXEC"))
	if got := strings.Join(tx.frames(t, 3, safetyReplyWait), ""); got != "+OK\r\n+QUEUED\r\n*1\r\n:1\r\n" {
		t.Fatalf("a transaction while the 50 clients are connected: %q", got)
	}
}

// TestSafetyExhaustedTransaction (defect 8): when no dedicated connection
// is free, none of MULTI, SET, EXEC may run, however the client splits its
// writes; SET must not run outside the transaction.
func TestSafetyExhaustedTransaction(t *testing.T) {
	t.Parallel()
	e := safetyExhausted(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		writes func(key string) []string
	}{
		{"one write", func(k string) []string { return []string{cmd("MULTI") + cmd("SET", k, "v") + cmd("EXEC")} }},
		{"one write per command", func(k string) []string { return []string{cmd("MULTI"), cmd("SET", k, "v"), cmd("EXEC")} }},
		{"split inside SET", func(k string) []string {
			all := cmd("MULTI") + cmd("SET", k, "v") + cmd("EXEC")
			cut := len(cmd("MULTI")) + 9
			return []string{all[:cut], all[cut:]}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := "etx:" + strings.ReplaceAll(tc.name, " ", "-")
			c := safetyProxy(t, e)
			for _, w := range tc.writes(key) {
				c.c.Write([]byte(w)) // the proxy may have closed it: checked below
				if tc.name == "one write per command" {
					safetyErrorsOrClose(t, c, 1, "each of MULTI, SET, EXEC")
				}
			}
			if tc.name != "one write per command" {
				safetyErrorsOrClose(t, c, 3, "MULTI, SET, EXEC")
			}
			if n := e.direct(t).Exists(ctx, key).Val(); n != 0 {
				t.Fatalf("%s exists: SET ran outside the transaction", key)
			}
		})
	}
}

// TestSafetyExhaustedSelect (defect 8): SELECT that cannot be honoured
// must not let the next command write to database 0.
func TestSafetyExhaustedSelect(t *testing.T) {
	t.Parallel()
	e := safetyExhausted(t)
	ctx := context.Background()
	c := safetyProxy(t, e)
	c.send(t, cmd("SELECT", "2"))
	sel, err := c.tryFrames(1, safetyReplyWait)
	c.c.Write([]byte(cmd("SET", "esel:k", "v")))
	if err == nil && sel[0] == "+OK\r\n" {
		if got := c.frames(t, 1, safetyReplyWait); got[0] != "+OK\r\n" {
			t.Fatalf("SET after SELECT 2: %q", got)
		}
		db2 := redis.NewClient(&redis.Options{Addr: e.redis.Addr, DB: 2})
		defer db2.Close()
		if db2.Exists(ctx, "esel:k").Val() != 1 {
			t.Fatal("SELECT 2 answered +OK but SET did not land in database 2")
		}
	} else {
		// SELECT was refused: the client must be closed, not left on db 0.
		if ok, extra := c.closed(safetyReplyWait); !ok {
			t.Fatalf("SELECT 2 refused (%q) and the connection stays open (received %q)", sel, extra)
		}
	}
	if e.direct(t).Exists(ctx, "esel:k").Val() != 0 {
		t.Fatal("SET after an unhonoured SELECT 2 wrote to database 0")
	}
}

// TestSafetyExhaustedAuth (defect 8): AUTH as an ACL user that cannot be
// honoured must not leave the client running as the proxy's own user.
func TestSafetyExhaustedAuth(t *testing.T) {
	t.Parallel()
	e := safetyExhausted(t)
	ctx := context.Background()
	if err := e.direct(t).Do(ctx, "ACL", "SETUSER", "alice", "on", ">alice-pw", "~*", "+@all").Err(); err != nil {
		t.Fatal(err)
	}
	c := safetyProxy(t, e)
	c.send(t, cmd("AUTH", "alice", "alice-pw"))
	auth, err := c.tryFrames(1, safetyReplyWait)
	c.c.Write([]byte(cmd("ACL", "WHOAMI")))
	if err == nil && auth[0] == "+OK\r\n" {
		if got := c.frames(t, 1, safetyReplyWait); got[0] != safetyBulk("alice") {
			t.Fatalf("ACL WHOAMI after AUTH alice: %q", got)
		}
		return
	}
	ok, extra := c.closed(safetyReplyWait)
	if strings.Contains(extra, "default") {
		t.Fatalf("AUTH alice refused (%q), then ACL WHOAMI ran as %q", auth, extra)
	}
	if !ok {
		t.Fatalf("AUTH alice refused (%q) and the connection stays open (received %q)", auth, extra)
	}
}

// TestSafetyUpstreamUsernameWithoutPassword (defect 9): a username in
// upstream.url without a password is an ACL user; the proxy must log in as
// that user (AUTH user with any password works for a nopass user), not
// stay the default user.
func TestSafetyUpstreamUsernameWithoutPassword(t *testing.T) {
	t.Parallel()
	rs := testredis.Start(t, testredis.Options{})
	ctx := context.Background()
	admin := redis.NewClient(&redis.Options{Addr: rs.Addr})
	defer admin.Close()
	if err := admin.Do(ctx, "ACL", "SETUSER", "restricted", "on", "nopass", "~*", "+get").Err(); err != nil {
		t.Fatal(err)
	}
	e := startProxy(t, newPKI(t), "redis://restricted@"+rs.Addr, nil)
	e.redis = rs

	// What Redis answers the restricted user.
	d := safetyDirect(t, e)
	d.send(t, cmd("AUTH", "restricted", "anything"))
	d.frames(t, 1, safetyReplyWait)
	d.send(t, cmd("SET", "unp:k", "v")+cmd("GET", "unp:k"))
	want := d.frames(t, 2, safetyReplyWait)
	if !strings.HasPrefix(want[0], "-NOPERM") {
		t.Fatalf("direct: SET as restricted: %q", want)
	}
	for _, proto := range []int{2, 3} {
		p := safetyProxy(t, e)
		if proto == 3 {
			safetyHello3(t, p)
		}
		p.send(t, cmd("SET", "unp:k", "v")+cmd("GET", "unp:k"))
		got := p.frames(t, 2, safetyReplyWait)
		if proto == 3 {
			want[1] = "_\r\n" // RESP3 null
		}
		safetySame(t, fmt.Sprintf("RESP%d SET and GET as upstream user restricted", proto), want, got)
	}
	if admin.Exists(ctx, "unp:k").Val() != 0 {
		t.Fatal("SET ran as the default user")
	}
}

// TestSafetyUpstreamUsernameNeedsPassword (defect 9): when the user in
// upstream.url has a password and the URL gives none, the proxy fails
// closed: New refuses, or clients get errors; it never runs as default.
func TestSafetyUpstreamUsernameNeedsPassword(t *testing.T) {
	t.Parallel()
	rs := testredis.Start(t, testredis.Options{})
	ctx := context.Background()
	admin := redis.NewClient(&redis.Options{Addr: rs.Addr})
	defer admin.Close()
	if err := admin.Do(ctx, "ACL", "SETUSER", "locked", "on", ">secret", "~*", "+@all").Err(); err != nil {
		t.Fatal(err)
	}
	e, _, _, err := serveProxy(t, newPKI(t), "redis://locked@"+rs.Addr, nil)
	if err != nil {
		t.Logf("proxy.New refuses: %v", err)
		return
	}
	e.redis = rs
	for _, proto := range []int{2, 3} {
		// The proxy may answer with errors or close the connection: the
		// writes' errors are not the test's business, the replies are.
		p := safetyProxy(t, e)
		req, n := cmd("SET", "unpw:k", "v")+cmd("ACL", "WHOAMI"), 2
		if proto == 3 {
			req, n = cmd("HELLO", "3")+req, 3
		}
		p.c.Write([]byte(req))
		got, _ := p.tryFrames(n, safetyReplyWait)
		for _, r := range got {
			if !strings.HasPrefix(r, "-") {
				t.Fatalf("RESP%d: %q through a proxy that cannot log in as locked: %q, want only errors", proto, req, got)
			}
		}
	}
	if admin.Exists(ctx, "unpw:k").Val() != 0 {
		t.Fatal("SET ran as the default user")
	}
}

// TestSafetyVerifyIfGivenIsLoud (defect 10): client_auth verify-if-given
// serves clients without certificates, so start-up warns as loudly as for
// none, and every session logs who it is (or "anonymous") at info level.
func TestSafetyVerifyIfGivenIsLoud(t *testing.T) {
	t.Parallel()
	e := startPlain(t, func(c *config.Config) { c.Listen.TLS.ClientAuth = "verify-if-given" })
	lines, _ := safetyLogLines(t, e, "listen.tls.client_auth")
	var warned bool
	for _, l := range lines {
		msg, _ := l["message"].(string)
		warned = warned || l["level"] == "warn" && l["key"] == "listen.tls.client_auth" && strings.HasPrefix(msg, "WARNING: ")
	}
	if !warned {
		t.Errorf("no WARN line with key listen.tls.client_auth and a \"WARNING: ...\" message for verify-if-given:\n%s", e.logs.String())
	}

	anon := safetyTLS(t, e.addr, &tls.Config{RootCAs: e.pki.ca.Pool(), ServerName: "127.0.0.1"})
	withCert := safetyProxy(t, e)
	for _, c := range []*safetyPeer{anon, withCert} {
		c.send(t, cmd("PING"))
		c.frames(t, 1, safetyReplyWait)
	}
	for _, tc := range []struct {
		c    *safetyPeer
		name string
	}{{anon, "anonymous"}, {withCert, "app1"}} {
		addr := tc.c.c.LocalAddr().String()
		waitFor(t, "an info line naming the session "+addr+" as "+tc.name, func() bool {
			lines, raw := safetyLogLines(t, e, addr)
			for i, l := range lines {
				if l["level"] == "info" && strings.Contains(raw[i], tc.name) {
					return true
				}
			}
			return false
		})
	}
}

// TestSafetyLongStatusReply (defect 11): a script's status reply may be
// longer than any buffer (70,000 bytes here); it arrives intact, and the
// clients sharing the connection are not disturbed.
func TestSafetyLongStatusReply(t *testing.T) {
	t.Parallel()
	e := startPlain(t, func(c *config.Config) { c.Upstream.Pool.MaxSize = 1 })
	eval := cmd("EVAL", "return {ok=string.rep('a',70000)}", "0")
	direct, proxied := safetyConverse(t, e, 1, eval)
	if len(direct[0]) != 70003 {
		t.Fatalf("direct reply is %d bytes", len(direct[0]))
	}
	safetySame(t, "EVAL with a 70,000-byte status reply", direct, proxied)

	const rounds = 200
	bystanders := safetyPeers(t, e, 4, 2)
	done := make(chan error, 1)
	go func() { done <- safetyCounters(bystanders, "lsr", rounds) }()
	p := safetyProxy(t, e)
	for range 10 {
		p.send(t, eval)
		if got, err := p.tryFrames(1, safetyReplyWait); err != nil || got[0] != direct[0] {
			t.Errorf("EVAL while others share the connection: %d bytes, %v", len(strings.Join(got, "")), err)
			break
		}
	}
	if err := <-done; err != nil {
		t.Fatalf("a client sharing the connection: %v", err)
	}
	safetyCheckCounters(t, e, "lsr", len(bystanders), rounds)
}

// TestSafetyStrictLengths (defect 12): Redis parses lengths with string2ll,
// which refuses a sign, leading zeros and "+"; "*0" and "*-1" are skipped.
// The proxy answers exactly as Redis (same replies, same close), for that
// client only, and answers commands that came before in the same write.
func TestSafetyStrictLengths(t *testing.T) {
	t.Parallel()
	e := startPlain(t, func(c *config.Config) { c.Upstream.Pool.MaxSize = 1 })
	const ping = "*1\r\n$4\r\nPING\r\n"
	bystanders := safetyPeers(t, e, 2, 2)
	const rounds = 300
	done := make(chan error, 1)
	go func() { done <- safetyCounters(bystanders, "sl", rounds) }()
	for _, tc := range []struct {
		name    string
		req     string
		replies int
		closes  bool
	}{
		{"plus sign in a bulk length", "*1\r\n$+4\r\nPING\r\n", 1, true},
		{"leading zero in a multibulk length", "*01\r\n$4\r\nPING\r\n", 1, true},
		{"leading zeros in a bulk length", "*1\r\n$004\r\nPING\r\n", 1, true},
		{"valid command before a bad length", ping + "*1\r\n$+4\r\nPING\r\n", 2, true},
		{"*0 is skipped", "*0\r\n" + ping, 1, false},
		{"*-1 is skipped", "*-1\r\n" + ping, 1, false},
		{"*0 between commands", ping + "*0\r\n" + ping, 2, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, p := safetyDirect(t, e), safetyProxy(t, e)
			d.send(t, tc.req)
			p.send(t, tc.req)
			want := d.frames(t, tc.replies, safetyReplyWait)
			if ok, _ := d.closed(200 * time.Millisecond); ok != tc.closes {
				t.Fatalf("direct Redis closes: %v; the test expects %v", ok, tc.closes)
			}
			got, err := p.tryFrames(tc.replies, safetyReplyWait)
			if err != nil {
				t.Fatalf("proxy: %q, %v; want %q", got, err, want)
			}
			safetySame(t, strconv.Quote(tc.req), want, got)
			if tc.closes {
				p.expectClosed(t)
			} else {
				p.send(t, ping)
				if got := p.frames(t, 1, safetyReplyWait); got[0] != "+PONG\r\n" {
					t.Fatalf("PING after: %q", got)
				}
			}
		})
	}
	if err := <-done; err != nil {
		t.Fatalf("a client sharing the connection: %v", err)
	}
	safetyCheckCounters(t, e, "sl", len(bystanders), rounds)
}

// TestSafetyLargeRepliesPipelined (defect 13): 60 pipelined GETs of a
// 2 MiB value all arrive intact, and once they are read the proxy's heap is
// back near its baseline (within safetyHeapBound): replies stream through,
// and no 120 MB buffer outlives them.
// Not parallel: it measures this process's heap.
func TestSafetyLargeRepliesPipelined(t *testing.T) {
	e := startPlain(t, nil)
	ctx := context.Background()
	value := strings.Repeat("0123456789abcdef", 2<<20/16)
	if err := e.direct(t).Set(ctx, "lrp:big", value, 0).Err(); err != nil {
		t.Fatal(err)
	}
	c := safetyProxy(t, e)
	c.send(t, cmd("PING"))
	c.frames(t, 1, safetyReplyWait)
	base := safetyHeapInuse()

	c.send(t, strings.Repeat(cmd("GET", "lrp:big"), 60))
	want := safetyBulk(value)
	for i := range 60 {
		got, err := c.tryFrames(1, 30*time.Second)
		if err != nil {
			t.Fatalf("reply %d: %v", i, err)
		}
		if got[0] != want {
			t.Fatalf("reply %d is %d bytes, not the value", i, len(got[0]))
		}
	}
	grown := int64(safetyHeapInuse()) - int64(base)
	t.Logf("heap in use grew by %d KiB after 120 MiB of replies", grown>>10)
	if grown > safetyHeapBound {
		t.Errorf("heap in use is %d MiB over baseline after the replies were read; want at most %d MiB", grown>>20, safetyHeapBound>>20)
	}
}

// TestSafetyClientPauseWrite (defect 14): during CLIENT PAUSE 3000 WRITE a
// write from one client waits for the pause; reads from another client that
// share its connection may wait behind it, but only until the pause ends,
// and nothing fails with the default upstream.read_timeout.
func TestSafetyClientPauseWrite(t *testing.T) {
	t.Parallel()
	e := startPlain(t, func(c *config.Config) {
		c.Upstream.ReadTimeout = config.Default().Upstream.ReadTimeout
		c.Upstream.Pool.MaxSize = 1
	})
	ctx := context.Background()
	if err := e.direct(t).Set(ctx, "cpw:r", "readable", 0).Err(); err != nil {
		t.Fatal(err)
	}
	pauser, writer, reader := safetyProxy(t, e), safetyProxy(t, e), safetyProxy(t, e)
	directReader := safetyDirect(t, e)
	pauser.send(t, cmd("CLIENT", "PAUSE", "3000", "WRITE"))
	if got := pauser.frames(t, 1, safetyReplyWait); got[0] != "+OK\r\n" {
		t.Fatalf("CLIENT PAUSE: %q", got)
	}
	pauseEnd := time.Now().Add(3 * time.Second)
	writer.send(t, cmd("SET", "cpw:w", "v"))

	var worstProxy, worstDirect time.Duration
	for i := range 20 {
		for _, c := range []*safetyPeer{reader, directReader} {
			start := time.Now()
			c.send(t, cmd("GET", "cpw:r"))
			got, err := c.tryFrames(1, safetyReplyWait)
			if err != nil || got[0] != safetyBulk("readable") {
				t.Fatalf("%s GET %d during the pause: %q, %v", c.name, i, got, err)
			}
			if c == reader {
				worstProxy = max(worstProxy, time.Since(start))
			} else {
				worstDirect = max(worstDirect, time.Since(start))
			}
		}
	}
	t.Logf("slowest GET during CLIENT PAUSE WRITE: %v through the proxy, %v directly", worstProxy, worstDirect)
	if late := time.Since(pauseEnd); late > 5*time.Second {
		t.Errorf("reads through the proxy finished %v after the pause ended", late)
	}
	if got, err := writer.tryFrames(1, safetyReplyWait); err != nil || got[0] != "+OK\r\n" {
		t.Fatalf("the paused SET: %q, %v; want +OK once the pause ends", got, err)
	}
}

// TestSafetyReplyOrderAroundPushes (defect 15): replies the proxy makes
// itself (QUIT's +OK) and replies recognised by their text (+RESET) keep
// their place among the replies Redis sends on a dedicated connection in
// push mode. Compared with Redis byte for byte.
func TestSafetyReplyOrderAroundPushes(t *testing.T) {
	t.Parallel()
	e := startPlain(t, nil)
	if err := e.direct(t).Set(context.Background(), "rop:mk", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	var channels []string
	for i := range 20 {
		channels = append(channels, fmt.Sprintf("rop:ch%d", i))
	}
	gets := strings.Repeat(cmd("GET", "rop:mk"), 10)
	for _, tc := range []struct {
		name  string
		resp3 bool
		setup []string // each sent and its one reply compared, in turn
		last  string   // then sent in one write
		n     int      // replies to it
		quit  bool     // the last write ends with QUIT: the connection closes
	}{
		// Many channels or GETs rather than one make a misplaced +OK
		// likelier to land among them: the race is the proxy's own.
		{"SUBSCRIBE+QUIT", false, nil, cmd(append([]string{"SUBSCRIBE"}, channels...)...) + cmd("QUIT"), 21, true},
		{"after UNSUBSCRIBE GET+QUIT", false, []string{cmd("SUBSCRIBE", "rop:ch"), cmd("UNSUBSCRIBE", "rop:ch")},
			gets + cmd("QUIT"), 11, true},
		{"subscribed GET+QUIT", false, []string{cmd("SUBSCRIBE", "rop:ch")}, gets + cmd("QUIT"), 11, true},
		{"tracking GET+GET+QUIT", true, []string{cmd("CLIENT", "TRACKING", "on")},
			cmd("GET", "rop:mk") + cmd("GET", "rop:mk") + cmd("QUIT"), 3, true},
		{"tracking EVAL +RESET then RESET", true, []string{cmd("CLIENT", "TRACKING", "on")},
			cmd("EVAL", "return {ok='RESET'}", "0") + cmd("RESET") + cmd("PING"), 3, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, p := safetyDirect(t, e), safetyProxy(t, e)
			peers := []*safetyPeer{d, p}
			for _, c := range peers {
				if tc.resp3 {
					safetyHello3(t, c)
				}
			}
			for _, s := range tc.setup {
				d.send(t, s)
				p.send(t, s)
				safetySame(t, strconv.Quote(s), d.frames(t, 1, safetyReplyWait), p.frames(t, 1, safetyReplyWait))
			}
			d.send(t, tc.last)
			p.send(t, tc.last)
			safetySame(t, strconv.Quote(tc.last), d.frames(t, tc.n, safetyReplyWait), p.frames(t, tc.n, safetyReplyWait))
			if tc.quit {
				d.expectClosed(t)
				p.expectClosed(t)
			}
		})
	}
}

// TestSafetyExhaustedTxPipeline (defect 16): go-redis writes MULTI, SET
// and EXEC in one write, but a 32 KiB value spans several TLS records, so
// the proxy reads the transaction in pieces. With no dedicated connection
// free nothing may run outside MULTI.
func TestSafetyExhaustedTxPipeline(t *testing.T) {
	t.Parallel()
	e := safetyExhausted(t)
	ctx := context.Background()
	c := e.client(t, 2, func(o *redis.Options) { o.MaxRetries = -1 })
	_, err := c.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Set(ctx, "etp:k", strings.Repeat("x", 32<<10), 0)
		return nil
	})
	if err == nil {
		t.Fatal("TxPipelined succeeded although no dedicated connection is free")
	}
	if e.direct(t).Exists(ctx, "etp:k").Val() != 0 {
		t.Fatalf("etp:k exists: SET ran outside MULTI (TxPipelined: %v)", err)
	}
}

// TestSafetyInlineCommands (defect 17): inline commands are split as
// Redis's sdssplitargs splits them: "\x41" escapes in double quotes, only
// \' in single quotes, tabs separate, and quotes may start mid-token.
func TestSafetyInlineCommands(t *testing.T) {
	t.Parallel()
	e := startPlain(t, nil)
	ctx := context.Background()
	direct := e.direct(t)
	for _, tc := range []struct{ name, line string }{
		{"hex escape", `SET %sa "a\x41b"`},
		{"backslash-n in single quotes", `SET %sb 'x\ny'`},
		{"tabs", "SET\t%sc\tv\tEX\t100"},
		{"quote mid-token", `SET %sd a"b c"`},
		{"escaped quote in single quotes", `SET %se 'it\'s'`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, p := safetyDirect(t, e), safetyProxy(t, e)
			d.send(t, fmt.Sprintf(tc.line, "inl:direct:")+"\r\n")
			p.send(t, fmt.Sprintf(tc.line, "inl:proxy:")+"\r\n")
			safetySame(t, "reply", d.frames(t, 1, safetyReplyWait), p.frames(t, 1, safetyReplyWait))
			key := strings.Fields(strings.ReplaceAll(fmt.Sprintf(tc.line, ""), "\t", " "))[1]
			want, wantErr := direct.Get(ctx, "inl:direct:"+key).Result()
			got, gotErr := direct.Get(ctx, "inl:proxy:"+key).Result()
			if got != want || (wantErr == nil) != (gotErr == nil) {
				t.Fatalf("stored value: through the proxy %q (%v), directly %q (%v)", got, gotErr, want, wantErr)
			}
		})
	}
}

// TestSafetyRefusedCommandInMulti (defect 18): a command the proxy refuses
// while a transaction is being queued must abort the transaction at EXEC,
// as Redis does for a command it rejects while queuing.
func TestSafetyRefusedCommandInMulti(t *testing.T) {
	t.Parallel()
	e := startPlain(t, nil)
	ctx := context.Background()
	d, p := safetyDirect(t, e), safetyProxy(t, e)
	d.send(t, cmd("MULTI")+cmd("NOSUCHCOMMAND")+cmd("SET", "rcm:direct", "v")+cmd("EXEC"))
	p.send(t, cmd("MULTI")+cmd("CLIENT", "KILL", "ID", "1")+cmd("SET", "rcm:proxy", "v")+cmd("EXEC"))
	want, got := d.frames(t, 4, safetyReplyWait), p.frames(t, 4, safetyReplyWait)
	if !strings.HasPrefix(got[1], "-ERR") {
		t.Fatalf("CLIENT KILL in MULTI: %q, want the proxy's refusal", got[1])
	}
	safetySame(t, "MULTI, <refused>, SET, EXEC (the refusal aside)",
		[]string{want[0], want[2], want[3]}, []string{got[0], got[2], got[3]})
	if e.direct(t).Exists(ctx, "rcm:proxy").Val() != 0 {
		t.Fatal("the SET queued with the refused command ran")
	}
}

// TestSafetyNoEvictDoesNotOutliveClient (defect 19): CLIENT NO-EVICT is
// connection state that RESET does not clear in Redis 7.0; a client's
// no-evict flag must leave with it, not stay on a pooled connection.
func TestSafetyNoEvictDoesNotOutliveClient(t *testing.T) {
	t.Parallel()
	e := startPlain(t, func(c *config.Config) {
		c.Upstream.Pool.MinIdle, c.Upstream.Pool.MaxIdle, c.Upstream.Pool.MaxPinned = 0, 1, 1
	})
	ctx := context.Background()
	a := safetyProxy(t, e)
	a.send(t, cmd("CLIENT", "NO-EVICT", "on"))
	if got := a.frames(t, 1, safetyReplyWait); got[0] != "+OK\r\n" {
		t.Fatalf("CLIENT NO-EVICT on: %q", got)
	}
	a.c.Close()
	direct := e.direct(t)
	var list string
	waitFor(t, "no connection in Redis with the no-evict flag", func() bool {
		list = direct.ClientList(ctx).Val()
		for _, l := range strings.Split(strings.TrimSpace(list), "\n") {
			if strings.Contains(safetyInfoField(l, "flags"), "e") {
				return false
			}
		}
		return true
	})
	b := safetyProxy(t, e)
	b.send(t, cmd("CLIENT", "SETNAME", "later")+cmd("CLIENT", "INFO"))
	got := b.frames(t, 2, safetyReplyWait)
	if flags := safetyInfoField(got[1], "flags"); strings.Contains(flags, "e") {
		t.Fatalf("a later client's connection has flags=%s: %q", flags, got[1])
	}
}

// TestSafetyStopWithBlockedPipeline (defect 20): a client blocked in BLPOP
// with another command pipelined behind it does not hold up shutdown.
func TestSafetyStopWithBlockedPipeline(t *testing.T) {
	t.Parallel()
	rs := testredis.Start(t, testredis.Options{})
	e, stop, done, err := serveProxy(t, newPKI(t), "redis://"+rs.Addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	e.redis = rs
	c := safetyProxy(t, e)
	c.send(t, cmd("BLPOP", "swb:q", "0")+cmd("GET", "swb:x"))
	direct := e.direct(t)
	waitFor(t, "the BLPOP to block", func() bool { return rejInfoInt(t, direct, "clients", "blocked_clients") == 1 })
	stop()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return within 5s of its context being cancelled")
	}
}
