package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/tlsproxy/tlsproxy/proxy/config"
)

// failNoHang bounds how long a client may wait for the proxy's answer when
// Redis fails: an upper bound for "does not hang", well under the 5s
// upstream.dial_timeout.
const failNoHang = 3 * time.Second

// failReadToClose reads c until the proxy closes it and returns what
// arrived. It fails the test if the connection is still open after limit.
func failReadToClose(t testing.TB, c net.Conn, limit time.Duration) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(limit))
	var got []byte
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf)
		got = append(got, buf[:n]...)
		if err == nil {
			continue
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("connection still open after %s; received %q", limit, got)
		}
		return got
	}
}

// failCmdCalls is how many times Redis ran a command, from INFO
// commandstats (name as Redis spells it there, e.g. "client|kill").
func failCmdCalls(t testing.TB, direct *redis.Client, name string) int64 {
	t.Helper()
	info, err := direct.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(info, "\r\n") {
		rest, ok := strings.CutPrefix(line, "cmdstat_"+name+":calls=")
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(rest[:strings.IndexByte(rest+",", ',')], 10, 64)
		if err != nil {
			t.Fatalf("commandstats line %q: %v", line, err)
		}
		return n
	}
	return 0
}

// failTimed runs f and fails the test if it takes longer than limit (a
// bound for "no hang", not a speed requirement).
func failTimed(t testing.TB, what string, limit time.Duration, f func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		return err
	case <-time.After(limit):
		t.Fatalf("%s: no answer within %s", what, limit)
		return nil
	}
}

