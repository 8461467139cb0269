package upstream

import (
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tidwall/redcon"
)

// TestSharedDropsPush: a push frame on a shared connection (here a tracking
// invalidation, after a client turned tracking on through it) is dropped:
// the batch gets only its replies, and the drop is logged, sparingly.
func TestSharedDropsPush(t *testing.T) {
	_, p, logs := setup(t, Limits{MaxShared: 1, MaxPinned: 1})
	do := func(args ...[]string) string {
		t.Helper()
		b := &Batch{}
		for _, a := range args {
			b.Cmds = append(b.Cmds, cmd(a...))
		}
		p.Do(3, 0, b)
		if b.Lost {
			t.Fatalf("batch lost: %q", b.Out)
		}
		return string(b.Out)
	}
	if r := do([]string{"CLIENT", "TRACKING", "ON"}); r != "+OK\r\n" {
		t.Fatalf("CLIENT TRACKING ON: %q", r)
	}
	const msg = "push frame on a shared upstream connection dropped"
	for i := 1; i <= 4; i++ {
		// SET invalidates the key GET tracked, for this very connection.
		r := do([]string{"GET", "k"}, []string{"SET", "k", "v"}, []string{"PING"})
		if want := []string{"_\r\n", "$1\r\nv\r\n"}[min(i-1, 1)] + "+OK\r\n+PONG\r\n"; r != want {
			t.Fatalf("GET SET PING #%d: %q, want %q", i, r, want)
		}
		if i == 1 {
			if e := logs.entries(t, msg); len(e) != 1 || e[0]["level"] != "warn" || e[0]["dropped"] != 1.0 {
				t.Errorf("after one push: %v, want one warning", e)
			}
		}
	}
	var dropped []any
	for _, e := range logs.entries(t, msg) {
		dropped = append(dropped, e["dropped"])
	}
	if len(dropped) != 3 || dropped[0] != 1.0 || dropped[1] != 2.0 || dropped[2] != 4.0 {
		t.Errorf("after four pushes, warnings with dropped=%v, want 1, 2, 4", dropped)
	}
	if m := sharedMux(p, 3, 0, 0); m == nil || !m.alive() {
		t.Error("shared connection failed")
	}
}

// fakeRedis serves RESP on a loopback port with handler, accepting only the
// first connection: a dial after that fails.
func fakeRedis(t *testing.T, handler func(redcon.Conn, redcon.Command)) Options {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var accepted atomic.Int32
	go redcon.Serve(ln, handler, func(redcon.Conn) bool { return accepted.Add(1) == 1 }, nil)
	t.Cleanup(func() { ln.Close() })
	return Options{Network: "tcp", Address: ln.Addr().String(),
		DialTimeout: 2 * time.Second, ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second}
}

// TestSharedConnectionDies: when a shared connection dies, a batch whose
// commands were written is Lost, with the replies that did come and no
// invented error for the others (their outcome is unknown); a batch not yet
// written gets "upstream unavailable".
func TestSharedConnectionDies(t *testing.T) {
	arrived, die := make(chan struct{}), make(chan struct{})
	o := fakeRedis(t, func(c redcon.Conn, cmd redcon.Command) {
		switch strings.ToUpper(string(cmd.Args[0])) {
		case "CLIENT": // CLIENT ID, at set-up
			c.WriteInt(7)
		case "PING":
			c.WriteString("PONG")
		case "DIE":
			close(arrived)
			<-die
			c.Close()
		default:
			c.WriteError("ERR unknown command")
		}
	})
	p, logs := newPool(t, o, Limits{MaxShared: 1, MaxPinned: 1})
	in := &Batch{Cmds: [][]byte{cmd("PING"), cmd("DIE"), cmd("PING")}}
	inDone := make(chan struct{})
	go func() { p.Do(2, 0, in); close(inDone) }()
	<-arrived

	// Two more batches: the writer holds one until the replies in flight
	// are read, the other waits in the queue. (One that came too late for
	// the dying connection would dial, be refused, and get the same answer.)
	m := sharedMux(p, 2, 0, 0)
	queued := []*Batch{{Cmds: [][]byte{cmd("PING")}}, {Cmds: [][]byte{cmd("PING"), cmd("PING")}}}
	queuedDone := make(chan struct{}, len(queued))
	for _, b := range queued {
		go func() { p.Do(2, 0, b); queuedDone <- struct{}{} }()
	}
	waitFor(t, 3*time.Second, "a batch waiting in the queue", func() bool { return len(m.queue) == 1 })
	close(die)
	<-inDone
	for range queued {
		<-queuedDone
	}

	if string(in.Out) != "+PONG\r\n" || !in.Lost {
		t.Errorf("batch in flight: Out %q, Lost %t; want the one reply that came and Lost", in.Out, in.Lost)
	}
	for i, b := range queued {
		lines := strings.SplitAfter(string(b.Out), "\r\n")
		if b.Lost || len(lines) != len(b.Cmds)+1 {
			t.Errorf("batch %d not written: Out %q, Lost %t; want an error per command", i, b.Out, b.Lost)
			continue
		}
		for _, l := range lines[:len(b.Cmds)] {
			if !strings.HasPrefix(l, "-ERR upstream unavailable: ") {
				t.Errorf("batch %d not written: Out %q; want upstream unavailable", i, b.Out)
			}
		}
	}
	if e := logs.entries(t, "shared upstream connection failed; clients with commands in flight are disconnected"); len(e) != 1 {
		t.Errorf("%d warnings about the failed connection, want 1", len(e))
	}
}

// TestSharedStream: a batch with Stream set hands large replies over in
// pieces of at least streamChunk bytes as they arrive; the pieces then Out
// are the replies, whole and in order.
func TestSharedStream(t *testing.T) {
	_, p, _ := setup(t, Limits{MaxShared: 1, MaxPinned: 1})
	big := strings.Repeat("x", 1<<20)
	b := &Batch{Cmds: [][]byte{cmd("SET", "big", big)}}
	if p.Do(2, 0, b); string(b.Out) != "+OK\r\n" {
		t.Fatalf("SET: %q", b.Out)
	}
	var streamed []byte
	var pieces []int
	b = &Batch{Cmds: [][]byte{cmd("GET", "big"), cmd("PING")}, Stream: func(p []byte) {
		streamed = append(streamed, p...)
		pieces = append(pieces, len(p))
	}}
	p.Do(2, 0, b)
	if got, want := string(streamed)+string(b.Out), "$1048576\r\n"+big+"\r\n+PONG\r\n"; got != want || b.Lost {
		t.Errorf("streamed %d bytes then Out %d bytes (lost %t), want the %d bytes of GET and PING", len(streamed), len(b.Out), b.Lost, len(want))
	}
	if len(pieces) == 0 {
		t.Error("nothing streamed of a 1 MiB reply")
	}
	for _, n := range pieces {
		if n < streamChunk {
			t.Errorf("pieces %v: one smaller than %d", pieces, streamChunk)
		}
	}
}
