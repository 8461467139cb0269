package proxy

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/tlsproxy/tlsproxy/internal/testredis"
	"github.com/tlsproxy/tlsproxy/proxy/config"
)

// TestUpstreams runs the same commands through the proxy to each kind of
// upstream: plain TCP, a unix socket, and Redis's own TLS, with AUTH and a
// non-default database on the way.
func TestUpstreams(t *testing.T) {
	p := newPKI(t)
	cases := []struct {
		name    string
		start   func(t *testing.T) (url string, rs *testredis.Server)
		edit    func(*config.Config)
		wantLog string
	}{
		{
			name: "tcp",
			start: func(t *testing.T) (string, *testredis.Server) {
				rs := testredis.Start(t, testredis.Options{})
				return "redis://" + rs.Addr, rs
			},
			wantLog: "WARNING: Redis connection is not encrypted",
		},
		{
			name: "tcp-auth-db",
			start: func(t *testing.T) (string, *testredis.Server) {
				rs := testredis.Start(t, testredis.Options{Password: "s3cret"})
				return "redis://:s3cret@" + rs.Addr + "/3", rs
			},
			wantLog: "WARNING: Redis connection is not encrypted",
		},
		{
			name: "unix",
			start: func(t *testing.T) (string, *testredis.Server) {
				rs := testredis.Start(t, testredis.Options{NoTCP: true})
				return "unix://" + rs.Socket + "?db=2", rs
			},
			wantLog: "WARNING: Redis connection is not encrypted",
		},
		{
			name: "tls",
			start: func(t *testing.T) (string, *testredis.Server) {
				rs := testredis.Start(t, testredis.Options{TLS: &testredis.TLS{
					CertFile: p.redisCert, KeyFile: p.redisKey, CAFile: p.caFile, AuthClients: true,
				}})
				return "rediss://" + rs.Addr, rs
			},
			edit: func(c *config.Config) {
				c.Upstream.TLS.CAFile = p.caFile
				c.Upstream.TLS.CertFile = p.clientCertFile
				c.Upstream.TLS.KeyFile = p.clientKeyFile
			},
			wantLog: "Connected to Redis (TLS enabled)",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			u, _ := tc.start(t)
			e := startProxy(t, p, u, tc.edit)
			ctx := context.Background()
			for _, proto := range []int{2, 3} {
				c := e.client(t, proto)
				if err := c.Ping(ctx).Err(); err != nil {
					t.Fatalf("RESP%d PING: %v", proto, err)
				}
				key := fmt.Sprintf("k%d", proto)
				if err := c.Set(ctx, key, "v", 0).Err(); err != nil {
					t.Fatal(err)
				}
				if got, err := c.Get(ctx, key).Result(); err != nil || got != "v" {
					t.Fatalf("GET = %q, %v", got, err)
				}
				if err := c.HSet(ctx, "h", "f", "1").Err(); err != nil {
					t.Fatal(err)
				}
				if got, err := c.HGetAll(ctx, "h").Result(); err != nil || got["f"] != "1" {
					t.Fatalf("HGETALL = %v, %v", got, err)
				}
			}
			waitFor(t, "encryption log line", func() bool { return strings.Contains(e.logs.String(), tc.wantLog) })
			if strings.Contains(e.logs.String(), "s3cret") {
				t.Fatal("the upstream password appears in the log")
			}
		})
	}
}

// TestPipelineOrder sends a deep pipeline mixing reads and writes and checks
// every reply is in place.
func TestPipelineOrder(t *testing.T) {
	e := startPlain(t, nil)
	c := e.client(t, 2)
	ctx := context.Background()
	const n = 5000
	pipe := c.Pipeline()
	incr := make([]*redis.IntCmd, n)
	echo := make([]*redis.StringCmd, n)
	for i := 0; i < n; i++ {
		incr[i] = pipe.Incr(ctx, "counter")
		echo[i] = pipe.Echo(ctx, fmt.Sprint(i))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		if incr[i].Val() != int64(i+1) || echo[i].Val() != fmt.Sprint(i) {
			t.Fatalf("reply %d: INCR=%d ECHO=%q", i, incr[i].Val(), echo[i].Val())
		}
	}
}