// TestFailureRedisDown stops Redis under a connected client: its commands
// get a prompt "upstream unavailable" error, never a hang; once Redis is back
// the same client, through the same proxy, works again.
func TestFailureRedisDown(t *testing.T) {
	e := startPlain(t, nil)
	ctx := context.Background()
	c := e.client(t, 2, func(o *redis.Options) { o.PoolSize = 1 })
	if err := c.Set(ctx, "k", "before", 0).Err(); err != nil {
		t.Fatal(err)
	}

	e.redis.Stop()
	// Several attempts: the first may meet the dying shared connection, the
	// later ones the pool's backoff.
	for i := 0; i < 5; i++ {
		err := failTimed(t, "GET with Redis down", failNoHang, func() error { return c.Get(ctx, "k").Err() })
		if err == nil || !strings.HasPrefix(err.Error(), "ERR upstream unavailable:") {
			t.Fatalf("GET %d with Redis down: %v; want an error starting \"ERR upstream unavailable:\"", i, err)
		}
		// A command that needs a dedicated connection fails just as fast.
		err = failTimed(t, "BLPOP with Redis down", failNoHang, func() error { return c.BLPop(ctx, time.Second, "q").Err() })
		if err == nil || !strings.HasPrefix(err.Error(), "ERR upstream unavailable:") {
			t.Fatalf("BLPOP %d with Redis down: %v; want an error starting \"ERR upstream unavailable:\"", i, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !contains(e.logs.String(), "cannot connect to Redis") {
		t.Fatalf("the log does not say Redis is unreachable:\n%s", e.logs.String())
	}

	e.redis.Restart(t)
	waitFor(t, "the same client to work after Redis restarts", func() bool {
		return c.Set(ctx, "k", "after", 0).Err() == nil
	})
	if got, err := c.Get(ctx, "k").Result(); err != nil || got != "after" {
		t.Fatalf("GET after restart = %q, %v", got, err)
	}
	if got, err := e.direct(t).Get(ctx, "k").Result(); err != nil || got != "after" {
		t.Fatalf("GET in Redis after restart = %q, %v", got, err)
	}
	// Dedicated connections recover too: a transaction works.
	var incr *redis.IntCmd
	if _, err := c.TxPipelined(ctx, func(p redis.Pipeliner) error {
		incr = p.Incr(ctx, "tx")
		return nil
	}); err != nil || incr.Val() != 1 {
		t.Fatalf("MULTI/INCR/EXEC after restart: %d, %v", incr.Val(), err)
	}
	if !contains(e.logs.String(), "Redis is reachable again") {
		t.Fatalf("the log does not say Redis is back:\n%s", e.logs.String())
	}
}

// TestFailureRedisDiesPinned kills Redis while clients are inside MULTI and
// one is blocked in BLPOP, all on dedicated connections: each has its
// connection closed, as Redis going away would do, not a hang and not an
// invented error (the outcome of what was in flight is unknown); a
// transaction whose connection died is never run on a new one; the other
// clients recover.
func TestFailureRedisDiesPinned(t *testing.T) {
	e := startPlain(t, nil)
	ctx := context.Background()
	direct := e.direct(t)
	other := e.client(t, 2)
	if err := other.Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}

	// txNow sends EXEC while Redis is down, txLater once it is back.
	txNow, txLater := e.rawConn(t), e.rawConn(t)
	for _, tx := range []net.Conn{txNow, txLater} {
		roundTrip(t, tx, "MULTI\r\n", "+OK\r\n")
		roundTrip(t, tx, "INCR n\r\n", "+QUEUED\r\n")
	}

	blocked := e.client(t, 2, func(o *redis.Options) { o.PoolSize = 1; o.MaxRetries = -1 })
	blpop := make(chan error, 1)
	go func() { blpop <- blocked.BLPop(ctx, 0, "q").Err() }()
	waitFor(t, "BLPOP to block in Redis", func() bool {
		return rejInfoInt(t, direct, "clients", "blocked_clients") == 1
	})

	e.redis.Stop()

	select {
	case err := <-blpop:
		if err == nil {
			t.Fatal("BLPOP returned without error while Redis died")
		}
		t.Logf("blocked client sees: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("blocked client still waiting 10s after Redis died")
	}

	// A client idle in MULTI learns without sending anything: the proxy
	// closes its connection, as Redis going away would.
	if got := failReadToClose(t, txLater, 10*time.Second); len(got) > 0 {
		t.Fatalf("idle client in MULTI received %q before the close", got)
	}

	// The client in MULTI: its connection is closed, or EXEC fails.
	txNow.Write([]byte("EXEC\r\n")) // may fail: the proxy may have closed it already
	got := failReadToClose(t, txNow, 10*time.Second)
	if len(got) > 0 {
		t.Fatalf("client in MULTI received %q; want nothing before the close", got)
	}
	t.Logf("client in MULTI sees: %q, then the connection closed", got)

	e.redis.Restart(t)
	waitFor(t, "the other client to recover", func() bool { return other.Set(ctx, "k", "v", 0).Err() == nil })
	waitFor(t, "the blocked client's next command", func() bool { return blocked.Ping(ctx).Err() == nil })

	// The transaction queued before Redis died is gone: EXEC must fail, not
	// run INCR on a fresh connection.
	txLater.Write([]byte("EXEC\r\n"))
	got = failReadToClose(t, txLater, 10*time.Second)
	if len(got) > 0 && !strings.HasPrefix(string(got), "-ERR") {
		t.Fatalf("EXEC of a transaction lost with Redis received %q; want an error or the connection closed", got)
	}
	if n, err := direct.Exists(ctx, "n").Result(); err != nil || n != 0 {
		t.Fatalf("EXISTS n = %d, %v: a transaction lost with Redis ran anyway", n, err)
	}
	if !contains(e.logs.String(), "dedicated upstream connection failed") {
		t.Fatalf("no log line about the failed pinned connection:\n%s", e.logs.String())
	}

	tx := e.rawConn(t)
	roundTrip(t, tx, "MULTI\r\nINCR n\r\nEXEC\r\n", "+OK\r\n+QUEUED\r\n*1\r\n:1\r\n")
}

// TestProtocolErrorMalformed sends malformed RESP: that client gets a
// protocol error and is closed; a client connected at the same time carries
// on.
func TestProtocolErrorMalformed(t *testing.T) {
	e := startPlain(t, nil)
	ctx := context.Background()
	cases := []struct{ name, req, want string }{
		{"bad-bulk-length", "*2\r\n$3\r\nGET\r\n$x\r\n", "-ERR Protocol error: invalid bulk length\r\n"},
		{"negative-bulk-length", "*1\r\n$-5\r\n", "-ERR Protocol error: invalid bulk length\r\n"},
		{"bad-multibulk-length", "*x\r\n$4\r\nPING\r\n", "-ERR Protocol error: invalid multibulk length\r\n"},
		{"unbalanced-quotes", "SET a \"b\r\n", "-ERR Protocol error: unbalanced quotes in request\r\n"},
	}
	neighbour := e.rawConn(t)
	roundTrip(t, neighbour, "SET n 0\r\n", "+OK\r\n")
	gr := e.client(t, 2)
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			bad := e.rawConn(t)
			roundTrip(t, bad, "PING\r\n", "+PONG\r\n")
			if _, err := bad.Write([]byte(tc.req)); err != nil {
				t.Fatal(err)
			}
			got := failReadToClose(t, bad, 10*time.Second)
			if !strings.HasPrefix(string(got), "-ERR Protocol error") || string(got) != tc.want {
				t.Fatalf("got %q, want %q then the connection closed", got, tc.want)
			}
			roundTrip(t, neighbour, "INCR n\r\n", fmt.Sprintf(":%d\r\n", i+1))
			if err := gr.Ping(ctx).Err(); err != nil {
				t.Fatalf("go-redis client next to it: %v", err)
			}
		})
	}
	if n := strings.Count(e.logs.String(), "client protocol error"); n != len(cases) {
		t.Fatalf("%d \"client protocol error\" log lines, want %d:\n%s", n, len(cases), e.logs.String())
	}
}

