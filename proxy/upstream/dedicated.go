package upstream

import (
	"context"
	"net"
	"sync"
	"time"

	"github.com/tidwall/redcon"
)

// Effect is what a command sent on a dedicated connection may do to the
// connection's state. The state changes only when Redis's reply confirms it:
// a MULTI answered with an error did not start a transaction, a DISCARD
// answered "without MULTI" ended nothing.
type Effect uint8

const (
	// EffectNone: one reply, nothing to track.
	EffectNone Effect = iota
	// EffectMulti: a transaction starts when Redis says +OK.
	EffectMulti
	// EffectExec and EffectDiscard end the transaction and every WATCH,
	// unless Redis refused them (EXECABORT ends them too).
	EffectExec
	EffectDiscard
	// EffectWatch and EffectUnwatch start and end watching keys.
	EffectWatch
	EffectUnwatch
	// EffectSelect: the connection is now in database arg.
	EffectSelect
	// EffectHello: the connection now speaks protocol arg (0: unchanged).
	EffectHello
	// EffectSetName: the connection has a name (RESET clears it).
	EffectSetName
	// EffectSticky: state the proxy does not track (CLIENT NO-EVICT, DEBUG,
	// an unknown command, ...): the connection is closed, never reused.
	EffectSticky
	// EffectUnknown: a command the proxy's table does not know. Redis
	// refusing it (an unknown command or subcommand, wrong arguments) changes
	// nothing; anything else may have changed state the proxy does not
	// track, as for EffectSticky.
	EffectUnknown
	// EffectUncounted: from here on Redis may send data that is not a
	// reply to anything (RESP2 subscriptions, MONITOR, CLIENT REPLY OFF), so
	// replies can no longer be counted. The connection is never reused.
	EffectUncounted
	// EffectReplyOff, EffectReplySkip and EffectReplyOn are CLIENT REPLY
	// OFF, SKIP and ON: Redis stops answering (OFF), skips the next reply
	// (SKIP), or answers again. OFF and SKIP leave replies uncounted, and a
	// reply the proxy makes while Redis would answer nothing is dropped.
	EffectReplyOff
	EffectReplySkip
	EffectReplyOn
	// EffectReset: RESET returns the connection to a new connection's state
	// (RESP2, database 0, the default user), which the pool then sets up
	// again before anyone else uses it.
	EffectReset
	// EffectAbortExec: the command is a DISCARD sent in place of a client's
	// EXEC after the proxy refused a command inside the transaction. The
	// client gets EXECABORT, as Redis answers when it rejected a command
	// while queuing.
	EffectAbortExec
	// EffectReplicate: SYNC or PSYNC. An error reply is a reply like any
	// other; anything else starts a replication stream (State.Streaming),
	// which the reader forwards as bytes from then on.
	EffectReplicate
)

// State is what the proxy knows of a dedicated connection, learned from
// Redis's replies.
type State struct {
	Proto, DB  int
	Multi      bool // inside MULTI
	Watching   bool // WATCH is active
	Named      bool
	Sticky     bool // state the proxy does not track
	Uncounted  bool // replies can no longer be counted
	NeedsSetUp bool // a RESET logged the connection out
	Streaming  bool // Redis accepted SYNC/PSYNC: bytes, not replies, from here on
}

// Clean reports whether the connection holds nothing of its client's: it can
// serve another session as it is (after SELECT when the database differs).
func (s State) Clean() bool {
	return s.Releasable() && !s.Named && !s.NeedsSetUp
}

// Releasable reports whether the session can leave the connection without
// losing anything it asked Redis for: no transaction, no WATCH, nothing the
// proxy does not track, replies still countable. (A name is the session's
// own, kept by the proxy; RESET clears it from the connection.)
func (s State) Releasable() bool {
	return !s.Multi && !s.Watching && !s.Sticky && !s.Uncounted && !s.Streaming
}

type expect struct {
	effect Effect
	tag    uint16 // the command's (Dedicated.Tag)
	arg    int
	hide   bool   // the reply is the proxy's own: not forwarded
	local  []byte // a reply the proxy makes: written when it reaches the head
	fence  bool   // the reply to the session's fence PING: swallowed
}

