package upstream

import (
	"errors"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
)

// Batch is a run of commands from one client that travel together on a
// shared connection. When Do returns, Out holds the replies, in order: the
// bytes Redis sent, then, if the connection failed, an
// "-ERR upstream unavailable" line for each command that was never written.
// Lost reports that the connection failed after writing commands whose
// replies never came: their outcome is unknown, so the client must be
// disconnected (as a dead Redis would) rather than told they failed, which
// would invite a retry that applies them twice.
type Batch struct {
	Cmds [][]byte // raw RESP commands, forwarded as they are
	Tags []uint16 // when as long as Cmds, the commands' tags (see Hooks)
	Out  []byte   // replies are appended here
	Lost bool     // some commands were written and got no reply
	// Stream, when set, receives the replies (Out included) in pieces as
	// they arrive once they amount to streamChunk bytes, so that large
	// replies flow to the client instead of piling up; Out then holds only
	// the rest. It runs on the goroutine that called Do.
	Stream func([]byte)
	// Limit bounds the reply bytes held for Stream (0: none). Past it,
	// Overflow is called once, from the connection's reader, and the rest
	// of the batch's replies are dropped: the client is to be disconnected.
	Limit    int
	Overflow func()

	ready    chan struct{} // signalled when pieces holds something
	mu       sync.Mutex
	pieces   [][]byte // replies passed to the waiting goroutine, not yet streamed
	held     int      // bytes in pieces and in the piece being streamed
	overflow bool
	owed     int // replies still owed
	done     chan struct{}
	mux      *mux
}

// drainChunks hands Stream the pieces the reader passed, in order.
func (b *Batch) drainChunks() {
	b.mu.Lock()
	pieces := b.pieces
	b.pieces = nil
	b.mu.Unlock()
	for i, c := range pieces {
		b.Stream(c)
		pieces[i] = nil
		b.mu.Lock()
		b.held -= len(c)
		b.mu.Unlock()
	}
}

// passChunk hands Out to the waiting goroutine once it holds streamChunk
// bytes. The reader never waits for that goroutine: pieces it has not
// written yet queue up, each a fixed-size buffer, so the memory held for a
// slow client is the reply bytes in flight and no more.
func (b *Batch) passChunk() {
	if b.ready == nil || len(b.Out) < streamChunk {
		return
	}
	b.mu.Lock()
	if b.overflow {
		b.mu.Unlock()
		b.Out = b.Out[:0] // the client is being disconnected
		return
	}
	b.held += len(b.Out)
	if b.Limit > 0 && b.held > b.Limit {
		b.overflow, b.pieces, b.held = true, nil, 0
		b.mu.Unlock()
		b.Out = b.Out[:0]
		b.Overflow()
		return
	}
	b.pieces = append(b.pieces, b.Out)
	b.mu.Unlock()
	b.Out = make([]byte, 0, streamChunk+readBufferSize)
	select {
	case b.ready <- struct{}{}:
	default:
	}
}

// lose marks the batch's remaining replies as lost.
func (b *Batch) lose() {
	if b.owed > 0 {
		b.Lost = true
		b.owed = 0
	}
}

// streamChunk is the amount of reply bytes a batch hands to Stream at once.
const streamChunk = 256 << 10

// wait blocks until the batch is complete, streaming replies meanwhile.
func (b *Batch) wait() {
	defer b.drainChunks()
	for {
		select {
		case <-b.done:
			return
		case <-b.ready:
			b.drainChunks()
			continue
		case <-b.mux.exited:
		}
		break
	}
	// The connection died. Its reader and writer have exited, so whoever held
	// the batch has either completed it or let go of it.
	select {
	case <-b.done:
	default:
		b.fail(b.mux.err)
	}
}

// fail answers every reply still owed with an error.
func (b *Batch) fail(err error) {
	for ; b.owed > 0; b.owed-- {
		b.Out = AppendUnavailable(b.Out, err)
	}
}

// AppendUnavailable appends the error a client sees when Redis cannot be
// reached. It says why without naming the upstream address: a network error
// is reduced to its cause ("connect: connection refused"); the log has the
// whole error.
func AppendUnavailable(dst []byte, err error) []byte {
	msg := "unknown error"
	var oe *net.OpError
	switch {
	case errors.As(err, &oe) && oe.Err != nil:
		msg = oe.Op + ": " + oe.Err.Error()
		var se *os.SyscallError
		if errors.As(oe.Err, &se) {
			msg = oe.Op + ": " + se.Err.Error()
		}
	case err != nil:
		msg = err.Error()
	}
	dst = append(dst, "-ERR upstream unavailable: "...)
	for i := 0; i < len(msg); i++ {
		if c := msg[i]; c != '\r' && c != '\n' {
			dst = append(dst, c)
		}
	}
	return append(dst, '\r', '\n')
}