// TestOversizeRequest: a request larger than listen.max_request_bytes is a
// protocol error for that client, never reaches Redis, and nobody else
// notices; a request under the limit goes through.
func TestOversizeRequest(t *testing.T) {
	e := startPlain(t, func(c *config.Config) { c.Listen.MaxRequestBytes = 1 << 20 })
	ctx := context.Background()
	direct := e.direct(t)
	gr := e.client(t, 2)
	if err := gr.Set(ctx, "small", "1", 0).Err(); err != nil {
		t.Fatal(err)
	}

	bad := e.rawConn(t)
	val := strings.Repeat("v", 2<<20)
	req := fmt.Sprintf("*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n$%d\r\n%s\r\n", len(val), val)
	go bad.Write([]byte(req)) // fails part way once the proxy closes
	got := failReadToClose(t, bad, 10*time.Second)
	const want = "-ERR Protocol error: request larger than listen.max_request_bytes\r\n"
	if string(got) != want {
		t.Fatalf("got %q, want %q then the connection closed", got, want)
	}
	if !contains(e.logs.String(), "request too large; closing client") {
		t.Fatalf("no log line for the oversized request:\n%s", e.logs.String())
	}
	if n, err := direct.Exists(ctx, "big").Result(); err != nil || n != 0 {
		t.Fatalf("EXISTS big in Redis = %d, %v; the oversized SET must not reach Redis", n, err)
	}
	if err := gr.Incr(ctx, "small").Err(); err != nil {
		t.Fatalf("other client: %v", err)
	}

	half := strings.Repeat("h", 512<<10)
	if err := gr.Set(ctx, "half", half, 0).Err(); err != nil {
		t.Fatalf("SET of 512 KiB: %v", err)
	}
	if got, err := gr.Get(ctx, "half").Result(); err != nil || got != half {
		t.Fatalf("GET of 512 KiB: %d bytes, %v", len(got), err)
	}
	if n, err := direct.StrLen(ctx, "half").Result(); err != nil || n != int64(len(half)) {
		t.Fatalf("STRLEN half in Redis = %d, %v", n, err)
	}
}