// Dedicated is a connection to Redis leased to one client session. It owns
// the connection's state, the replies owed on it and its release; while the
// session holds it, its reader goroutine is the only writer to the client,
// so every reply, pushed frame and proxy-made reply reaches the client in
// the order the client's commands were sent.
type Dedicated struct {
	pool *Pool
	c    *Conn
	// The connection's names in Redis, fixed for the lease: other sessions
	// read them (CLIENT KILL, UNBLOCK, TRACKING REDIRECT), and the pool
	// changes c's after the release.
	id              int64
	addr, redisAddr string
	// toClient writes to the client. It is called with mu held.
	toClient func([]byte) error
	// onFail is called from the reader when the connection fails.
	onFail func(error)
	fence  []byte // the session's fence PING command
	fenceR [2][]byte

	wbuf writeBuf
	// Tag is given to the commands Send queues from now on (see Hooks);
	// only the session's goroutine uses it.
	Tag uint16
	// What Redis will do with the next reply, as of the commands sent so
	// far (CLIENT REPLY); only the session's goroutine uses these.
	repliesOff bool
	skipNext   bool

	mu       sync.Mutex
	queue    []expect
	state    State
	head     [16]byte // the first bytes of the reply being read
	headN    int
	quiet    chan struct{} // signalled when the queue empties
	exited   chan struct{}
	err      error // why the reader stopped
	stopping bool
	quitting bool
	released bool // Release has begun: the connection is no longer the session's
	killed   bool // closed by Kill

	// hold keeps Release waiting while another session acts on the
	// connection through Redis (CLIENT UNBLOCK names it by its id).
	hold sync.RWMutex
}

// Dedicate leases a dedicated connection for a session speaking proto in
// database db. token makes the session's fence unforgeable.
func (p *Pool) Dedicate(ctx context.Context, proto, db int, token string, toClient func([]byte) error, onFail func(error)) (*Dedicated, error) {
	c, err := p.lease(ctx, proto, db)
	if err != nil {
		return nil, err
	}
	d := &Dedicated{
		pool:      p,
		c:         c,
		id:        c.id,
		addr:      tcpAddr(c.raw.LocalAddr()),
		redisAddr: tcpAddr(c.raw.RemoteAddr()),
		toClient:  toClient,
		onFail:    onFail,
		state:     State{Proto: proto, DB: db},
		quiet:     make(chan struct{}, 1),
		exited:    make(chan struct{}),
	}
	d.fence = redcon.AppendBulkString(redcon.AppendBulkString(redcon.AppendArray(nil, 2), "PING"), token)
	// PING's reply: a bulk string, or in a RESP2 subscribed context an array.
	d.fenceR[0] = redcon.AppendBulkString(nil, token)
	d.fenceR[1] = redcon.AppendBulkString(redcon.AppendBulkString(redcon.AppendArray(nil, 2), "pong"), token)
	go d.readLoop()
	return d, nil
}

// ID is Redis's CLIENT ID of the connection.
func (d *Dedicated) ID() int64 { return d.id }

// Addr is the connection's address as Redis's CLIENT LIST shows it (addr=),
// or "" for a unix socket, where Redis shows every client alike.
func (d *Dedicated) Addr() string { return d.addr }

// RedisAddr is Redis's end of the connection (CLIENT LIST's laddr=), or ""
// for a unix socket.
func (d *Dedicated) RedisAddr() string { return d.redisAddr }

func tcpAddr(a net.Addr) string {
	if _, ok := a.(*net.TCPAddr); !ok {
		return ""
	}
	return a.String()
}

// Hold keeps the connection the session's until Unhold: Release waits. It
// reports false, holding nothing, once Release has begun.
func (d *Dedicated) Hold() bool {
	d.hold.RLock()
	d.mu.Lock()
	released := d.released
	d.mu.Unlock()
	if released {
		d.hold.RUnlock()
		return false
	}
	return true
}

// Unhold ends a Hold.
func (d *Dedicated) Unhold() { d.hold.RUnlock() }

// Kill closes the connection unless it has been released, and reports
// whether it did. Redis then frees the client (ending a blocked command,
// subscriptions, a replication stream); the connection never goes back to
// the pool, so its id names no one else's connection afterwards, and onFail
// is not called: the killer ends the session.
func (d *Dedicated) Kill() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.released {
		return false
	}
	d.killed = true
	d.c.Close()
	return true
}

// WriteStream writes bytes of a replication stream to Redis (State.Streaming).
func (d *Dedicated) WriteStream(p []byte) error {
	d.c.nc.SetWriteDeadline(time.Now().Add(d.c.opts.WriteTimeout))
	_, err := d.c.nc.Write(p)
	return err
}

