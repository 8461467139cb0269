package upstream

import (
	"errors"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// Batch is a run of commands from one client that travel together on a
// shared connection. The client waits for Wait to return; by then Out holds
// one reply per command, in order: the bytes Redis sent, or an
// "-ERR upstream unavailable" line for each command that got no reply.
type Batch struct {
	Cmds [][]byte // raw RESP commands, forwarded as they are
	Out  []byte   // replies are appended here

	owed int // replies still owed
	done chan struct{}
	mux  *mux
}

// Reset empties the batch for reuse, keeping its buffers.
func (b *Batch) Reset() {
	b.Cmds = b.Cmds[:0]
	b.Out = b.Out[:0]
}

// wait blocks until the batch is complete.
func (b *Batch) wait() {
	select {
	case <-b.done:
		return
	case <-b.mux.exited:
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
// reached.
func AppendUnavailable(dst []byte, err error) []byte {
	msg := "unknown error"
	if err != nil {
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
	queue    chan *Batch // submitted, not yet written
	inflight chan *Batch // written, replies not yet read

	pending      atomic.Int64  // batches written whose replies are not all read
	drained      chan struct{} // signalled when pending drops to 0
	lastActivity atomic.Int64  // unix nanos of the last write or read progress

	failOnce sync.Once
	err      error         // why the connection died; set before dead closes
	dead     chan struct{} // closed when the connection fails
	exited   chan struct{} // closed when reader and writer have both returned
}

// queueLen bounds batches waiting for the writer and batches in flight. Each
// client has at most one batch on a shared connection at a time, so this only
// applies backpressure beyond that many concurrent clients.
const queueLen = 4096

func newMux(c *Conn) *mux {
	m := &mux{
		c:        c,
		queue:    make(chan *Batch, queueLen),
		inflight: make(chan *Batch, queueLen),
		drained:  make(chan struct{}, 1),
		dead:     make(chan struct{}),
		exited:   make(chan struct{}),
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
	}
	b.owed = len(b.Cmds)
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
		m.err = err
		close(m.dead)
		m.c.Close()
	})
}

func (m *mux) writeLoop() {
	var batches []*Batch
	var wbuf []byte
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
		wbuf = wbuf[:0]
		for _, b := range batches {
			for _, cmd := range b.Cmds {
				wbuf = append(wbuf, cmd...)
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
		if _, err := m.c.nc.Write(wbuf); err != nil {
			m.fail(err)
			return
		}
		if cap(wbuf) > 1<<20 {
			wbuf = nil // do not keep a large command's buffer around
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
		cur.Out = append(cur.Out, c.buf[c.r:c.r+n]...)
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
		if n == 0 || c.r == c.w {
			if err := m.read(); err != nil {
				m.fail(err)
				break
			}
		}
	}
	// Fail the batch being read and every batch written after it.
	if cur != nil {
		cur.fail(m.err)
		cur.done <- struct{}{}
	}
	for {
		select {
		case b := <-m.inflight:
			b.fail(m.err)
			b.done <- struct{}{}
		default:
			return
		}
	}
}

// read fills the buffer. While replies are owed, Redis must show progress
// within the read timeout; an idle connection waits as long as it takes, so a
// connection that Redis closes is noticed before the next client uses it.
func (m *mux) read() error {
	c := m.c
	timeout := c.opts.ReadTimeout
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