// TestBoundedUpstreamConns runs 200 clients at once through a proxy with
// upstream.pool.max_size 2: every command succeeds and Redis never sees more
// than the pool's bound of connections.
func TestBoundedUpstreamConns(t *testing.T) {
	const maxSize, minIdle, maxIdle = 2, 1, 1
	e := startPlain(t, func(c *config.Config) {
		c.Upstream.Pool.MaxSize, c.Upstream.Pool.MinIdle, c.Upstream.Pool.MaxIdle = maxSize, minIdle, maxIdle
	})
	ctx := context.Background()
	direct := e.direct(t)
	// From pool.go: shared (multiplexed) connections are at most MaxShared
	// per protocol version, dialled only by Do; idle connections are at most
	// max(MaxIdle, MinIdle) per protocol version (putIdle closes the rest);
	// leased (pinned) ones at most MaxPinned. These clients speak RESP2 and
	// send only HELLO 2, CLIENT SETINFO and INCR, which all travel on shared
	// connections, so the proxy holds at most max_size shared + max(max_idle,
	// min_idle) idle connections, and Redis also counts the direct client.
	const bound = maxSize + max(maxIdle, minIdle) + 1

	var peak, over atomic.Int64
	sample := func() {
		list, err := direct.ClientList(ctx).Result()
		if err != nil {
			t.Errorf("CLIENT LIST: %v", err)
			return
		}
		n := int64(strings.Count(strings.TrimSpace(list), "\n") + 1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		if n > bound && over.Add(1) == 1 {
			t.Errorf("Redis has %d connections, more than the bound %d:\n%s", n, bound, list)
		}
	}
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-stop:
				return
			default:
			}
			sample()
			time.Sleep(2 * time.Millisecond)
		}
	}()

	const clients, each = 200, 50
	var wg sync.WaitGroup
	var fails atomic.Int64
	for i := 0; i < clients; i++ {
		c := e.client(t, 2, func(o *redis.Options) { o.PoolSize = 1 })
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < each; j++ {
				if err := c.Incr(ctx, "counter").Err(); err != nil {
					if fails.Add(1) < 5 {
						t.Errorf("INCR: %v", err)
					}
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	<-sampled
	sample()
	if fails.Load() != 0 {
		t.Fatalf("%d INCRs failed", fails.Load())
	}
	if got, err := direct.Get(ctx, "counter").Int(); err != nil || got != clients*each {
		t.Fatalf("counter = %d, %v; want %d", got, err, clients*each)
	}
	// The sampler must have seen the proxy's connections, or it proves
	// nothing.
	if peak.Load() < 2 {
		t.Fatalf("CLIENT LIST peaked at %d connections: the proxy's were never seen", peak.Load())
	}
	t.Logf("peak Redis connections: %d (bound %d) for %d clients", peak.Load(), bound, clients)
}

// TestClientKillSparesShared: CLIENT KILL forms that would match shared
// connections are refused by the proxy, whatever else happens on them, and
// the shared connections stay in Redis's CLIENT LIST: the clients busy on
// them and one blocked on a dedicated connection never notice.
func TestClientKillSparesShared(t *testing.T) {
	e := startPlain(t, nil)
	ctx := context.Background()
	direct := e.direct(t)
	c := e.client(t, 2)

	// Other clients busy on the shared connections and one blocked on a
	// dedicated connection.
	busy := e.client(t, 2)
	stop := make(chan struct{})
	var incrs atomic.Int64
	var busyDone sync.WaitGroup
	var stopOnce sync.Once
	stopBusy := func() {
		stopOnce.Do(func() { close(stop) })
		busyDone.Wait()
	}
	t.Cleanup(stopBusy) // runs before the clients close, even after t.Fatal
	for w := 0; w < 4; w++ {
		busyDone.Add(1)
		go func() {
			defer busyDone.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if err := busy.Incr(ctx, "busy").Err(); err != nil {
					t.Errorf("busy client: %v", err)
					return
				}
				incrs.Add(1)
			}
		}()
	}
	blocked := e.client(t, 2, func(o *redis.Options) { o.PoolSize = 1 })
	type pop struct {
		v   []string
		err error
	}
	popped := make(chan pop, 1)
	go func() {
		v, err := blocked.BLPop(ctx, 0, "q").Result()
		popped <- pop{v, err}
	}()
	waitFor(t, "BLPOP to block in Redis", func() bool {
		return rejInfoInt(t, direct, "clients", "blocked_clients") == 1
	})
	waitFor(t, "the busy clients to get going", func() bool { return incrs.Load() > 100 })

	sharedIDs := proxyConnIDs(t, direct, "incr")
	if len(sharedIDs) == 0 {
		t.Fatal("no shared connection running INCR in CLIENT LIST")
	}
	sharedAddr := safetyInfoField(clientListLine(t, direct, sharedIDs[0]), "addr")
	for _, tc := range []struct {
		args []any
		want string
	}{
		{[]any{"CLIENT", "KILL", "TYPE", "normal"}, errKillNoTarget},
		{[]any{"client", "kill", "type", "NORMAL", "SKIPME", "no"}, errKillNoTarget},
		{[]any{"CLIENT", "KILL", "LADDR", e.redis.Addr}, errKillNoTarget},
		{[]any{"CLIENT", "KILL", "USER", "default"}, errKillNoTarget},
		{[]any{"Client", "Kill", "ID", sharedIDs[0]}, errKillShared},
		{[]any{"CLIENT", "KILL", "ADDR", sharedAddr, "SKIPME", "no"}, errKillShared},
		{[]any{"CLIENT", "KILL", sharedAddr}, errKillShared},
		{[]any{"CLIENT", "KILL", "127.0.0.1:1"}, "ERR No such client"},
		{[]any{"CLIENT", "UNBLOCK", sharedIDs[0]}, errUnblockShared},
	} {
		err := c.Do(ctx, tc.args...).Err()
		if err == nil || err.Error() != tc.want {
			t.Fatalf("%v: %v; want %q", tc.args, err, tc.want)
		}
	}
	// Also on a session with a dedicated connection (WATCH leaves state).
	conn := c.Conn()
	defer conn.Close()
	if err := conn.Do(ctx, "WATCH", "pinned").Err(); err != nil {
		t.Fatal(err)
	}
	if err := conn.Do(ctx, "CLIENT", "KILL", "TYPE", "normal").Err(); err == nil || err.Error() != errKillNoTarget {
		t.Fatalf("CLIENT KILL on a pinned session: %v; want %q", err, errKillNoTarget)
	}
	if err := conn.Ping(ctx).Err(); err != nil {
		t.Fatalf("pinned session after CLIENT KILL: %v", err)
	}
	for _, id := range sharedIDs {
		if clientListLine(t, direct, id) == "" {
			t.Fatalf("shared connection id=%s is gone from CLIENT LIST", id)
		}
	}

	n := incrs.Load()
	waitFor(t, "more INCRs after the refusals", func() bool { return incrs.Load() > n+100 })
	stopBusy()
	if err := direct.LPush(ctx, "q", "x").Err(); err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-popped:
		if p.err != nil || len(p.v) != 2 || p.v[1] != "x" {
			t.Fatalf("blocked client got %v, %v; want [q x]", p.v, p.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("blocked client did not get the pushed value")
	}
	if got, err := direct.Get(ctx, "busy").Int64(); err != nil || got != incrs.Load() {
		t.Fatalf("busy counter in Redis = %d, %v; the clients counted %d", got, err, incrs.Load())
	}
	// The counter itself works: CLIENT LIST runs through the proxy and
	// shows up in Redis's stats.
	if err := c.Do(ctx, "CLIENT", "LIST").Err(); err != nil {
		t.Fatal(err)
	}
	if calls := failCmdCalls(t, direct, "client|list"); calls == 0 {
		t.Fatal("commandstats does not count commands run through the proxy")
	}
}

// TestRefuseWaitShared: WAIT on a shared connection would count other
// clients' writes: the proxy refuses it; WAIT works once the session is
// pinned.
func TestRefuseWaitShared(t *testing.T) {
	e := startPlain(t, nil)
	ctx := context.Background()
	direct := e.direct(t)
	c := e.client(t, 2)

	for _, tc := range []struct {
		args []any
		want string
	}{
		{[]any{"WAIT", "0", "0"}, errWaitShared},
		{[]any{"wait", "1", "100"}, errWaitShared},
		{[]any{"WAITAOF", "0", "0", "0"}, errWaitShared},
	} {
		err := c.Do(ctx, tc.args...).Err()
		if err == nil || err.Error() != tc.want {
			t.Fatalf("%v: %v; want %q", tc.args, err, tc.want)
		}
		if err := c.Ping(ctx).Err(); err != nil {
			t.Fatalf("PING after %v: %v", tc.args, err)
		}
	}
	if calls := failCmdCalls(t, direct, "wait"); calls != 0 {
		t.Fatalf("Redis ran WAIT %d times", calls)
	}

	// Once on a dedicated connection (WATCH leaves state), WAIT is the
	// connection's own and goes to Redis.
	conn := c.Conn()
	defer conn.Close()
	if err := conn.Do(ctx, "WATCH", "pinned").Err(); err != nil {
		t.Fatal(err)
	}
	if err := conn.Set(ctx, "w", "1", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if n, err := conn.Do(ctx, "WAIT", "0", "0").Int64(); err != nil || n != 0 {
		t.Fatalf("WAIT on a pinned session = %d, %v; want 0 replicas", n, err)
	}
	if calls := failCmdCalls(t, direct, "wait"); calls != 1 {
		t.Fatalf("Redis ran WAIT %d times, want 1", calls)
	}
}

// TestClientStopsReading: a client that asks for large replies and never
// reads them is disconnected once a write to it has waited
// clientWriteTimeout, and the clients sharing its upstream connection are
// not held up meanwhile.
func TestClientStopsReading(t *testing.T) {
	old := clientWriteTimeout
	clientWriteTimeout = 500 * time.Millisecond
	t.Cleanup(func() { clientWriteTimeout = old })
	e := startPlain(t, func(c *config.Config) { c.Upstream.Pool.MaxSize = 1 })
	ctx := context.Background()
	if err := e.direct(t).Set(ctx, "big", strings.Repeat("x", 4<<20), 0).Err(); err != nil {
		t.Fatal(err)
	}
	stuck := e.rawConn(t)
	stuck.Write([]byte(strings.Repeat(cmd("GET", "big"), 16))) // 64 MiB of replies, never read
	other := e.client(t, 2)
	for i := 0; i < 50; i++ {
		if err := other.Incr(ctx, "n").Err(); err != nil {
			t.Fatalf("INCR %d beside the stuck client: %v", i, err)
		}
	}
	waitFor(t, "the stuck client to be disconnected", func() bool {
		return contains(e.logs.String(), "client stopped reading its replies; closing client")
	})
	if n, err := other.Get(ctx, "n").Int(); err != nil || n != 50 {
		t.Fatalf("n = %d, %v after the stuck client left; want 50", n, err)
	}
}

// proxyConnIDs returns the ids of the connections in Redis's CLIENT LIST
// whose last command was cmd.
func proxyConnIDs(t testing.TB, direct *redis.Client, cmd string) []string {
	t.Helper()
	var ids []string
	for _, line := range strings.Split(direct.ClientList(context.Background()).Val(), "\n") {
		if strings.Contains(line, " cmd="+cmd+" ") {
			ids = append(ids, safetyInfoField(line, "id"))
		}
	}
	return ids
}

// clientListLine is Redis's CLIENT LIST line of connection id, or "".
func clientListLine(t testing.TB, direct *redis.Client, id string) string {
	t.Helper()
	for _, line := range strings.Split(direct.ClientList(context.Background()).Val(), "\n") {
		if safetyInfoField(line, "id") == id {
			return line
		}
	}
	return ""
}