// Send queues a command for the next Flush and records the reply it is owed.
// Once replies are uncounted, nothing is recorded.
func (d *Dedicated) Send(cmd []byte, e Effect, arg int) {
	d.wbuf.add(cmd)
	d.skipNext = false
	switch e {
	case EffectReplyOff:
		d.repliesOff, e = true, EffectUncounted
	case EffectReplySkip:
		d.skipNext, e = !d.repliesOff, EffectUncounted
	case EffectReplyOn, EffectReset:
		d.repliesOff = false
	}
	if e == EffectReplyOn {
		e = EffectNone
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if e == EffectUncounted {
		d.queue = append(d.queue, expect{effect: e})
		return
	}
	if d.uncountedLocked() {
		if e == EffectSticky {
			d.state.Sticky = true
		}
		return
	}
	d.queue = append(d.queue, expect{effect: e, arg: arg, tag: d.Tag})
}

// SendHidden queues a command of the proxy's own, whose reply the client
// does not see (the session's CLIENT SETNAME on a new dedicated connection).
func (d *Dedicated) SendHidden(cmd []byte, e Effect) {
	d.wbuf.add(cmd)
	d.mu.Lock()
	defer d.mu.Unlock()
	d.queue = append(d.queue, expect{effect: e, hide: true})
}

// Quit queues QUIT: Redis answers and closes the connection, and the reader
// ends without calling onFail when it does.
func (d *Dedicated) Quit(cmd []byte) {
	d.Send(cmd, EffectNone, 0)
	d.mu.Lock()
	d.quitting = true
	d.mu.Unlock()
}

// uncountedLocked reports whether a command sent now gets no recorded reply:
// replies became uncountable, or will once the queue reaches that point.
func (d *Dedicated) uncountedLocked() bool {
	if d.state.Uncounted {
		return true
	}
	for _, e := range d.queue {
		if e.effect == EffectUncounted {
			return true
		}
	}
	return false
}

// Reply writes a reply the proxy makes itself after everything Redis sends
// in answer to the commands before it, pushes included (a tracking
// invalidation comes after the reply to the write that caused it). A fence
// PING marks the place: Redis answers it after all that, its answer is
// swallowed and the proxy's reply written in its stead. Inside MULTI, where
// a PING would join the transaction, the place is counted instead.
func (d *Dedicated) Reply(b []byte, inMulti bool) error {
	if d.repliesOff || d.skipNext {
		d.skipNext = false
		return nil // Redis would answer nothing here
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	uncounted := d.uncountedLocked()
	switch {
	case inMulti && !uncounted && len(d.queue) == 0:
		return d.toClient(b)
	case inMulti && !uncounted:
	default:
		d.fenceLocked(uncounted)
	}
	d.queue = append(d.queue, expect{local: append([]byte(nil), b...)})
	return nil
}

// Sync makes the queue wait for the replies to every command sent so far,
// even uncounted ones, so that Idle means they have all been written to the
// client.
func (d *Dedicated) Sync() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.uncountedLocked() && !d.repliesOff && !d.skipNext {
		d.fenceLocked(true)
	}
}

// fenceLocked queues the session's fence PING. Where replies are uncounted
// its answer is recognised by its bytes; otherwise it is the next reply,
// and swallowed.
func (d *Dedicated) fenceLocked(uncounted bool) {
	d.wbuf.add(d.fence)
	d.queue = append(d.queue, expect{fence: uncounted, hide: !uncounted})
}

// Flush writes the queued commands.
func (d *Dedicated) Flush() error {
	if d.wbuf.empty() {
		return nil
	}
	d.c.nc.SetWriteDeadline(time.Now().Add(d.c.opts.WriteTimeout))
	err := d.wbuf.writeTo(d.c.nc)
	if err != nil {
		d.c.Close()
	}
	return err
}

// Idle reports whether every reply owed has been written to the client.
func (d *Dedicated) Idle() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.queue) == 0
}

// Quiet is signalled when the queue of owed replies empties.
func (d *Dedicated) Quiet() <-chan struct{} { return d.quiet }

// Exited is closed when the reader has stopped.
func (d *Dedicated) Exited() <-chan struct{} { return d.exited }

// State returns what the proxy knows of the connection.
func (d *Dedicated) State() State {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.state
}

// Release stops the reader and gives the connection back: to the pool as it
// is when it holds nothing of the client's, after RESET and the set-up when
// it holds state RESET clears, and closed otherwise (replies owed, replies
// uncountable, state the proxy does not track, or a failure).
func (d *Dedicated) Release() {
	d.hold.Lock()
	d.mu.Lock()
	d.released = true
	d.hold.Unlock()
	d.stopping = true
	owed := len(d.queue) > 0
	d.mu.Unlock()
	if owed {
		d.c.Close() // Redis unblocks a blocked command of a closed client
	}
	d.c.nc.SetReadDeadline(time.Now()) // wake the reader
	<-d.exited
	d.c.nc.SetReadDeadline(time.Time{})
	st := d.state
	mode := Clean
	switch {
	case owed || d.err != nil || d.killed || st.Sticky || st.Uncounted || st.Streaming || d.c.scan.InReply() || d.c.r != d.c.w:
		mode = Broken
	case !st.Clean():
		mode = Dirty
	}
	d.c.proto, d.c.db = st.Proto, st.DB
	if st.NeedsSetUp {
		d.c.db = d.pool.opts.DB
	}
	d.pool.release(d.c, mode)
}
