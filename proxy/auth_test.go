package proxy

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/tlsproxy/tlsproxy/proxy/config"
)

// TestAuthSharesConnections: clients that AUTH as an ACL user share a few
// connections logged in as that user instead of taking a dedicated one
// each. With every dedicated connection in use, AUTH still works; a wrong
// password leaves the session as it was; HELLO … AUTH … SETNAME logs in,
// names the session and hides the shared connection's id; a transaction
// after AUTH runs as the user.
func TestAuthSharesConnections(t *testing.T) {
	e := startPlain(t, func(c *config.Config) {
		c.Upstream.Pool.MaxPinned = 1
		c.Upstream.DialTimeout = 300 * time.Millisecond
	})
	ctx := context.Background()
	direct := e.direct(t)
	if err := direct.Do(ctx, "ACL", "SETUSER", "alice", "on", ">alice-pw", "~alice:*", "+@all").Err(); err != nil {
		t.Fatal(err)
	}
	// Hold the only dedicated connection.
	holder := e.rawConn(t)
	holder.Write([]byte(cmd("BLPOP", "authq", "0")))
	waitFor(t, "the BLPOP holding the dedicated connection", func() bool {
		return rejInfoInt(t, direct, "clients", "blocked_clients") == 1
	})

	for i := 0; i < 20; i++ {
		c := e.rawConn(t)
		roundTrip(t, c, cmd("AUTH", "alice", "wrong")+cmd("ACL", "WHOAMI"),
			"-WRONGPASS invalid username-password pair or user is disabled.\r\n$7\r\ndefault\r\n")
		key := fmt.Sprintf("alice:%d", i)
		roundTrip(t, c, cmd("AUTH", "alice", "alice-pw")+cmd("ACL", "WHOAMI")+cmd("SET", key, "v")+cmd("SET", "other", "v"),
			"+OK\r\n$5\r\nalice\r\n+OK\r\n-NOPERM this user has no permissions to access one of the keys used as arguments\r\n")
		c.Close()
	}
	// Every AUTH went to Redis, and the sessions shared the connections.
	if n := failCmdCalls(t, direct, "auth"); n < 40 {
		t.Fatalf("Redis ran AUTH %d times, want at least 40 (each client's checked by Redis)", n)
	}
	if n := rejInfoInt(t, direct, "clients", "connected_clients"); n > 8 {
		t.Fatalf("%d connections in Redis after 20 clients authenticated as alice; want a few shared ones", n)
	}

	h := e.rawConn(t)
	h.Write([]byte(cmd("HELLO", "3", "AUTH", "alice", "alice-pw", "SETNAME", "app-1")))
	out := readUntil(t, h, "modules\r\n*0\r\n")
	h.Write([]byte(cmd("CLIENT", "ID")))
	id := strings.TrimSuffix(strings.TrimPrefix(readUntil(t, h, "\r\n"), ":"), "\r\n")
	if n, err := strconv.ParseInt(id, 10, 64); err != nil || n < sessionIDBase {
		t.Fatalf("CLIENT ID = %q; want the session's own id", id)
	}
	if !strings.Contains(out, "$2\r\nid\r\n:"+id+"\r\n") {
		t.Fatalf("HELLO reply does not give the session's id %s: %q", id, out)
	}
	roundTrip(t, h, cmd("ACL", "WHOAMI")+cmd("CLIENT", "GETNAME"), "$5\r\nalice\r\n$5\r\napp-1\r\n")
	h.Write([]byte(cmd("CLIENT", "INFO")))
	info := readUntil(t, h, "\n\r\n")
	if !strings.Contains(info, "id="+id+" ") || !strings.Contains(info, " name=app-1 ") || !strings.Contains(info, " user=alice ") {
		t.Fatalf("CLIENT INFO = %q; want the session's id, name and user", info)
	}

	// Once the holder is gone, a transaction after AUTH runs as alice.
	holder.Close()
	waitFor(t, "the holder's dedicated connection to go", func() bool {
		return rejInfoInt(t, direct, "clients", "blocked_clients") == 0
	})
	tx := e.rawConn(t)
	roundTrip(t, tx, cmd("AUTH", "alice", "alice-pw")+cmd("MULTI")+cmd("ACL", "WHOAMI")+cmd("EXEC"),
		"+OK\r\n+OK\r\n+QUEUED\r\n*1\r\n$5\r\nalice\r\n")
	if strings.Contains(e.logs.String(), "alice-pw") {
		t.Fatal("the password appears in the log")
	}
}