// TestInline checks inline (telnet-style) commands.
func TestInline(t *testing.T) {
	e := startPlain(t, nil)
	c := e.rawConn(t)
	roundTrip(t, c, "PING\r\n", "+PONG\r\n")
	roundTrip(t, c, "SET greeting \"hello world\"\r\nGET greeting\r\n", "+OK\r\n$11\r\nhello world\r\n")
}

// TestLargeValue sends a 64 MiB value through the proxy and back.
func TestLargeValue(t *testing.T) {
	e := startPlain(t, nil)
	c := e.client(t, 2, func(o *redis.Options) { o.ReadTimeout = time.Minute; o.WriteTimeout = time.Minute })
	ctx := context.Background()
	val := make([]byte, 64<<20)
	for i := range val {
		val[i] = byte(i*7 + i>>13)
	}
	if err := c.Set(ctx, "big", val, 0).Err(); err != nil {
		t.Fatal(err)
	}
	got, err := c.Get(ctx, "big").Bytes()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(val) || string(got) != string(val) {
		t.Fatalf("value changed in transit: %d bytes back", len(got))
	}
	if n, err := e.direct(t).StrLen(ctx, "big").Result(); err != nil || n != int64(len(val)) {
		t.Fatalf("STRLEN in Redis = %d, %v", n, err)
	}
}

// TestSplitCommands sends commands cut at awkward places, with pauses, so
// that bursts end in the middle of a command: nothing may be lost when the
// session lets go of its parser between bursts.
func TestSplitCommands(t *testing.T) {
	e := startPlain(t, nil)
	c := e.rawConn(t)
	parts := []string{"*3\r\n$3\r\nSET\r\n$1\r\nk", "\r\n$5\r\nhel", "lo\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$4\r\nPI", "NG\r\n"}
	for _, p := range parts {
		if _, err := c.Write([]byte(p)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	expectBytes(t, c, "+OK\r\n$5\r\nhello\r\n+PONG\r\n")
	// Inline and RESP on one connection, each cut in two.
	for _, p := range []string{"GET ", "k\r\n*1\r\n$4\r\nPI", "NG\r\n"} {
		c.Write([]byte(p))
		time.Sleep(20 * time.Millisecond)
	}
	expectBytes(t, c, "$5\r\nhello\r\n+PONG\r\n")
}

// TestBurstIsOneUpstreamWrite checks the batching promise: a burst of
// pipelined commands reaches Redis in one write (Redis counts one read for
// it) and comes back to the client complete.
func TestBurstIsOneUpstreamWrite(t *testing.T) {
	e := startPlain(t, func(c *config.Config) { c.Upstream.Pool.MaxSize = 1 })
	ctx := context.Background()
	direct := e.direct(t)
	reads := func() int {
		info := direct.Info(ctx, "stats").Val()
		for _, line := range strings.Split(info, "\r\n") {
			if v, ok := strings.CutPrefix(line, "total_reads_processed:"); ok {
				n, _ := strconv.Atoi(v)
				return n
			}
		}
		t.Fatal("no total_reads_processed in INFO stats")
		return 0
	}
	c := e.rawConn(t)
	roundTrip(t, c, cmd("PING"), "+PONG\r\n") // the shared connection exists
	const n = 200
	before := reads()
	var want strings.Builder
	var burst strings.Builder
	for i := 1; i <= n; i++ {
		burst.WriteString(cmd("INCR", "burst"))
		fmt.Fprintf(&want, ":%d\r\n", i)
	}
	roundTrip(t, c, burst.String(), want.String())
	// One read for the burst and one for the INFO call itself; a little
	// slack for a TCP segment split. Unbatched it would be 200.
	if got := reads() - before; got > 4 {
		t.Fatalf("Redis processed %d reads for a burst of %d commands; want it in one write", got, n)
	}
}