// mux is a shared upstream connection: batches from many clients are written
// by one writer goroutine and their replies read, in the same order, by one
// reader goroutine.
//
// The writer takes every batch queued, yields once so that batches from other
// clients can join, then makes a single write. At one command per round trip
// this cross-client batching is what keeps the proxy cheap: it cuts both the
// proxy's write calls and Redis's per-read overhead (see DESIGN.md).
type mux struct {
	c        *Conn
	log      zerolog.Logger
	queue    chan *Batch // submitted, not yet written
	inflight chan *Batch // written, replies not yet read

	pending      atomic.Int64  // batches written whose replies are not all read
	drained      chan struct{} // signalled when pending drops to 0
	lastActivity atomic.Int64  // unix nanos of the last write or read progress

	pushes atomic.Int64 // push frames dropped

	failOnce sync.Once
	err      error         // why the connection died; set before dead closes
	dead     chan struct{} // closed when the connection fails
	exited   chan struct{} // closed when reader and writer have both returned
	errs     []int         // error replies found by the scanner (with Hooks.ReplyError)
}

// queueLen bounds batches waiting for the writer and batches in flight. Each
// client has at most one batch on a shared connection at a time, so this only
// applies backpressure beyond that many concurrent clients.
const queueLen = 4096

func newMux(c *Conn, log zerolog.Logger) *mux {
	m := &mux{
		c:        c,
		log:      log.With().Int64("upstream_id", c.id).Int("proto", c.proto).Int("db", c.db).Logger(),
		queue:    make(chan *Batch, queueLen),
		inflight: make(chan *Batch, queueLen),
		drained:  make(chan struct{}, 1),
		dead:     make(chan struct{}),
		exited:   make(chan struct{}),
	}
	if h := c.opts.Hooks; h != nil && h.ReplyError != nil {
		c.scan.Errors = &m.errs
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); m.writeLoop() }()
	go func() { defer wg.Done(); m.readLoop() }()
	go func() { wg.Wait(); close(m.exited) }()
	return m
}

// do sends the batch and waits for its replies.
func (m *mux) do(b *Batch) {
	if b.done == nil {
		b.done = make(chan struct{}, 1)
		if b.Stream != nil {
			b.ready = make(chan struct{}, 1)
		}
	}
	b.owed = len(b.Cmds)
	b.Lost = false
	b.overflow, b.held = false, 0
	b.mux = m
	select {
	case m.queue <- b:
	case <-m.dead:
	}
	b.wait()
}

// alive reports whether the connection can take more batches.
func (m *mux) alive() bool { return !isClosed(m.dead) }

// isClosed reports whether a signal channel has been closed.
func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// fail marks the connection dead and closes it, which also wakes the
// goroutine blocked on it.
func (m *mux) fail(err error) {
	m.failOnce.Do(func() {
		if err != ErrClosed {
			m.log.Warn().Err(err).Int64("batches_in_flight", m.pending.Load()).
				Msg("shared upstream connection failed; clients with commands in flight are disconnected")
		}
		m.err = err
		close(m.dead)
		m.c.Close()
	})
}

func (m *mux) writeLoop() {
	var batches []*Batch
	var wbuf writeBuf
	for {
		batches = batches[:0]
		select {
		case b := <-m.queue:
			batches = append(batches, b)
		case <-m.dead:
			return
		}
		// One write in flight at a time: the batches that arrive while Redis
		// answers the previous one join the next write, so its size follows
		// the load. Redis runs commands one at a time anyway, so they wait
		// no longer; the proxy and Redis make fewer, larger reads and writes.
		for m.pending.Load() > 0 {
			select {
			case <-m.drained:
			case <-m.dead:
				return
			}
		}
		// Let other clients' batches join this write.
		runtime.Gosched()
	drain:
		for {
			select {
			case b := <-m.queue:
				batches = append(batches, b)
			default:
				break drain
			}
		}
		for _, b := range batches {
			for _, cmd := range b.Cmds {
				wbuf.add(cmd)
			}
		}
		// Hand the batches to the reader before writing, so it always knows
		// whose reply arrives.
		m.pending.Add(int64(len(batches)))
		for _, b := range batches {
			select {
			case m.inflight <- b:
			case <-m.dead:
				return
			}
		}
		m.lastActivity.Store(time.Now().UnixNano())
		m.c.nc.SetWriteDeadline(time.Now().Add(m.c.opts.WriteTimeout))
		if err := wbuf.writeTo(m.c.nc); err != nil {
			m.fail(err)
			return
		}
	}
}