// TestAuthRedisDown: a client whose AUTH cannot be checked is closed; it
// never goes on as the proxy's own user.
func TestAuthRedisDown(t *testing.T) {
	e := startPlain(t, nil)
	c := e.rawConn(t)
	roundTrip(t, c, cmd("PING"), "+PONG\r\n")
	e.redis.Stop()
	c.Write([]byte(cmd("AUTH", "bob", "pw") + cmd("ACL", "WHOAMI")))
	got := failReadToClose(t, c, 10*time.Second)
	if !strings.HasPrefix(string(got), "-ERR upstream unavailable") || strings.Contains(string(got), "default") {
		t.Fatalf("AUTH with Redis down: %q; want an error, then the connection closed", got)
	}
	if _, port, _ := strings.Cut(e.redis.Addr, ":"); strings.Contains(string(got), port) {
		t.Fatalf("the client's error names the upstream address: %q", got)
	}
	if !contains(e.logs.String(), "cannot check the client's AUTH; closing client") {
		t.Fatal("no log line for the closed session")
	}
}

// TestManyLibraryClients: 1,000 go-redis clients configured the way
// applications configure them (a database, a client name, half with an ACL
// user) run a mixed load through the proxy. Their connect-time HELLO,
// AUTH, SELECT, CLIENT SETNAME and CLIENT SETINFO take no dedicated
// connection, so nothing is exhausted, every key lands in database 1, and
// Redis sees a handful of connections, not a thousand.
func TestManyLibraryClients(t *testing.T) {
	if testing.Short() {
		t.Skip("1,000 TLS clients")
	}
	e := startPlain(t, func(c *config.Config) { c.Upstream.Pool.MaxPinned = 16 })
	ctx := context.Background()
	direct := e.direct(t)
	if err := direct.Do(ctx, "ACL", "SETUSER", "app", "on", ">app-pw", "~*", "+@all").Err(); err != nil {
		t.Fatal(err)
	}
	const clients = 1000
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			o := &redis.Options{
				Addr: e.addr, TLSConfig: e.pki.clientTLS(), Protocol: 2 + i%2, DB: 1,
				ClientName: fmt.Sprintf("app-%d", i), PoolSize: 1,
				DialTimeout: 20 * time.Second, ReadTimeout: 20 * time.Second, WriteTimeout: 20 * time.Second,
			}
			if i%2 == 0 {
				o.Username, o.Password = "app", "app-pw"
			}
			c := redis.NewClient(o)
			defer c.Close()
			key := fmt.Sprintf("lib:%d", i)
			if err := c.Set(ctx, key, i, 0).Err(); err != nil {
				errs <- fmt.Errorf("client %d SET: %w", i, err)
				return
			}
			if v, err := c.Get(ctx, key).Int(); err != nil || v != i {
				errs <- fmt.Errorf("client %d GET: %d, %v", i, v, err)
				return
			}
			if i%10 == 0 { // some transactions, which do need a dedicated connection
				_, err := c.TxPipelined(ctx, func(p redis.Pipeliner) error {
					p.Incr(ctx, key)
					return nil
				})
				if err != nil {
					errs <- fmt.Errorf("client %d transaction: %w", i, err)
				}
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	db1 := redis.NewClient(&redis.Options{Addr: e.redis.Addr, DB: 1})
	defer db1.Close()
	if n := db1.DBSize(ctx).Val(); n != clients {
		t.Fatalf("database 1 holds %d keys, want %d", n, clients)
	}
	if n := direct.DBSize(ctx).Val(); n != 0 {
		t.Fatalf("database 0 holds %d keys, want none", n)
	}
	n := rejInfoInt(t, direct, "stats", "total_connections_received")
	t.Logf("%d clients: Redis received %d connections", clients, n)
	if n > 60 {
		t.Fatalf("Redis received %d connections for %d clients; want a few shared ones", n, clients)
	}
}

// TestTrackingRedirectToSession: the RESP2 client-side caching pattern works
// through the proxy with the ids it hands out. One client learns its CLIENT
// ID and subscribes to __redis__:invalidate; another turns tracking on with
// REDIRECT to that id and reads a key; a write to the key reaches the
// first client as an invalidation message. REDIRECT to a shared connection's
// id, or to a client without a connection of its own, is refused.
func TestTrackingRedirectToSession(t *testing.T) {
	e := startPlain(t, nil)
	ctx := context.Background()
	direct := e.direct(t)

	inv := e.rawConn(t)
	inv.Write([]byte(cmd("CLIENT", "ID")))
	id := strings.TrimSuffix(strings.TrimPrefix(readUntil(t, inv, "\r\n"), ":"), "\r\n")
	roundTrip(t, inv, cmd("SUBSCRIBE", "__redis__:invalidate"), "*3\r\n$9\r\nsubscribe\r\n$20\r\n__redis__:invalidate\r\n:1\r\n")

	idle := e.rawConn(t)
	idle.Write([]byte(cmd("CLIENT", "ID")))
	idleID := strings.TrimSuffix(strings.TrimPrefix(readUntil(t, idle, "\r\n"), ":"), "\r\n")

	c := e.rawConn(t)
	roundTrip(t, c, cmd("PING"), "+PONG\r\n") // on a shared connection
	var shared int64
	for _, line := range strings.Split(direct.ClientList(ctx).Val(), "\n") {
		if f := strings.Fields(line); strings.Contains(line, " cmd=ping ") && strings.HasPrefix(f[0], "id=") {
			shared, _ = strconv.ParseInt(strings.TrimPrefix(f[0], "id="), 10, 64)
		}
	}
	if shared == 0 {
		t.Fatal("no shared connection in CLIENT LIST")
	}
	refusal := "-" + errRedirectOther + "\r\n"
	roundTrip(t, c, cmd("CLIENT", "TRACKING", "on", "REDIRECT", strconv.FormatInt(shared, 10)), refusal)
	roundTrip(t, c, cmd("CLIENT", "TRACKING", "on", "REDIRECT", idleID), refusal)
	roundTrip(t, c, cmd("CLIENT", "TRACKING", "on", "REDIRECT", id)+cmd("GET", "cached"), "+OK\r\n$-1\r\n")
	if err := direct.Set(ctx, "cached", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	expectBytes(t, inv, "*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n*1\r\n$6\r\ncached\r\n")
}

// TestAuthGuessesAreBounded: AUTH with credentials Redis refuses for a user
// the proxy has no connections for costs Redis a connection each; a session
// gets maxAuthRefusals of them, and the next one closes it.
func TestAuthGuessesAreBounded(t *testing.T) {
	e := startPlain(t, nil)
	ctx := context.Background()
	direct := e.direct(t)
	if err := direct.Do(ctx, "ACL", "SETUSER", "carol", "on", ">carol-pw", "~*", "+@all").Err(); err != nil {
		t.Fatal(err)
	}
	c := e.rawConn(t)
	const wrong = "-WRONGPASS invalid username-password pair or user is disabled.\r\n"
	for i := 0; i < maxAuthRefusals; i++ {
		roundTrip(t, c, cmd("AUTH", "carol", fmt.Sprintf("guess-%d", i)), wrong)
	}
	c.Write([]byte(cmd("AUTH", "carol", "guess-last") + cmd("PING")))
	if got := failReadToClose(t, c, 10*time.Second); string(got) != wrong {
		t.Fatalf("after %d refused AUTHs: %q; want the refusal, then the connection closed", maxAuthRefusals, got)
	}
	// The right password still works, on a new connection.
	ok := e.rawConn(t)
	roundTrip(t, ok, cmd("AUTH", "carol", "carol-pw")+cmd("ACL", "WHOAMI"), "+OK\r\n$5\r\ncarol\r\n")
	if !contains(e.logs.String(), "too many refused AUTH attempts; closing client") {
		t.Fatal("no log line for the closed session")
	}
}

// TestWithRedirect: only the REDIRECT value Redis uses (the last) is
// rewritten; a PREFIX value spelled "redirect" is not an option.
func TestWithRedirect(t *testing.T) {
	args := func(s string) [][]byte {
		var out [][]byte
		for _, f := range strings.Fields(s) {
			out = append(out, []byte(f))
		}
		return out
	}
	for in, want := range map[string]string{
		"CLIENT TRACKING on REDIRECT 5":                    "CLIENT TRACKING on REDIRECT 99",
		"CLIENT TRACKING on REDIRECT abc REDIRECT 5 BCAST": "CLIENT TRACKING on REDIRECT abc REDIRECT 99 BCAST",
		"CLIENT TRACKING on PREFIX redirect REDIRECT 5":    "CLIENT TRACKING on PREFIX redirect REDIRECT 99",
		"CLIENT TRACKING on BCAST PREFIX a PREFIX b":       "CLIENT TRACKING on BCAST PREFIX a PREFIX b",
	} {
		if got, w := withRedirect(args(in), 99), encode(args(want)...); string(got) != string(w) {
			t.Errorf("withRedirect(%s) = %q, want %q", in, got, w)
		}
	}
}
