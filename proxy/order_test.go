package proxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
)

// TestPushBeforeProtocolError: the proxy's own reply to a bad request comes
// after everything Redis sent for the requests before it, pushes included:
// a RESP3 tracking invalidation caused by the client's own SET arrives
// before the protocol error, as it does from Redis directly.
func TestPushBeforeProtocolError(t *testing.T) {
	e := startPlain(t, nil)
	c := e.rawConn(t)
	c.Write([]byte(cmd("HELLO", "3")))
	readUntil(t, c, "modules\r\n*0\r\n")
	roundTrip(t, c, cmd("CLIENT", "TRACKING", "ON"), "+OK\r\n")
	c.Write([]byte(cmd("GET", "k") + cmd("SET", "k", "v") + "*01\r\n"))
	want := "_\r\n+OK\r\n>2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n-ERR Protocol error: invalid multibulk length\r\n"
	if got := failReadToClose(t, c, 10*time.Second); string(got) != want {
		t.Fatalf("got %q\nwant %q (then the close)", got, want)
	}
}

// TestNothingRunsAfterClientReset: a client that resets its connection
// while its pipeline moves to a dedicated connection gets none of the
// commands after the one that could not be written run: what ran in Redis
// is always a prefix of what the client sent (RPUSH, BLPOP, APPEND).
func TestNothingRunsAfterClientReset(t *testing.T) {
	e := startPlain(t, nil)
	ctx := context.Background()
	direct := e.direct(t)
	for i := 0; i < 30; i++ {
		l, s := fmt.Sprintf("rst:l:%d", i), fmt.Sprintf("rst:s:%d", i)
		raw, err := net.Dial("tcp", e.addr)
		if err != nil {
			t.Fatal(err)
		}
		c := tls.Client(raw, e.pki.clientTLS())
		if err := c.Handshake(); err != nil {
			t.Fatal(err)
		}
		c.Write([]byte(cmd("RPUSH", l, "a") + cmd("BLPOP", l, "0.1") + cmd("APPEND", s, "x")))
		raw.(*net.TCPConn).SetLinger(0)
		raw.Close() // a TCP reset
		waitFor(t, "the session to end", func() bool { return strings.Count(e.logs.String(), "session ended") > i })
		list := direct.LRange(ctx, l, 0, -1).Val()
		appended := direct.Exists(ctx, s).Val() == 1
		if appended && len(list) != 0 {
			t.Fatalf("round %d: APPEND ran but BLPOP, sent before it, did not (list %q)", i, list)
		}
	}
}

// TestClientIDInsideMulti: inside MULTI, CLIENT ID is queued like any
// command (Redis answers +QUEUED and runs it at EXEC), not answered at once,
// and it does not abort the transaction.
func TestClientIDInsideMulti(t *testing.T) {
	e := startPlain(t, nil)
	c := e.rawConn(t)
	c.Write([]byte(cmd("MULTI") + cmd("CLIENT", "ID") + cmd("SET", "tx:k", "v") + cmd("EXEC")))
	got := readUntil(t, c, "\r\n+OK\r\n") // the id, then the SET inside EXEC's array
	if !strings.HasPrefix(got, "+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n:") {
		t.Fatalf("MULTI, CLIENT ID, SET, EXEC: %q", got)
	}
}