// errUnexpectedReply means Redis sent bytes nobody asked for on a shared
// connection, so replies can no longer be matched to commands.
var errUnexpectedReply = errors.New("unexpected reply on a shared connection")

func (m *mux) readLoop() {
	c := m.c
	var cur *Batch
	for {
		if c.r == c.w {
			if err := m.read(); err != nil {
				m.fail(err)
				break
			}
			continue
		}
		if c.scan.AtPush(c.buf[c.r:c.w]) {
			n, done, err := c.scan.ScanPush(c.buf[c.r:c.w])
			if err != nil {
				m.fail(err)
				break
			}
			c.r += n
			if done {
				m.dropPush()
			}
			if n == 0 || c.r == c.w {
				if err := m.read(); err != nil {
					m.fail(err)
					break
				}
			}
			continue
		}
		if cur == nil {
			select {
			case cur = <-m.inflight:
			default:
				m.fail(errUnexpectedReply)
			}
			if cur == nil {
				break
			}
		}
		n, done, err := c.scan.Scan(c.buf[c.r:c.w], cur.owed)
		if err != nil {
			m.fail(err)
			break
		}
		if len(m.errs) > 0 {
			m.replyErrors(cur)
		}
		cur.Out = append(cur.Out, c.buf[c.r:c.r+n]...)
		cur.passChunk()
		c.r += n
		cur.owed -= done
		if cur.owed == 0 {
			if m.pending.Add(-1) == 0 {
				select {
				case m.drained <- struct{}{}:
				default:
				}
			}
			cur.done <- struct{}{}
			cur = nil
			continue
		}
		if c.r == c.w || n == 0 && !c.scan.AtPush(c.buf[c.r:c.w]) {
			if err := m.read(); err != nil {
				m.fail(err)
				break
			}
		}
	}
	// The batch being read and every batch written after it got no (full)
	// answer: what Redis did with them is unknown.
	if cur != nil {
		cur.lose()
		cur.done <- struct{}{}
	}
	for {
		select {
		case b := <-m.inflight:
			b.lose()
			b.done <- struct{}{}
		default:
			return
		}
	}
}

// replyErrors reports the error replies the last Scan found in cur's
// replies (before its owed count goes down).
func (m *mux) replyErrors(cur *Batch) {
	done := len(cur.Cmds) - cur.owed
	for _, k := range m.errs {
		var tag uint16
		if i := done + k; len(cur.Tags) == len(cur.Cmds) && i < len(cur.Tags) {
			tag = cur.Tags[i]
		}
		m.c.opts.Hooks.ReplyError(tag)
	}
	m.errs = m.errs[:0]
}

// dropPush discards a push frame that arrived on a shared connection: it
// belongs to no client (Redis sends them there only when a client managed to
// enable pushes on a shared connection), and it is never counted as a reply.
func (m *mux) dropPush() {
	if n := m.pushes.Add(1); n&(n-1) == 0 { // log the 1st, 2nd, 4th, 8th, ...
		m.log.Warn().Int64("dropped", n).Msg("push frame on a shared upstream connection dropped")
	}
}

// read fills the buffer. While replies are owed, Redis must show progress
// within the read timeout; an idle connection waits as long as it takes, so a
// connection that Redis closes is noticed before the next client uses it.
func (m *mux) read() error {
	c := m.c
	timeout := c.opts.ReadTimeout
	if timeout <= 0 {
		return c.fill() // no limit, as for a direct client
	}
	for {
		c.nc.SetReadDeadline(time.Now().Add(timeout))
		err := c.fill()
		if err == nil {
			m.lastActivity.Store(time.Now().UnixNano())
			return nil
		}
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			return err
		}
		if m.pending.Load() == 0 {
			timeout = c.opts.ReadTimeout
			continue // idle
		}
		idle := time.Duration(time.Now().UnixNano() - m.lastActivity.Load())
		if idle >= timeout {
			return errors.New("no reply from Redis within upstream.read_timeout")
		}
		timeout = c.opts.ReadTimeout - idle
		if timeout < time.Millisecond {
			timeout = time.Millisecond
		}
	}
}
